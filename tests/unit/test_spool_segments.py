"""Message content in segment files (spool schema 3): written once, removed when done,
older spools still read, leftovers of a crash cleaned up."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from smtplb.clock import FakeClock
from smtplb.model import RecipientState
from smtplb.spool.base import NewMessage, NewRecipient, RecipientResult
from smtplb.spool.schema import SCHEMA_VERSION
from smtplb.spool.segments import SegmentStore, segments_dir
from smtplb.spool.sqlite import SqliteSpool

T0 = 1_700_000_000.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=60))


def msg(queue_id: str, content: bytes, *addresses: str) -> NewMessage:
    return NewMessage(
        queue_id=queue_id,
        sender="app@example.com",
        recipients=tuple(NewRecipient(a, "default") for a in addresses or ("u@x.test",)),
        content=content,
        message_id=f"<{queue_id}@example.com>",
        received_at=T0,
        expires_at=T0 + 86400,
    )


def files(db: Path) -> list[str]:
    return sorted(p.name for p in segments_dir(db).glob("*.seg"))


def spool_at(db: Path, **kw: Any) -> SqliteSpool:
    return SqliteSpool(db, clock=FakeClock(T0), **kw)


async def filled(db: Path, n: int) -> SqliteSpool:
    """An open spool holding ``n`` messages q0, q1, ... of 6,000 bytes ("A", "B", ...),
    two to a segment."""
    spool = spool_at(db, segment_max=10_000)
    await spool.open()
    for i in range(n):
        await spool.store(msg(f"q{i}", bytes([65 + i]) * 6_000))
    return spool


def test_content_is_in_segment_files_not_in_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"
    body = b"Subject: big\r\n\r\n" + b"x" * 50_000

    async def main() -> None:
        spool = spool_at(db)
        await spool.open()
        await spool.store(msg("q1", body))
        claimed = await spool.claim_ready(T0, 10)
        assert [m.content for m in claimed] == [body]
        assert await spool.get_content("q1") == body
        await spool.close()

    run(main())
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT content, seg IS NOT NULL FROM messages").fetchall() == [(None, 1)]
    conn.close()
    assert len(files(db)) == 1
    assert (segments_dir(db) / files(db)[0]).stat().st_size == len(body)


def test_segments_are_removed_when_their_messages_are_done(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"

    async def main() -> None:
        spool = await filled(db, 6)
        assert len(files(db)) == 3
        claimed = await spool.claim_ready(T0, 10)
        assert [m.content[:1] for m in claimed] == [bytes([65 + i]) for i in range(6)]
        rid = {m.queue_id: m.recipients[0].rid for m in claimed}
        # q0 and q1 fill the first segment: it goes once both are delivered, not before.
        await spool.record([RecipientResult(rid["q0"], RecipientState.DELIVERED)])
        await spool.store(msg("nudge", b"n"))  # a commit (results ride along with it)
        assert len(files(db)) == 4
        await spool.record([RecipientResult(rid["q1"], RecipientState.DELIVERED)])
        await spool.store(msg("nudge2", b"n"))
        assert len(files(db)) == 3
        # Deleting a message releases its content too.
        assert await spool.delete("q2") and await spool.delete("q3")
        assert len(files(db)) == 2
        assert spool.segments.reclaimed == 2
        assert await spool.get_content("q4") == b"E" * 6_000
        await spool.close()

    run(main())


def test_a_segment_another_process_emptied_is_removed_within_a_few_commits(
    tmp_path: Path,
) -> None:
    """The writer looks for done segments when its own transaction emptied one (a
    trigger of its connection says so), and every few commits for what another
    connection's writes emptied (the API worker deleting from this shard)."""
    db = tmp_path / "spool.db"

    async def main() -> None:
        spool = await filled(db, 3)
        assert len(files(db)) == 2
        other = sqlite3.connect(db, isolation_level=None)
        with other:  # q0 and q1, the whole first segment, deleted by someone else
            other.execute("DELETE FROM recipients WHERE msg_pk IN (1, 2)")
            other.execute("DELETE FROM messages WHERE pk IN (1, 2)")
        other.close()
        commits = 0
        first = files(db)[0]
        while first in files(db):
            await spool.store(msg(f"n{commits}", b"n"))
            commits += 1
            assert commits <= 64
        assert spool.segments.reclaimed == 1
        assert await spool.get_content("q2") == b"C" * 6_000
        await spool.close()

    run(main())


def test_the_current_segment_is_replaced_when_all_its_messages_are_done(tmp_path: Path) -> None:
    """Store and delete, again and again: the disk does not fill with dead content."""
    db = tmp_path / "spool.db"

    async def main() -> None:
        spool = spool_at(db)
        await spool.open()
        for i in range(50):
            await spool.store(msg(f"q{i}", b"x" * 20_000))
            assert await spool.delete(f"q{i}")
        total = sum(p.stat().st_size for p in segments_dir(db).glob("*.seg"))
        assert total <= 20_000
        await spool.close()

    run(main())


def test_an_expired_message_keeps_its_content_until_purge(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"

    async def main() -> None:
        spool = spool_at(db)
        await spool.open()
        await spool.store(msg("q1", b"quoted by the DSN"))
        expired = await spool.expire_due(T0 + 86400)
        assert [e.queue_id for e in expired] == ["q1"]
        await spool.store(msg("nudge", b"n"))
        assert await spool.get_content("q1") == b"quoted by the DSN"
        assert await spool.purge(float("inf")) == 1
        await spool.store(msg("nudge2", b"n"))
        assert await spool.get_content("q1") is None
        await spool.close()

    run(main())


def test_files_no_committed_message_points_to_are_removed_at_open(tmp_path: Path) -> None:
    """A crash after the content was written but before COMMIT leaves bytes nothing uses."""
    db = tmp_path / "spool.db"

    async def main() -> None:
        spool = spool_at(db)
        await spool.open()
        await spool.store(msg("kept", b"k" * 100))
        await spool.close()
        (segments_dir(db) / "0000000099.seg").write_bytes(b"never committed")
        (segments_dir(db) / "notes.txt").write_text("not ours")
        spool = spool_at(db)
        await spool.open()
        assert files(db) == ["0000000001.seg"]
        assert (segments_dir(db) / "notes.txt").exists()
        stored = await spool.store(msg("new", b"n"))  # a new segment, after the highest id
        assert files(db) == ["0000000001.seg", "0000000100.seg"]
        assert await spool.get_content("kept") == b"k" * 100
        assert await spool.get_content("new") == b"n" and stored.content == b"n"
        await spool.close()

    run(main())


def _make_version_2(db: Path) -> None:
    """Turn a new spool file into one as version 2 wrote it, with one message whose
    content is in SQLite."""
    conn = sqlite3.connect(db, isolation_level=None)
    for trigger in (
        "messages_seg_ins",
        "messages_seg_release",
        "messages_seg_move",
        "messages_seg_del",
    ):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP INDEX messages_seg")
    conn.execute("DROP TABLE segments")
    conn.execute("ALTER TABLE messages DROP COLUMN seg")
    conn.execute("ALTER TABLE messages DROP COLUMN seg_off")
    conn.execute("ALTER TABLE messages DROP COLUMN plain_lines")
    conn.execute(
        "INSERT INTO messages(pk, queue_id, sender, message_id, size, received_at, expires_at,"
        " client_ip, content_class, is_dsn, content)"
        " VALUES (1, 'old', 'a@x.test', '<old@x>', 11, ?, ?, '', 'transactional', 0, ?)",
        (T0, T0 + 86400, b"old content"),
    )
    conn.execute(
        "INSERT INTO recipients(msg_pk, address, domain, pool, priority, state, next_attempt,"
        " updated_at) VALUES (1, 'u@y.test', 'y.test', 'default', 1, 0, ?, ?)",
        (T0, T0),
    )
    conn.execute("PRAGMA user_version = 2")
    conn.close()


def test_a_version_2_spool_is_upgraded_and_its_content_read_from_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"

    async def main() -> None:
        spool = spool_at(db)
        await spool.open()
        await spool.close()
        _make_version_2(db)
        spool = spool_at(db)
        await spool.open()
        assert await spool.get_content("old") == b"old content"
        await spool.store(msg("new", b"new content"))
        claimed = {m.queue_id: m for m in await spool.claim_ready(T0, 10)}
        assert claimed["old"].content == b"old content"
        assert not claimed["old"].plain_lines  # not known: checked and stuffed
        assert claimed["new"].content == b"new content"
        await spool.record(
            [
                RecipientResult(m.recipients[0].rid, RecipientState.DELIVERED)
                for m in claimed.values()
            ]
        )
        await spool.close()

    run(main())
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    rows = conn.execute("SELECT queue_id, content, seg FROM messages ORDER BY pk").fetchall()
    assert rows == [("old", None, None), ("new", None, None)]  # both released
    conn.close()
    assert files(db) == []


def test_appends_are_written_at_sync_in_one_call_and_a_rollback_drops_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE segments (id INTEGER PRIMARY KEY, live INTEGER, bytes INTEGER)")
    store = SegmentStore(tmp_path / "segs")
    store.open(conn)
    calls: list[int] = []
    pwritev = os.pwritev

    def short_writes(fd: int, buffers: list[bytes], offset: int) -> int:
        calls.append(len(buffers))
        return pwritev(fd, [bytes(b"".join(buffers))[:3000]], offset)  # at most 3000 bytes

    monkeypatch.setattr(os, "pwritev", short_writes)
    store.begin()
    first = [store.append(bytes([65 + i]) * 1000) for i in range(5)]
    path = tmp_path / "segs" / f"{first[0][0]:010d}.seg"
    assert path.stat().st_size == 0 and not calls  # nothing written before sync
    store.rollback()  # never written: dropped, and their offsets are free again
    store.begin()
    again = [store.append(bytes([97 + i]) * 1000) for i in range(5)]
    assert again == first
    store.sync(conn)
    assert calls[0] == 5 and len(calls) == 2  # one call for all five, one for the rest
    assert store.read(*again[2], 1000) == b"c" * 1000
    assert path.read_bytes() == b"".join(bytes([97 + i]) * 1000 for i in range(5))
    store.close()
