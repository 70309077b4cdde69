"""The spool's one writer thread: group commit, and what it does when the disk is full.

Theory of operation
-------------------
Every write is an operation put on a queue. The writer thread takes the first
one, drains whatever else is queued (up to ``batch_max``), runs them all in one
transaction and commits once: one fsync (``synchronous=FULL``) for the whole
batch. An operation that raises rolls the transaction back and fails only its
own caller; the others run again in a new one (errors are rare, and a savepoint
per operation would cost two more statements each, with two GIL hand-overs per
statement). A failed COMMIT fails every caller of the batch with
:class:`SpoolError` and the next batch starts clean. Futures are resolved on
their event loop with ``call_soon_threadsafe``.

*Gathering*: when others may write soon (``siblings()``, e.g. the other SMTP
sessions open in this process, is at least 1), the writer waits ``commit_delay``
after the first operation of a batch before closing it, as PostgreSQL's
``commit_delay``/``commit_siblings`` do. Busy sessions then share fewer, larger
commits: a commit's fsyncs, its WAL frames (one per page touched, two writes each)
and its GIL hand-overs cost far more CPU than the wait costs anyone (a message is
answered a couple of milliseconds later). Alone (no siblings), a write is committed
at once.

Operations of one *bulk* function (:meth:`GroupWriter.write_bulk`: storing messages)
that are next to each other in a batch run as one call, which stores them all with
one statement per table rather than one per row (each statement is a hand-over of
the GIL to SQLite and back, a context switch when the event loop is busy). If that
call raises, they run again one by one, so that only the culprit fails.

Files written beside the database (the content segments, a :class:`Companion`)
follow each transaction: operations append to them, they are made durable just
before COMMIT (so no committed row points to bytes that could be lost), what a
rolled-back transaction appended is dropped, and after each commit they give back
what is no longer used.

*Lazy* operations (delivery results) do not start a commit of their own: the
upstream already has the message, so nobody waits for them to be durable before
answering anyone. They ride along with the next batch that must be committed
anyway, or are committed on their own after ``lazy_delay`` seconds. fsync is
what a busy spool pays most for, so this halves the commits per message; a
crash in that window delivers the message again (at-least-once), as it would a
crash during delivery. *Riders* (trace steps) never cause a commit: they are
written by whichever batch comes next.

A full disk
-----------
* An operation marked ``keep`` (delivery results, riders) that fails for want
  of space is not failed: it is held, and runs again with the next batch or
  after ``retry_interval``, until space returns. Its caller keeps waiting; a
  recipient never stays INFLIGHT because its result could not be written.
* Everything else fails with :class:`SpoolError` (intake answers ``451``).
* If the connection could not be opened at all (a start on a full disk), every
  batch first tries to open it again; until then operations fail (or are held).
* The WAL is kept small while the disk is low (free space under ``low_space``):
  after each commit, a WAL over ``low_space_wal`` bytes is checkpointed and
  truncated, and so is it after every write that failed for want of space, so
  the WAL gives back what it holds instead of filling the disk again (a
  truncation the full disk refused is tried again after the next commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from smtplb.clock import Clock
from smtplb.spool.base import SpoolError

T = TypeVar("T")

log = logging.getLogger("smtplb.spool")

_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_MAX_RIDERS = 100_000  # held while the disk is full: beyond this the oldest go


def is_space_error(exc: BaseException | None) -> bool:
    """The disk (or its quota) is full, or writing to it failed: worth retrying later."""
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (_SQLITE_FULL, _SQLITE_IOERR)
    if isinstance(exc, OSError):
        return exc.errno in _SPACE_ERRNOS
    return False


def as_spool_error(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, sqlite3.Error | OSError):
        full = " (disk full)" if isinstance(exc, OSError) and is_space_error(exc) else ""
        err = SpoolError(f"spool {what} failed{full}: {exc}")
        err.__cause__ = exc
        return err
    return exc


class Companion(Protocol):
    """Files written with each transaction (the content segments): appended to by the
    operations, made durable just before COMMIT, cleaned up after it."""

    low: bool  # the disk is low: give space back sooner

    def begin(self) -> None: ...

    def sync(self, conn: sqlite3.Connection) -> None: ...

    def rollback(self) -> None: ...

    def reclaim(self, conn: sqlite3.Connection) -> int: ...

    def close(self) -> None: ...


class _NoFiles:
    low = False

    def begin(self) -> None:
        pass

    def sync(self, conn: sqlite3.Connection) -> None:
        pass

    def rollback(self) -> None:
        pass

    def reclaim(self, conn: sqlite3.Connection) -> int:
        return 0

    def close(self) -> None:
        pass


Bulk = Callable[[sqlite3.Connection, list[Any]], list[Any]]


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop | None  # None: nobody waits (riders)
    future: asyncio.Future[Any] | None
    keep: bool = False  # held and run again when it fails for want of space
    # Consecutive operations of one bulk function run as one call: bulk(conn, [arg, ...])
    # gives their values, in order (fn does the same for this one alone).
    bulk: Bulk | None = None
    arg: Any = None


class _Nudge:
    """On the writer's queue: commit the lazy operations now."""


_NUDGE = _Nudge()
Outcome = tuple[BaseException | None, Any]
# The culprit _transact names when a bulk call of several operations raised: which one
# is to blame is found by running them again one by one.
_SEVERAL = _Op(lambda conn: None, None, None)


def _resolve(outcomes: list[tuple[asyncio.Future[Any], BaseException | None, Any]]) -> None:
    for fut, exc, value in outcomes:
        if fut.done():  # the caller was cancelled; the write happened anyway
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


def _post(batch: list[_Op], outcomes: dict[int, Outcome]) -> None:
    """Hand each outcome to its caller's event loop: one wake-up per loop per batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
    for op in batch:
        if op.loop is not None and id(op) in outcomes:
            by_loop.setdefault(op.loop, []).append((op.future, *outcomes[id(op)]))
    for loop, resolved in by_loop.items():
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, resolved)


def _no_siblings() -> int:
    return 0


def _alone(bulk: Bulk, arg: Any, conn: sqlite3.Connection) -> Any:
    return bulk(conn, [arg])[0]


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):  # the next BEGIN starts clean
            conn.execute("ROLLBACK")


class GroupWriter:
    """One thread, one connection, one commit per batch of operations."""

    def __init__(
        self,
        path: Path,
        connect: Callable[[], sqlite3.Connection],
        write_riders: Callable[[sqlite3.Connection, list[Any]], None],
        *,
        clock: Clock,
        batch_max: int,
        lazy_delay: float,
        retry_interval: float = 1.0,
        low_space: int = 64 << 20,
        low_space_wal: int = 1 << 20,
        files: Companion | None = None,
        commit_delay: float = 0.0,
        siblings: Callable[[], int] | None = None,
    ) -> None:
        self.path = path
        self.commit_delay = commit_delay
        self.siblings = siblings or _no_siblings
        self.files: Companion = files or _NoFiles()
        self.wal_path = Path(f"{path}-wal")
        self._connect = connect
        self._write_riders = write_riders
        self.clock = clock
        self.batch_max = batch_max
        self.lazy_delay = lazy_delay
        self.retry_interval = retry_interval
        self.low_space = low_space
        self.low_space_wal = low_space_wal
        self.commits = 0  # committed batches: with group commit, far fewer than writes
        self.checkpoints = 0  # WAL truncations done because the disk was low
        self.conn: sqlite3.Connection | None = None
        self.unavailable: BaseException | None = None  # why conn is None, once tried
        self.low = False  # the disk is low: keep the WAL small
        self._wal_owed = False  # a truncation failed for want of space: try after a commit
        self._next_space_check = float("-inf")
        self._ops: queue.SimpleQueue[_Op | _Nudge | None] = queue.SimpleQueue()
        self._lazy: deque[_Op] = deque()
        self._held: list[_Op] = []  # failed for want of space; run again
        self._riders: deque[Any] = deque(maxlen=_MAX_RIDERS)
        self._nudge_armed = False
        self._in_batch = 0
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> int:
        """Operations waiting for space to be written again."""
        return len(self._held)

    @property
    def pending(self) -> int:
        return self._ops.qsize() + self._in_batch + len(self._lazy) + len(self._held)

    def open(self) -> None:
        """Connect (in the caller's thread). A full disk is not an error: the
        writer starts without a connection and keeps trying (see the module doc)."""
        try:
            self.conn = self._connect()
        except (sqlite3.Error, OSError) as exc:
            if not is_space_error(exc):
                raise
            self.unavailable = exc
            self.low = True
            log.error(
                "spool %s: cannot open (%s); refusing writes until there is space", self.path, exc
            )

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"spool-writer:{self.path.name}", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """Commit what is pending (lazy operations and riders included) and stop."""
        thread, self._thread = self._thread, None
        self._ops.put(None)
        if thread is not None:
            await asyncio.to_thread(thread.join)

    # -- the callers' side (event loop) ----------------------------------------------

    async def write(
        self, fn: Callable[[sqlite3.Connection], T], *, lazy: bool = False, keep: bool = False
    ) -> T:
        """Run ``fn`` in the next transaction; return once it is durable."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        op = _Op(fn, loop, fut, keep)
        if not lazy:
            self._ops.put(op)
        else:
            self._lazy.append(op)
            if not self._nudge_armed:
                self._nudge_armed = True
                loop.call_later(self.lazy_delay, self._nudge)
        return await fut

    async def write_bulk(self, bulk: Bulk, arg: Any) -> Any:
        """Like :meth:`write` of ``lambda conn: bulk(conn, [arg])[0]``, but run together
        with the other operations of the same ``bulk`` (the same object) next to it in
        the batch: one call for all, one statement for all their rows."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._ops.put(_Op(partial(_alone, bulk, arg), loop, fut, False, bulk, arg))
        return await fut

    def ride(self, row: Any) -> None:
        """Write ``row`` (with ``write_riders``) in the next batch, whenever that is."""
        self._riders.append(row)

    def _nudge(self) -> None:
        self._nudge_armed = False
        if self._lazy:
            self._ops.put(_NUDGE)

    # -- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        closing = False
        while True:
            batch: list[_Op] = []
            if not closing:
                closing = self._take(batch)
            held, self._held = self._held[: self.batch_max], self._held[self.batch_max :]
            batch[:0] = held  # in the order they first came
            while self._lazy and len(batch) < self.batch_max:
                batch.append(self._lazy.popleft())
            if self._lazy and not closing:  # over one batch's worth: again, no waiting
                self._ops.put(_NUDGE)
            if self._riders and (batch or closing):
                rows = [self._riders.popleft() for _ in range(len(self._riders))]
                batch.append(self._rider_op(rows))
            if batch:
                self._in_batch = len(batch)
                try:
                    self._run_batch(batch, final=closing)
                except Exception as exc:  # a bug here must not leave callers waiting forever
                    log.exception("spool writer: batch of %d failed", len(batch))
                    err = SpoolError(f"spool write failed: {exc}")
                    _post(batch, {id(op): (err, None) for op in batch})
                self._in_batch = 0
            elif self.conn is None and not closing:
                self._connection()  # idle on a full disk: open as soon as there is room
            if closing and not (self._lazy or self._held or self._riders):
                break
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.files.close()

    def _rider_op(self, rows: list[Any]) -> _Op:
        def write(conn: sqlite3.Connection) -> None:
            self._write_riders(conn, rows)

        return _Op(write, None, None, keep=True)

    def _take(self, batch: list[_Op]) -> bool:
        """Wait for work (or, with held work, for the retry interval); fill ``batch``
        with what is queued. True when asked to close."""
        waiting = bool(self._held) or self.conn is None
        try:
            first = self._ops.get(timeout=self.retry_interval if waiting else None)
        except queue.Empty:
            first = _NUDGE
        if first is None:
            return True
        if isinstance(first, _Op):
            batch.append(first)
            # Let the event loop run before the batch is closed: when it is busy, what it
            # is about to queue joins this commit instead of making one of its own (a
            # commit costs far more than a message); when it is idle this returns at once.
            # With siblings, wait for them a little (see Gathering in the module doc).
            time.sleep(self.commit_delay if self.siblings() > 0 else 0)
        while len(batch) < self.batch_max:
            try:
                op = self._ops.get_nowait()
            except queue.Empty:
                break
            if op is None:
                return True
            if isinstance(op, _Op):
                batch.append(op)
        return False

    def _connection(self) -> sqlite3.Connection | None:
        if self.conn is None:
            try:
                self.conn = self._connect()
            except Exception as exc:
                self.unavailable = exc
                return None
            log.warning("spool %s: opened after %s", self.path, self.unavailable)
            self.unavailable = None
        return self.conn

    def _run_batch(self, batch: list[_Op], *, final: bool) -> None:
        outcomes: dict[int, Outcome] = {}

        def fail(ops: list[_Op], error: BaseException, err: BaseException) -> None:
            for op in ops:
                if op.keep and not final and is_space_error(error):
                    self._held.append(op)
                else:
                    outcomes[id(op)] = (err, None)

        conn = self._connection()
        if conn is None:
            why = self.unavailable
            assert why is not None
            fail(batch, why, SpoolError(f"spool {self.path} unavailable: {why}"))
            _post(batch, outcomes)
            return
        live = list(batch)
        several = True  # run consecutive bulk operations as one call
        while live:
            culprit, error, values = self._transact(conn, live, several)
            if is_space_error(error):
                self._make_room(conn)
            if culprit is _SEVERAL:
                several = False
                continue
            if culprit is not None:
                assert error is not None
                # One operation raised (a constraint, disk full, I/O error) and the
                # transaction was rolled back: fail (or hold) it alone, run the others again.
                fail([culprit], error, as_spool_error(error, "write"))
                live.remove(culprit)
                continue
            if error is not None:
                kept = [op for op in live if op.keep] if is_space_error(error) and not final else []
                if kept and len(kept) < len(live):
                    # Out of space: hold what may wait, and see whether the rest fits alone
                    # (a claim that finds nothing writes nothing).
                    self._held += kept
                    live = [op for op in live if not op.keep]
                    continue
                err = as_spool_error(error, "commit")
                if not isinstance(err, SpoolError):
                    err = SpoolError(f"spool commit failed: {error}")
                    err.__cause__ = error
                fail(live, error, err)
                break
            for op, value in zip(live, values, strict=True):
                outcomes[id(op)] = value
            self._after_commit(conn)
            break
        _post(batch, outcomes)

    def _transact(
        self, conn: sqlite3.Connection, ops: list[_Op], several: bool = True
    ) -> tuple[_Op | None, BaseException | None, list[Outcome]]:
        """Run ``ops`` in one transaction and commit (with ``several``, consecutive
        operations of one bulk function in one call).

        Returns ``(culprit, error, outcomes)``: ``culprit`` is the operation that
        raised (the transaction is then rolled back), ``_SEVERAL`` when a bulk call of
        several did; ``error`` without a culprit means the transaction itself
        (BEGIN/COMMIT, or syncing the files) failed.
        """
        values: list[Outcome] = []
        files = self.files
        try:
            conn.execute("BEGIN IMMEDIATE")
            files.begin()
            i, n = 0, len(ops)
            while i < n:
                op = ops[i]
                bulk, j = op.bulk, i + 1
                if several and bulk is not None:
                    while j < n and ops[j].bulk is bulk:
                        j += 1
                try:
                    if j - i == 1:
                        values.append((None, op.fn(conn)))
                    else:
                        assert bulk is not None
                        values += [(None, v) for v in bulk(conn, [o.arg for o in ops[i:j]])]
                except Exception as exc:
                    _rollback(conn)
                    files.rollback()
                    return (op if j - i == 1 else _SEVERAL), exc, values
                i = j
            files.sync(conn)  # the content before the rows that point to it
            conn.execute("COMMIT")
        except Exception as exc:
            _rollback(conn)
            files.rollback()
            return None, exc, values
        self.commits += 1
        return None, None, values

    # -- keeping the WAL small when space is short ------------------------------------------

    def _after_commit(self, conn: sqlite3.Connection) -> None:
        now = self.clock.monotonic()
        if now >= self._next_space_check:
            self._next_space_check = now + 1.0
            with contextlib.suppress(OSError):
                st = os.statvfs(self.path.parent)
                self.low = st.f_bavail * st.f_frsize < self.low_space
        self.files.low = self.low
        if self._wal_owed:  # the truncation a full disk refused: space may be back
            self._wal_owed = not self._truncate_wal(conn)
        try:
            self.files.reclaim(conn)
        except (sqlite3.Error, OSError) as exc:  # tried again after the next commit
            log.warning("spool %s: reclaiming content segments: %s", self.path, exc)
        if self.low:
            try:
                wal = self.wal_path.stat().st_size
            except OSError:
                return
            if wal > self.low_space_wal:
                self._truncate_wal(conn)

    def _make_room(self, conn: sqlite3.Connection) -> None:
        """A write failed for want of space: give the WAL's space back if it can be."""
        self.low = self.files.low = True
        self._wal_owed = not self._truncate_wal(conn)

    def _truncate_wal(self, conn: sqlite3.Connection) -> bool:
        """Checkpoint and truncate the WAL; False when it could not be done (the
        checkpoint needs space in the database file, or a reader holds it)."""
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return False
        if busy:
            return False
        self.checkpoints += 1
        return True
