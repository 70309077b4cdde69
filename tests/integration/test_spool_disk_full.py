"""The spool on a real full filesystem (a size-limited tmpfs; needs root to mount).

What a full disk must not do: leave a recipient INFLIGHT because its result
could not be written, let the WAL fill the disk again, or stop the spool from
opening. The service-level acceptance (451 at intake, recovery without a
restart) is in ``test_disk_full_acceptance.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtplb.model import RecipientState
from smtplb.spool.base import NewMessage, NewRecipient, RecipientResult, SpoolError
from smtplb.spool.sqlite import SqliteSpool

MiB = 1 << 20


class SmallDisk:
    """A tmpfs of ``size`` bytes; ``fill()`` takes every free byte, ``free()`` gives it back."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.size = size
        self.filler = root / "filler"

    def fill(self, leave: int = 0) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while (room := self.available() - leave) > 0:
                os.write(fd, b"\0" * min(room, 65536))
        except OSError:
            pass  # full
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def available(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def small_disk(where: Path, size: int) -> Iterator[SmallDisk]:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield SmallDisk(where, size)
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with small_disk(tmp_path / "disk", 4 * MiB) as d:
        yield d


def size_of(path: Path) -> int:
    """A file's size (a stat call: instant, whatever ASYNC240 fears)."""
    return os.stat(path).st_size


def msg(queue_id: str, size: int = 2000) -> NewMessage:
    now = time.time()
    return NewMessage(
        queue_id=queue_id,
        sender="app@example.com",
        recipients=(NewRecipient("u@x.test", "main"),),
        content=b"Subject: hi\r\n\r\n" + b"x" * size,
        message_id=f"<{queue_id}@example.com>",
        received_at=now,
        expires_at=now + 3600,
    )


def run(coro: Awaitable[None]) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro, 60)

    asyncio.run(main())


async def until(predicate: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


async def state(spool: SqliteSpool, queue_id: str) -> RecipientState:
    view = await spool.get(queue_id)
    assert view is not None
    return view.recipients[0].state


def test_a_result_that_could_not_be_written_is_applied_once_space_returns(disk: SmallDisk) -> None:
    async def main() -> None:
        spool = SqliteSpool(disk.root / "spool.db", retry_interval=0.05)
        await spool.open()
        await spool.store(msg("q1"))
        [claimed] = await spool.claim_ready(time.time(), 10)
        rid = claimed.recipients[0].rid
        disk.fill()
        # The upstream deferred it; the disk is full: the result cannot be committed.
        deferral = RecipientResult(rid, RecipientState.DEFERRED, time.time(), code=451)
        recorded = asyncio.create_task(spool.record([deferral]))
        await until(lambda: asyncio.sleep(0, spool.writer.held > 0), 10, "the result to be held")
        assert not recorded.done()
        assert await state(spool, "q1") is RecipientState.INFLIGHT
        with pytest.raises(SpoolError, match="full"):
            await spool.store(msg("q2"))  # intake answers 451 meanwhile
        disk.free()
        await asyncio.wait_for(recorded, 10)  # applied again, without a restart
        assert await state(spool, "q1") is RecipientState.DEFERRED
        [again] = await spool.claim_ready(time.time() + 1, 10)  # and retried
        assert [r.rid for r in again.recipients] == [rid]
        await spool.store(msg("q3"))
        await spool.close()

    run(main())


def test_the_wal_stays_small_while_the_disk_is_low(tmp_path: Path) -> None:
    """Store and delete 8 MiB of mail with 3 MiB free: the WAL must not take it all."""

    async def churn(spool: SqliteSpool, wal: Path) -> int:
        biggest = 0
        for i in range(400):
            await spool.store(msg(f"q{i}", 20_000))
            await spool.delete(f"q{i}")
            biggest = max(biggest, size_of(wal))
        return biggest

    async def main() -> None:
        with small_disk(tmp_path / "disk", 16 * MiB) as disk:
            db = disk.root / "spool.db"
            wal = Path(f"{db}-wal")
            disk.fill(leave=3 * MiB)
            # Without keeping the WAL small (low_space=0), it grows until the disk is full.
            unbounded = SqliteSpool(db, low_space=0)
            await unbounded.open()
            with pytest.raises(SpoolError, match="full"):
                await churn(unbounded, wal)
            await unbounded.close()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{db}{suffix}")
            disk.free()
            disk.fill(leave=3 * MiB)
            spool = SqliteSpool(db)  # the default: the disk counts as low under 64 MiB free
            await spool.open()
            biggest = await churn(spool, wal)
            print(f"WAL at most {biggest / MiB:.2f} MiB, {spool.writer.checkpoints} truncations")
            assert biggest < 2 * MiB
            assert spool.writer.checkpoints > 0
            await spool.close()

    run(main())


def test_a_full_disk_after_an_episode_gets_its_wal_space_back(disk: SmallDisk) -> None:
    async def main() -> None:
        spool = SqliteSpool(disk.root / "spool.db", low_space=0)  # only the episode counts
        await spool.open()
        wal = Path(f"{spool.path}-wal")
        for i in range(20):
            await spool.store(msg(f"q{i}", 20_000))
        grown = size_of(wal)
        disk.fill()
        with pytest.raises(SpoolError, match="full"):
            await spool.store(msg("big", 200_000))
        disk.free()
        await spool.store(msg("after"))
        print(f"WAL {grown} bytes before the disk filled, {size_of(wal)} after")
        assert size_of(wal) < grown
        await spool.close()

    run(main())


def test_a_spool_opens_on_a_full_disk_and_starts_working_when_space_returns(
    disk: SmallDisk,
) -> None:
    async def main() -> None:
        # A spool from before, with mail in flight (crash recovery must write).
        db = disk.root / "spool.db"
        before = SqliteSpool(db)
        await before.open()
        await before.store(msg("old"), inflight=True)
        await before.close()
        disk.fill()
        for path in (db, disk.root / "fresh.db"):
            spool = SqliteSpool(path, retry_interval=0.05)
            await spool.open()  # no "cannot open spool"
            assert "unavailable" in repr(spool)
            with pytest.raises(SpoolError):
                await spool.store(msg("refused"))
            with pytest.raises(SpoolError):
                await spool.stats()
            await spool.close()
        spool = SqliteSpool(db, retry_interval=0.05)
        await spool.open()
        disk.free()
        await until(
            lambda: asyncio.sleep(0, spool.writer.conn is not None), 10, "the spool to open"
        )
        assert await state(spool, "old") is RecipientState.QUEUED  # recovered
        await spool.store(msg("new"))
        assert (await spool.stats())["queued"] == 2
        await spool.close()

    run(main())
