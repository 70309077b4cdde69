"""Compaction of content segments: the policy (pure), and on a real spool the few live
messages of mostly-dead segments moved so that the segments go, content intact."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

import pytest

from smtplb.clock import FakeClock
from smtplb.model import RecipientState
from smtplb.spool.base import NewMessage, NewRecipient, RecipientResult, SpoolError
from smtplb.spool.queries import get_content
from smtplb.spool.schema import SCHEMA_VERSION
from smtplb.spool.segments import CompactionPolicy, SegmentUse, plan_compaction, segments_dir
from smtplb.spool.sqlite import SqliteSpool

T0 = 1_700_000_000.0
POLICY = CompactionPolicy(max_live_fraction=0.25, min_age=60.0, max_copy=1000, step=400)


def use(seg: int, size: int, live: int, age: float = 100.0) -> SegmentUse:
    return SegmentUse(seg, size, live, age)


# -- the policy ---------------------------------------------------------------------------


def test_mostly_dead_old_segments_are_picked_emptiest_first() -> None:
    uses = [use(1, 1000, 250), use(2, 1000, 100), use(3, 1000, 10)]
    assert plan_compaction(uses, POLICY) == [3, 2, 1]


def test_a_segment_with_too_many_live_bytes_is_left() -> None:
    assert plan_compaction([use(1, 1000, 251), use(2, 1000, 1000)], POLICY) == []


def test_a_young_segment_is_left_to_empty_itself() -> None:
    assert plan_compaction([use(1, 1000, 10, age=59.0)], POLICY) == []
    assert plan_compaction([use(1, 1000, 10, age=60.0)], POLICY) == [1]


def test_one_pass_copies_at_most_max_copy_bytes_but_always_one_segment() -> None:
    uses = [use(1, 4000, 600), use(2, 4000, 500), use(3, 4000, 400)]
    assert plan_compaction(uses, POLICY) == [3, 2]  # 900 of 1000; 600 more would overrun
    assert plan_compaction([use(1, 40_000, 5000)], POLICY) == [1]  # over several passes


def test_an_empty_file_is_not_picked() -> None:
    assert plan_compaction([use(1, 0, 0)], POLICY) == []


# -- on a spool -----------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=60))


def body(i: int, size: int = 10_000) -> bytes:
    head = f"Subject: m{i}\r\n\r\n".encode()
    return head + bytes([65 + i % 26]) * (size - len(head))


def msg(i: int, size: int = 10_000) -> NewMessage:
    return NewMessage(
        queue_id=f"q{i}",
        sender="app@example.com",
        recipients=(NewRecipient("u@x.test", "default"),),
        content=body(i, size),
        message_id=f"<q{i}@example.com>",
        received_at=T0,
        expires_at=T0 + 86400 * 5,
    )


def disk(db: Path) -> int:
    return sum(p.stat().st_size for p in segments_dir(db).glob("*.seg"))


def seg_files(db: Path) -> set[str]:
    return {p.name for p in segments_dir(db).glob("*.seg")}


async def opened(db: Path, clock: FakeClock, **policy: Any) -> SqliteSpool:
    """A spool of 50 KB segments (5 messages of 10 KB), compacting as ``policy`` says
    (not on its own unless ``interval`` is given)."""
    policy.setdefault("interval", 1e9)
    spool = SqliteSpool(db, clock=clock, segment_max=50_000, compaction=CompactionPolicy(**policy))
    await spool.open()
    return spool


async def fill(spool: SqliteSpool, n: int, keep_every: int) -> list[int]:
    """Store ``n`` messages, deliver all but every ``keep_every``-th (deferred a day)."""
    for i in range(n):
        await spool.store(msg(i))
    claimed = await spool.claim_ready(T0, n)
    kept = [i for i in range(n) if i % keep_every == 0]
    await spool.record(
        [
            RecipientResult(m.recipients[0].rid, RecipientState.DEFERRED, next_attempt=T0 + 86400)
            if int(m.queue_id[1:]) in kept
            else RecipientResult(m.recipients[0].rid, RecipientState.DELIVERED)
            for m in claimed
        ]
    )
    await spool.store(msg(999, 100))  # commits the lazy results; fills the current segment
    return kept


def test_deferred_messages_are_moved_and_their_old_segments_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "spool.db"
    clock = FakeClock(T0)

    async def main() -> None:
        spool = await opened(db, clock, min_age=60.0)
        kept = await fill(spool, 40, keep_every=5)  # 5 messages a segment: 1 of each kept
        before = seg_files(db)
        assert len(before) >= 8
        live = sum(len(body(i)) for i in kept)
        assert disk(db) > 4 * live
        assert await spool.compact() == []  # just sealed: left to empty themselves
        clock.advance(61)
        with caplog.at_level(logging.INFO, logger="smtplb.spool"):
            emptied = await spool.compact()
        assert len(emptied) == 8
        assert sum(c.copied for c in emptied) == live
        assert all(c.messages == 1 for c in emptied)
        await spool.store(msg(1000, 100))  # the next commit drops the emptied segments' rows
        after = seg_files(db)
        assert not after & {f"{c.seg:010d}.seg" for c in emptied}
        assert disk(db) <= live + 3 * 4096 + 200  # page padding of the two small stores
        assert len([r for r in caplog.records if "compacted segment" in r.message]) == 8
        for i in kept:
            assert await spool.get_content(f"q{i}") == body(i)
        # Due again: claimed from where they are now, byte for byte.
        again = await spool.claim_ready(T0 + 86400, 100)
        got = {m.queue_id: m.content for m in again}
        assert {f"q{i}": body(i) for i in kept}.items() <= got.items()
        await spool.record(
            [RecipientResult(m.recipients[0].rid, RecipientState.DELIVERED) for m in again]
        )
        await spool.store(msg(1001, 100))
        await spool.close()

    run(main())
    conn = sqlite3.connect(db)
    counted = dict(conn.execute("SELECT id, bytes FROM segments WHERE live > 0").fetchall())
    actual = dict(
        conn.execute(
            "SELECT seg, sum(size) FROM messages WHERE seg IS NOT NULL GROUP BY seg"
        ).fetchall()
    )
    conn.close()
    assert counted == actual


def test_a_pass_is_bounded_and_the_rest_waits_for_the_next(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"
    clock = FakeClock(T0)

    async def main() -> None:
        spool = await opened(db, clock, min_age=0.0, max_copy=25_000, step=10_000)
        kept = await fill(spool, 40, keep_every=5)
        commits = spool.commits
        first = await spool.compact()
        # Two segments fit in 25 KB (10 KB live each), one transaction each (10 KB steps).
        assert [c.copied for c in first] == [10_000, 10_000]
        assert spool.commits - commits == 2
        total = len(first)
        for _ in range(3):
            total += len(await spool.compact())
        assert total == 8  # two segments a pass
        for i in kept:
            assert await spool.get_content(f"q{i}") == body(i)
        await spool.close()

    run(main())


def test_messages_in_flight_are_moved_and_their_results_still_count(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"
    clock = FakeClock(T0)

    async def main() -> None:
        spool = await opened(db, clock, min_age=0.0)
        for i in range(10):
            await spool.store(msg(i))
        claimed = await spool.claim_ready(T0, 10)  # in flight: content already in memory
        by_id = {m.queue_id: m for m in claimed}
        await spool.record(
            [RecipientResult(m.recipients[0].rid, RecipientState.DELIVERED) for m in claimed[1:]]
        )
        await spool.store(msg(100, 100))
        emptied = await spool.compact()
        assert [c.messages for c in emptied] == [1]
        assert by_id["q0"].content == body(0)
        assert await spool.get_content("q0") == body(0)
        await spool.record(
            [RecipientResult(claimed[0].recipients[0].rid, RecipientState.DELIVERED)]
        )
        await spool.store(msg(101, 100))
        view = await spool.get("q0")
        assert view is not None and view.recipients[0].state is RecipientState.DELIVERED
        assert await spool.get_content("q0") is None
        await spool.close()

    run(main())


def test_compaction_runs_on_its_own_every_interval(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"
    clock = FakeClock(T0)

    async def main() -> None:
        spool = await opened(db, clock, min_age=0.0, interval=30.0)
        await fill(spool, 40, keep_every=5)
        before = len(seg_files(db))
        clock.advance(30)
        await _until(lambda: clock.sleepers == 1 and not spool.writer.pending)
        await spool.store(msg(1000, 100))
        assert len(seg_files(db)) <= before - 6
        await spool.close()

    run(main())


async def _until(cond: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    await asyncio.sleep(0)
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_failure_between_copy_and_commit_leaves_the_rows_on_the_old_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copies are written, their sync fails (so COMMIT never runs): the rows still
    point at the old segments, which are intact; the next pass does the work."""
    db = tmp_path / "spool.db"
    clock = FakeClock(T0)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "injected: fdatasync failed")

    async def main() -> None:
        spool = await opened(db, clock, min_age=0.0)
        kept = await fill(spool, 40, keep_every=5)
        before = seg_files(db)
        with monkeypatch.context() as patched:
            patched.setattr(os, "fdatasync", failing)
            with pytest.raises(SpoolError):
                await spool.compact()
        assert seg_files(db) >= before  # nothing removed (a new segment may have begun)
        for i in kept:
            assert await spool.get_content(f"q{i}") == body(i)
        await spool.close()
        spool = await opened(db, clock, min_age=0.0)  # as after a crash: reopened
        assert seg_files(db) == before
        emptied = await spool.compact()
        # The 8 old segments, and the one the failed pass appended its copies to (dead bytes).
        assert len(emptied) == 9
        await spool.store(msg(1000, 100))
        live = sum(len(body(i)) for i in kept) + 100 + 100
        assert disk(db) <= live + 3 * 4096
        for i in kept:
            assert await spool.get_content(f"q{i}") == body(i)
        await spool.close()

    run(main())


_V3_TRIGGERS = (
    "CREATE TRIGGER messages_seg_ins AFTER INSERT ON messages WHEN new.seg IS NOT NULL BEGIN"
    " INSERT INTO segments(id, live) VALUES (new.seg, 1)"
    " ON CONFLICT(id) DO UPDATE SET live = live + 1; END",
    "CREATE TRIGGER messages_seg_release AFTER UPDATE OF seg ON messages"
    " WHEN old.seg IS NOT NULL AND new.seg IS NULL BEGIN"
    " UPDATE segments SET live = live - 1 WHERE id = old.seg; END",
    "CREATE TRIGGER messages_seg_del AFTER DELETE ON messages WHEN old.seg IS NOT NULL BEGIN"
    " UPDATE segments SET live = live - 1 WHERE id = old.seg; END",
)


def _make_version_3(db: Path) -> None:
    """Turn a spool file into one as version 3 wrote it (no live bytes, no index, no
    move trigger)."""
    conn = sqlite3.connect(db, isolation_level=None)
    for trigger in ("messages_seg_ins", "messages_seg_release", "messages_seg_move"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP TRIGGER messages_seg_del")
    conn.execute("DROP INDEX messages_seg")
    conn.execute("ALTER TABLE segments DROP COLUMN bytes")
    for sql in _V3_TRIGGERS:
        conn.execute(sql)
    conn.execute("PRAGMA user_version = 3")
    conn.close()


def test_a_version_3_spool_is_upgraded_and_compacted(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"
    clock = FakeClock(T0)

    async def main() -> None:
        spool = await opened(db, clock, min_age=0.0)
        kept = await fill(spool, 40, keep_every=5)
        await spool.close()
        _make_version_3(db)
        spool = await opened(db, clock, min_age=0.0)
        assert len(await spool.compact()) == 8
        for i in kept:
            assert await spool.get_content(f"q{i}") == body(i)
        await spool.close()

    run(main())
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    counted = dict(conn.execute("SELECT id, bytes FROM segments WHERE live > 0").fetchall())
    actual = dict(
        conn.execute("SELECT seg, sum(size) FROM messages WHERE seg IS NOT NULL GROUP BY seg")
    )
    conn.close()
    assert counted == actual


class _Rows:
    """A reader's view that changes between two looks (compaction committed between)."""

    def __init__(self, *rows: tuple[Any, ...] | None) -> None:
        self.rows = list(rows)

    def execute(self, sql: str, params: tuple[Any, ...]) -> _Rows:
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows.pop(0)


def test_a_read_that_finds_its_segment_gone_looks_the_row_up_again(tmp_path: Path) -> None:
    (tmp_path / "0000000007.seg").write_bytes(b"....moved here")
    moved = _Rows((3, 0, 5, None), (7, 4, 10, None))  # segment 3 was compacted away
    assert get_content(cast(sqlite3.Connection, moved), "q", tmp_path) == b"moved here"
    gone = _Rows((3, 0, 5, None), (3, 0, 5, None))  # still says segment 3: really missing
    with pytest.raises(SpoolError, match="segment 3"):
        get_content(cast(sqlite3.Connection, gone), "q", tmp_path)
    done = _Rows((3, 0, 5, None), None)  # deleted meanwhile
    assert get_content(cast(sqlite3.Connection, done), "q", tmp_path) is None
