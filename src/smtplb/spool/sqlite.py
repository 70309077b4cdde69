"""The embedded spool: SQLite in WAL mode, written by one group-committing thread.

Three parts: :mod:`~smtplb.spool.schema` (tables, pragmas, opening),
:mod:`~smtplb.spool.writer` (the writer thread: group commit, lazy results,
and what happens when the disk is full) and :mod:`~smtplb.spool.queries` (the
SQL of each operation). This module puts them together behind
:class:`~smtplb.spool.base.Spool`.

Reads run on a second, query-only connection in a reader thread, so they see
the last committed state and never wait behind the writer's fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from smtplb.clock import Clock, SystemClock
from smtplb.model import RecipientState
from smtplb.spool import queries
from smtplb.spool.base import (
    ClaimedMessage,
    ExpiredRecipient,
    MessageView,
    NewMessage,
    RecipientResult,
    SpoolError,
    TraceStep,
)
from smtplb.spool.schema import SCHEMA_VERSION, connect_reader, connect_writer, create_file
from smtplb.spool.segments import (
    SEGMENT_MAX,
    Compacted,
    CompactionPolicy,
    SegmentStore,
    SegmentUse,
    file_sizes,
    plan_compaction,
    segments_dir,
)
from smtplb.spool.writer import Bulk, GroupWriter

__all__ = ["SCHEMA_VERSION", "SqliteSpool"]

T = TypeVar("T")

log = logging.getLogger("smtplb.spool")

# Seconds a commit waits for its siblings' writes (spool.writer, Gathering). With 20
# SMTP sessions (bench case a, 2 workers) commits per message fell from 0.38 to 0.19
# and CPU per message by a fifth (839 -> 670 us); 4 ms saved a little more CPU, no rate.
COMMIT_DELAY = 0.002


class SqliteSpool:
    """The :class:`~smtplb.spool.base.Spool` on one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        batch_max: int = 256,
        clock: Clock | None = None,
        recover: bool = True,
        lazy_delay: float = 0.2,
        retry_interval: float = 1.0,
        low_space: int = 64 << 20,
        low_space_wal: int = 1 << 20,
        segment_max: int = SEGMENT_MAX,
        compaction: CompactionPolicy | None = None,
        commit_delay: float = COMMIT_DELAY,
        siblings: Callable[[], int] | None = None,
    ) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max}")
        self.path = Path(path)
        self.clock: Clock = clock or SystemClock()
        # False when another process owns this spool (a worker's shard seen from the
        # API worker): then in-flight recipients are that process's, not a crash's.
        self.recover = recover
        if recover:
            create_file(self.path)
        # Message content, written once (not to the WAL and again at checkpoint).
        self.segments = SegmentStore(
            segments_dir(self.path), segment_max=segment_max, owner=recover
        )
        self.writer = GroupWriter(
            self.path,
            self._connect_writer,
            queries.insert_traces,
            clock=self.clock,
            batch_max=batch_max,
            lazy_delay=lazy_delay,
            retry_interval=retry_interval,
            low_space=low_space,
            low_space_wal=low_space_wal,
            files=self.segments,
            commit_delay=commit_delay,
            siblings=siblings,
        )
        # One object (a bound method is a new one at each access): the writer runs the
        # stores next to each other in a batch as one call of it.
        self._store_bulk: Bulk = self._store_batch
        self.compaction = compaction or CompactionPolicy()
        self.retry_slice = 5000  # recipients per transaction of retry --all
        self._sealed_at: dict[int, float] = {}  # segment -> when first seen not current
        self._compacting: dict[int, tuple[int, int]] = {}  # segment -> (messages, bytes) moved
        self._compactor: asyncio.Task[None] | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._rconn: sqlite3.Connection | None = None
        self._open = False

    @property
    def commits(self) -> int:
        return self.writer.commits

    def __repr__(self) -> str:
        status = "open" if self._open else "closed"
        if self._open and self.writer.conn is None:
            status = "open, unavailable"
        return (
            f"<SqliteSpool {str(self.path)!r} {status}, {self.writer.pending} pending ops,"
            f" {self.commits} commits>"
        )

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self.writer.open)
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(
                f"cannot open spool {self.path}: {exc} (check spool path and permissions)"
            ) from exc
        self.writer.start()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix=f"spool-reader:{self.path.name}")
        self._open = True
        if self.segments.owner:
            self._compactor = asyncio.create_task(self._compact_loop())

    def _connect_writer(self) -> sqlite3.Connection:
        conn = connect_writer(self.path, now=self.clock.wall(), recover=self.recover)
        try:
            for stmt in queries.WRITER_SETUP:
                conn.execute(stmt)
            self.segments.open(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        compactor, self._compactor = self._compactor, None
        if compactor is not None:
            compactor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await compactor
        await self.writer.stop()
        reader, self._reader = self._reader, None
        if reader is not None:
            await asyncio.get_running_loop().run_in_executor(reader, self._close_reader)
            reader.shutdown(wait=True)

    def _close_reader(self) -> None:
        if self._rconn is not None:
            self._rconn.close()
            self._rconn = None

    # -- compaction (see smtplb.spool.segments) -----------------------------------------

    async def _compact_loop(self) -> None:
        while True:
            await self.clock.sleep(self.compaction.interval)
            try:
                await self.compact()
            except Exception as exc:  # tried again next time; the spool keeps working
                log.warning("spool %s: compacting content segments: %s", self.path, exc)

    async def compact(self) -> list[Compacted]:
        """One compaction pass: the segments it emptied (each logged), with what was
        moved out of them (over this pass and the earlier ones)."""
        segments = self.segments
        live, sizes = await self._read(
            lambda c: _segment_sizes(queries.live_segments(c), segments.directory)
        )
        now = self.clock.monotonic()
        uses: list[SegmentUse] = []
        sealed: dict[int, float] = {}
        for seg, live_bytes in live:
            if seg != segments.current and seg in sizes:
                sealed[seg] = self._sealed_at.get(seg, now)
                uses.append(SegmentUse(seg, sizes[seg], live_bytes, now - sealed[seg]))
        self._sealed_at = sealed
        self._compacting = {s: n for s, n in self._compacting.items() if s in sealed}
        policy = self.compaction
        plan = plan_compaction(uses, policy)
        budget = policy.max_copy
        emptied: list[Compacted] = []
        while plan and budget > 0:
            step = partial(segments.compact, segs=plan, budget=min(policy.step, budget))
            done = await self._write(step)
            if not done:
                break
            for c in done:
                messages, copied = self._compacting.pop(c.seg, (0, 0))
                messages, copied = messages + c.messages, copied + c.copied
                budget -= c.copied
                if not c.done:
                    self._compacting[c.seg] = (messages, copied)
                    continue
                plan = [seg for seg in plan if seg != c.seg]
                emptied.append(Compacted(c.seg, messages, copied, c.size, True))
                log.info(
                    "spool %s: compacted segment %d: %d messages, %d bytes copied, %d freed",
                    self.path, c.seg, messages, copied, c.size - copied,
                )  # fmt: skip
        return emptied

    # -- plumbing ----------------------------------------------------------------

    async def _write(
        self, fn: Callable[[sqlite3.Connection], T], *, lazy: bool = False, keep: bool = False
    ) -> T:
        """Run ``fn`` in the writer's next transaction; return once it is durable."""
        if not self._open:
            raise SpoolError(f"spool {self.path} is not open")
        return await self.writer.write(fn, lazy=lazy, keep=keep)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self._open or self._reader is None:
            raise SpoolError(f"spool {self.path} is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, self._read_in_thread, fn)
        except sqlite3.Error as exc:
            raise SpoolError(f"spool read failed: {exc}") from exc

    def _read_in_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self.writer.conn is None:  # never opened (full disk): no schema to read yet
            raise SpoolError(f"spool {self.path} unavailable: {self.writer.unavailable}")
        if self._rconn is None:
            self._rconn = connect_reader(self.path)
        return fn(self._rconn)

    # -- the engine ------------------------------------------------------------------

    async def store(self, message: NewMessage, *, inflight: bool = False) -> ClaimedMessage:
        if not self._open:
            raise SpoolError(f"spool {self.path} is not open")
        stored: ClaimedMessage = await self.writer.write_bulk(self._store_bulk, (message, inflight))
        return stored

    def _store_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[NewMessage, bool]]
    ) -> list[ClaimedMessage]:
        """The messages stored in one batch, with one statement per table."""
        return queries.store(conn, batch, self.clock.wall(), self.segments)

    async def claim_ready(self, now: float, limit: int) -> list[ClaimedMessage]:
        if limit <= 0:
            return []
        read = self.segments.read
        return await self._write(lambda c: queries.claim(c, now, limit, self.clock.wall(), read))

    async def record(self, results: list[RecipientResult]) -> None:
        # Lazy: rides along with the next commit. Kept: a full disk delays it, never drops it.
        if results:
            await self._write(
                lambda c: queries.record(c, results, self.clock.wall()), lazy=True, keep=True
            )

    async def expire_due(self, now: float, limit: int = 1000) -> list[ExpiredRecipient]:
        if limit <= 0:
            return []
        return await self._write(lambda c: queries.expire(c, now, limit, self.clock.wall()))

    async def next_due(self) -> float | None:
        return await self._read(queries.next_due)

    def note_trace(self, queue_id: str, ts: float, step: str, details: tuple[Any, ...]) -> None:
        if self._open:
            self.writer.ride((queue_id, ts, step, details))

    # -- the admin view ----------------------------------------------------------------

    async def retry(self, queue_id: str | None = None) -> int:
        now = self.clock.wall()
        if queue_id is not None:
            return await self._write(lambda c: queries.retry_one(c, queue_id, now))
        # Everything: in slices, so that a deep queue neither holds the writer (and
        # with it intake) for seconds nor keeps a huge rollback journal in memory.
        total, after, limit = 0, 0, self.retry_slice
        while True:
            step = partial(queries.retry_slice, now=now, after=after, limit=limit)
            seen, made_due, after = await self._write(step)
            total += made_due
            if seen < limit:
                return total

    async def _in_slices(self, fn: Callable[[sqlite3.Connection, int], int], limit: int) -> int:
        """``fn(conn, limit)`` in one transaction after another until a slice does fewer
        than ``limit`` rows; the total. No single transaction holds up intake for long."""
        total = 0
        while True:
            n = await self._write(lambda c: fn(c, limit))
            total += n
            if n < limit:
                return total

    async def delete(self, queue_id: str) -> bool:
        return await self._write(lambda c: queries.delete(c, queue_id))

    async def purge(self, older_than: float) -> int:
        """Delete messages whose recipients all became final before ``older_than``.

        Runs in slices so that no single transaction holds up intake for long.
        Returns how many messages were deleted.
        """
        return await self._in_slices(lambda c, limit: queries.purge(c, older_than, limit), 2000)

    async def stats(self) -> dict[str, int]:
        return await self._read(queries.stats)

    async def oldest_age(self, now: float) -> dict[str, float]:
        return await self._read(lambda c: queries.oldest_age(c, now))

    async def list_messages(
        self, *, state: RecipientState | None = None, limit: int = 100, offset: int = 0
    ) -> list[MessageView]:
        return await self._read(lambda c: queries.list_views(c, state, limit, offset))

    async def get(self, queue_id: str) -> MessageView | None:
        return await self._read(lambda c: queries.get_view(c, queue_id))

    async def get_content(self, queue_id: str) -> bytes | None:
        directory = self.segments.directory
        return await self._read(lambda c: queries.get_content(c, queue_id, directory))

    async def trace(self, queue_id: str) -> list[TraceStep]:
        return await self._read(lambda c: queries.read_trace(c, queue_id))


def _segment_sizes(
    live: list[tuple[int, int]], directory: Path
) -> tuple[list[tuple[int, int]], dict[int, int]]:
    return live, file_sizes(directory, [seg for seg, _ in live])
