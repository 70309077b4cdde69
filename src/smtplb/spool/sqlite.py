"""The embedded spool: SQLite in WAL mode, one writer thread with group commit.

Theory of operation
-------------------
Every write (store, claim, record, expire, retry, delete, purge) is an
operation put on a queue. The writer thread takes the first one, drains
whatever else is queued (up to ``batch_max``), runs them all in one
transaction and commits once: one fsync (``synchronous=FULL``) for the whole
batch. An operation that raises rolls the transaction back and fails only
its own caller; the others run again in a new one (errors are rare, and a
savepoint per operation would cost two more statements each, with two GIL
hand-overs per statement). A failed COMMIT fails every caller of the batch
with :class:`SpoolError` and the next batch starts clean. Futures are
resolved on their event loop with ``call_soon_threadsafe``.

Delivery results (``record``) do not start a commit of their own: the
upstream already has the message, so nobody waits for them to be durable
before answering anyone. They ride along with the next batch that must be
committed anyway (the next message stored), or are committed on their own
after ``lazy_delay`` seconds. fsync is what a busy spool pays most for, so
this halves the commits per message; a crash in that window delivers the
message again (at-least-once), as it would a crash during delivery.

Reads run on a second, query-only connection in a reader thread, so they
see the last committed state and never wait behind the writer's fsync.

Nothing scans the queue: claiming walks the partial index ``recipients_ready``
(non-final, not in flight) one priority at a time; expiry walks the partial
index of live messages by ``expires_at``; state counts are kept by triggers.
When every recipient of a message is final its content is released (set to
NULL), except after expiry, where the DSN still quotes it; ``purge`` deletes
final messages after their retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from smtplb.clock import Clock, SystemClock
from smtplb.model import RecipientState, domain_of
from smtplb.spool.base import (
    ClaimedMessage,
    ClaimedRecipient,
    ExpiredRecipient,
    MessageView,
    NewMessage,
    RecipientResult,
    RecipientView,
    SpoolError,
)

T = TypeVar("T")

log = logging.getLogger("smtplb.spool")

SCHEMA_VERSION = 1

_QUEUED = int(RecipientState.QUEUED)
_INFLIGHT = int(RecipientState.INFLIGHT)
_FINAL_FROM = int(RecipientState.DELIVERED)  # states >= this are final
_NON_FINAL = tuple(s for s in RecipientState if not s.is_final)

# ``state IN (0, 2)`` is spelled out literally wherever the ready index must be
# used: SQLite only picks a partial index when the query repeats its WHERE term.
_READY = f"state IN ({int(RecipientState.QUEUED)}, {int(RecipientState.DEFERRED)})"

_ZERO_COUNTS = ", ".join(f"({int(s)}, 0)" for s in RecipientState)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS messages (
    pk INTEGER PRIMARY KEY,
    queue_id TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    message_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    client_ip TEXT NOT NULL,
    auth_user TEXT,
    content_class TEXT NOT NULL,
    is_dsn INTEGER NOT NULL,
    final_at REAL,          -- set (and content released) when every recipient is final
    content BLOB            -- last, so reading the other columns skips its overflow pages
);
CREATE INDEX IF NOT EXISTS messages_live_expiry ON messages(expires_at)
    WHERE final_at IS NULL;
CREATE INDEX IF NOT EXISTS messages_final ON messages(final_at)
    WHERE final_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS recipients (
    rid INTEGER PRIMARY KEY,
    msg_pk INTEGER NOT NULL,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    pool TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_code INTEGER,
    last_enhanced TEXT,
    last_response TEXT NOT NULL DEFAULT '',
    member TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS recipients_msg ON recipients(msg_pk);
CREATE INDEX IF NOT EXISTS recipients_state ON recipients(state, msg_pk);
CREATE INDEX IF NOT EXISTS recipients_ready ON recipients(priority, next_attempt)
    WHERE {_READY};

CREATE TABLE IF NOT EXISTS state_counts (state INTEGER PRIMARY KEY, n INTEGER NOT NULL);
INSERT OR IGNORE INTO state_counts(state, n) VALUES {_ZERO_COUNTS};

CREATE TRIGGER IF NOT EXISTS recipients_count_ins AFTER INSERT ON recipients BEGIN
    UPDATE state_counts SET n = n + 1 WHERE state = new.state;
END;
CREATE TRIGGER IF NOT EXISTS recipients_count_del AFTER DELETE ON recipients BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = old.state;
END;
CREATE TRIGGER IF NOT EXISTS recipients_count_upd AFTER UPDATE OF state ON recipients
    WHEN old.state <> new.state BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = old.state;
    UPDATE state_counts SET n = n + 1 WHERE state = new.state;
END;
"""

# Speed without weakening durability: synchronous stays FULL (fsync per commit).
_COMMON_PRAGMAS = (
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-32768",  # 32 MiB per connection
    "PRAGMA mmap_size=67108864",  # hot pages without syscalls; small, it counts in RSS
    "PRAGMA busy_timeout=10000",
)
_WRITER_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    # Fewer, larger checkpoints: each one fsyncs the main file inside a commit.
    "PRAGMA wal_autocheckpoint=4000",
    "PRAGMA journal_size_limit=67108864",
)

_MSG_COLS = "pk, queue_id, sender, message_id, size, received_at, expires_at, content_class, is_dsn"
_RCPT_COLS = (
    "rid, address, state, pool, priority, attempts, next_attempt, last_code, last_enhanced,"
    " last_response, member, updated_at"
)
_BELOW_ANY_PRIORITY = -(2**62)
_IN_CHUNK = 500  # bound on host parameters per IN (...) list


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class _Nudge:
    """On the writer's queue: commit the lazy operations now."""


_NUDGE = _Nudge()


def _resolve(outcomes: list[tuple[asyncio.Future[Any], BaseException | None, Any]]) -> None:
    for fut, exc, value in outcomes:
        if fut.done():  # the caller was cancelled; the write happened anyway
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


def _post(batch: list[_Op], outcomes: dict[int, tuple[BaseException | None, Any]]) -> None:
    """Hand each outcome to its caller's event loop: one wake-up per loop per batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
    for op in batch:
        by_loop.setdefault(op.loop, []).append((op.future, *outcomes[id(op)]))
    for loop, resolved in by_loop.items():
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, resolved)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):  # the next BEGIN starts clean
            conn.execute("ROLLBACK")


def _chunks(items: list[int]) -> Iterable[list[int]]:
    for i in range(0, len(items), _IN_CHUNK):
        yield items[i : i + _IN_CHUNK]


def _bucket(n: int) -> int:
    """``n`` rounded up to a power of two: batched statements come in a few sizes,
    which SQLite's statement cache keeps prepared."""
    return 1 << (n - 1).bit_length()


_RECORD_SQL: dict[int, str] = {}
_NO_ROW = (-1, 0, 0, False, 0.0, None, None, "", "")  # rid -1 matches no recipient


def _qmarks(n: int) -> str:
    return ",".join("?" * n)


def _as_spool_error(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        err = SpoolError(f"spool {what} failed: {exc}")
        err.__cause__ = exc
        return err
    return exc


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
    ) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max}")
        self.path = Path(path)
        self.batch_max = batch_max
        self.clock: Clock = clock or SystemClock()
        self.commits = 0  # committed batches: with group commit, far fewer than writes
        # False when another process owns this spool (a worker's shard seen from the
        # API worker): then in-flight recipients are that process's, not a crash's.
        self.recover = recover
        self._ops: queue.SimpleQueue[_Op | _Nudge | None] = queue.SimpleQueue()
        self.lazy_delay = lazy_delay
        self._lazy: deque[_Op] = deque()  # ride along with the next commit
        self._nudge_armed = False
        self._in_batch = 0
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._rconn: sqlite3.Connection | None = None
        self._open = False

    def __repr__(self) -> str:
        status = "open" if self._open else "closed"
        pending = self._ops.qsize() + self._in_batch + len(self._lazy)
        return (
            f"<SqliteSpool {str(self.path)!r} {status}, {pending} pending ops,"
            f" {self.commits} commits>"
        )

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._wconn = await asyncio.to_thread(self._connect_writer)
        except sqlite3.Error as exc:
            raise SpoolError(
                f"cannot open spool {self.path}: {exc} (check spool path and permissions)"
            ) from exc
        self._writer = threading.Thread(
            target=self._run_writer, name=f"spool-writer:{self.path.name}", daemon=True
        )
        self._writer.start()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix=f"spool-reader:{self.path.name}")
        self._open = True
        try:
            await self._read(lambda _c: None)  # connects the reader in its thread
        except BaseException:
            await self.close()
            raise

    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in (*_WRITER_PRAGMAS, *_COMMON_PRAGMAS):
                conn.execute(pragma)
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SpoolError(f"spool {self.path}: cannot enable WAL (journal_mode={mode})")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SpoolError(
                    f"spool {self.path} has schema version {version}, this smtplb knows"
                    f" {SCHEMA_VERSION}: upgrade smtplb"
                )
            conn.execute("BEGIN IMMEDIATE")
            self._create_schema(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            # Crash recovery: whatever was in flight is delivered again (at-least-once).
            now = self.clock.wall()
            if self.recover:
                conn.execute(
                    "UPDATE recipients SET state=?, next_attempt=?, updated_at=? WHERE state=?",
                    (_QUEUED, now, now, _INFLIGHT),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        # executescript() would COMMIT first; run statement by statement instead.
        for stmt in _split_sql(_SCHEMA):
            conn.execute(stmt)

    def _connect_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in (*_COMMON_PRAGMAS, "PRAGMA query_only=ON"):
            conn.execute(pragma)
        return conn

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        writer, self._writer = self._writer, None
        self._ops.put(None)
        if writer is not None:
            await asyncio.to_thread(writer.join)
        reader, self._reader = self._reader, None
        if reader is not None:
            await asyncio.get_running_loop().run_in_executor(reader, self._close_reader)
            reader.shutdown(wait=True)

    def _close_reader(self) -> None:
        if self._rconn is not None:
            self._rconn.close()
            self._rconn = None

    # -- the writer thread ---------------------------------------------------

    async def _write(self, fn: Callable[[sqlite3.Connection], T], *, lazy: bool = False) -> T:
        """Run ``fn`` in the writer's next transaction; return once it is durable.

        ``lazy``: do not start a commit for it (see the module docstring)."""
        if not self._open:
            raise SpoolError(f"spool {self.path} is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        op = _Op(fn, loop, fut)
        if not lazy:
            self._ops.put(op)
        else:
            self._lazy.append(op)
            if not self._nudge_armed:
                self._nudge_armed = True
                loop.call_later(self.lazy_delay, self._nudge)
        return await fut

    def _nudge(self) -> None:
        self._nudge_armed = False
        if self._lazy:
            self._ops.put(_NUDGE)

    def _run_writer(self) -> None:
        conn = self._wconn
        assert conn is not None
        closing = False
        while not closing or self._lazy:  # on close, the lazy ones still get committed
            first = None if closing else self._ops.get()
            closing = first is None
            batch = [first] if isinstance(first, _Op) else []
            while len(batch) < self.batch_max and not closing:
                try:
                    op = self._ops.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    closing = True
                elif isinstance(op, _Op):
                    batch.append(op)
            while self._lazy and len(batch) < self.batch_max:
                batch.append(self._lazy.popleft())
            if self._lazy and not closing:  # over one batch's worth: again, no waiting
                self._ops.put(_NUDGE)
            if not batch:
                continue
            self._in_batch = len(batch)
            try:
                self._run_batch(conn, batch)
            except Exception as exc:  # a bug here must not leave callers waiting forever
                log.exception("spool writer: batch of %d failed", len(batch))
                err = SpoolError(f"spool write failed: {exc}")
                _post(batch, {id(op): (err, None) for op in batch})
            self._in_batch = 0
        conn.close()
        self._wconn = None

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        outcomes: dict[int, tuple[BaseException | None, Any]] = {}
        live = list(batch)
        while live:
            culprit, error, values = self._transact(conn, live)
            if culprit is not None:
                assert error is not None
                # One operation raised (a constraint, disk full, I/O error) and the
                # transaction was rolled back: fail it alone, run the others again.
                outcomes[id(culprit)] = (_as_spool_error(error, "write"), None)
                live.remove(culprit)
                continue
            if error is not None:
                err = SpoolError(f"spool commit failed: {error}")
                err.__cause__ = error
                values = [(err, None)] * len(live)
            for op, value in zip(live, values, strict=True):
                outcomes[id(op)] = value
            break
        _post(batch, outcomes)

    def _transact(
        self, conn: sqlite3.Connection, ops: list[_Op]
    ) -> tuple[_Op | None, BaseException | None, list[tuple[BaseException | None, Any]]]:
        """Run ``ops`` in one transaction and commit.

        Returns ``(culprit, error, outcomes)``: ``culprit`` is the operation that
        raised (the transaction is then rolled back); ``error`` without a culprit
        means the transaction itself (BEGIN/COMMIT) failed.
        """
        values: list[tuple[BaseException | None, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                try:
                    values.append((None, op.fn(conn)))
                except Exception as exc:
                    _rollback(conn)
                    return op, exc, values
            conn.execute("COMMIT")
        except Exception as exc:
            _rollback(conn)
            return None, exc, values
        self.commits += 1
        return None, None, values

    # -- reads ---------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self._open or self._reader is None:
            raise SpoolError(f"spool {self.path} is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, self._read_in_thread, fn)
        except sqlite3.Error as exc:
            raise SpoolError(f"spool read failed: {exc}") from exc

    def _read_in_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._rconn is None:
            self._rconn = self._connect_reader()
        return fn(self._rconn)

    # -- Spool ----------------------------------------------------------------

    async def store(self, message: NewMessage, *, inflight: bool = False) -> list[int]:
        return await self._write(lambda c: self._store(c, message, inflight))

    def _store(self, conn: sqlite3.Connection, m: NewMessage, inflight: bool) -> list[int]:
        cur = conn.execute(
            "INSERT INTO messages(queue_id, sender, message_id, size, received_at, expires_at,"
            " client_ip, auth_user, content_class, is_dsn, content)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                m.queue_id,
                m.sender,
                m.message_id,
                len(m.content),
                m.received_at,
                m.expires_at,
                m.client_ip,
                m.auth_user,
                m.content_class,
                int(m.is_dsn),
                m.content,
            ),
        )
        msg_pk = cur.lastrowid
        state = _INFLIGHT if inflight else _QUEUED
        now = self.clock.wall()
        rids: list[int] = []
        for r in m.recipients:
            cur = conn.execute(
                "INSERT INTO recipients(msg_pk, address, domain, pool, priority, state,"
                " next_attempt, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                (msg_pk, r.address, domain_of(r.address), r.pool, r.priority, state,
                 m.received_at, now),
            )  # fmt: skip
            assert cur.lastrowid is not None
            rids.append(cur.lastrowid)
        if not rids:
            assert msg_pk is not None
            self._finalize(conn, [msg_pk], now)
        return rids

    async def claim_ready(self, now: float, limit: int) -> list[ClaimedMessage]:
        if limit <= 0:
            return []
        return await self._write(lambda c: self._claim(c, now, limit))

    def _claim(self, conn: sqlite3.Connection, now: float, limit: int) -> list[ClaimedMessage]:
        rows: list[tuple[int, int, str, str, int, int]] = []
        # Skip from one priority present to the next: one index seek each, however
        # deep the queue; within a priority, a range scan of due recipients.
        prio = _next_priority(conn, _BELOW_ANY_PRIORITY)
        while prio is not None:
            rows += conn.execute(
                "SELECT rid, msg_pk, address, pool, priority, attempts FROM recipients"
                " INDEXED BY recipients_ready"
                f" WHERE {_READY} AND priority = ? AND next_attempt <= ?"
                " ORDER BY next_attempt LIMIT ?",
                (prio, now, limit - len(rows)),
            ).fetchall()
            if len(rows) >= limit:
                break
            prio = _next_priority(conn, prio)
        if not rows:
            return []
        stamp = self.clock.wall()
        conn.executemany(
            "UPDATE recipients SET state=?, updated_at=? WHERE rid=?",
            [(_INFLIGHT, stamp, row[0]) for row in rows],
        )
        msg_pks = list(dict.fromkeys(row[1] for row in rows))
        messages: dict[int, ClaimedMessage] = {}
        for chunk in _chunks(msg_pks):
            for pk, qid, sender, mid, recv, exp, cclass, dsn, content, ip in conn.execute(
                "SELECT pk, queue_id, sender, message_id, received_at, expires_at, content_class,"
                f" is_dsn, content, client_ip FROM messages WHERE pk IN ({_qmarks(len(chunk))})",
                chunk,
            ):
                messages[pk] = ClaimedMessage(
                    pk, qid, sender, mid, content or b"", recv, exp, cclass, bool(dsn), [], ip
                )
        for rid, msg_pk, address, pool, priority, attempts in rows:
            messages[msg_pk].recipients.append(
                ClaimedRecipient(rid, address, pool, priority, attempts)
            )
        return [messages[pk] for pk in msg_pks]

    async def record(self, results: list[RecipientResult]) -> None:
        if results:
            await self._write(lambda c: self._record(c, results), lazy=True)

    def _record(self, conn: sqlite3.Connection, results: list[RecipientResult]) -> None:
        """One UPDATE … FROM (VALUES …) per chunk of results, not one per recipient:
        each statement is a GIL hand-over to and from SQLite."""
        now = self.clock.wall()
        touched: dict[int, None] = {}
        if len({r.rid for r in results}) < len(results):  # a rid twice: one by one, in order
            for r in results:
                self._record_rows(conn, [r], now, touched)
        else:
            for i in range(0, len(results), _IN_CHUNK):
                self._record_rows(conn, results[i : i + _IN_CHUNK], now, touched)
        self._finalize(conn, list(touched), now)

    @staticmethod
    def _record_rows(
        conn: sqlite3.Connection,
        rows: list[RecipientResult],
        now: float,
        touched: dict[int, None],
    ) -> None:
        size = _bucket(len(rows))
        params: list[object] = [now]
        for r in rows:
            params += (r.rid, int(r.state), int(r.count_attempt), not r.state.is_final,
                       r.next_attempt, r.code, r.enhanced_code, r.response, r.member)  # fmt: skip
        params += _NO_ROW * (size - len(rows))  # padding: a fixed set of statement texts
        sql = _RECORD_SQL.get(size)
        if sql is None:
            sql = _RECORD_SQL[size] = (
                "UPDATE recipients SET state = v.column2, attempts = attempts + v.column3,"
                " next_attempt = CASE WHEN v.column4 THEN v.column5 ELSE next_attempt END,"
                " last_code = COALESCE(v.column6, last_code),"
                " last_enhanced = COALESCE(v.column7, last_enhanced),"
                " last_response = CASE WHEN v.column8 <> '' THEN v.column8"
                " ELSE last_response END,"
                " member = CASE WHEN v.column9 <> '' THEN v.column9 ELSE member END,"
                " updated_at = ?"
                f" FROM (VALUES {','.join(['(?,?,?,?,?,?,?,?,?)'] * size)}) AS v"
                " WHERE recipients.rid = v.column1 RETURNING msg_pk, state"
            )
        for msg_pk, state in conn.execute(sql, params):  # no row: deleted while in flight
            if state >= _FINAL_FROM:
                touched[msg_pk] = None

    def _finalize(
        self, conn: sqlite3.Connection, msg_pks: list[int], now: float, *, release: bool = True
    ) -> None:
        """Mark final the messages whose recipients are now all final, releasing
        their content unless ``release`` is false (purge drops it later)."""
        for chunk in _chunks(msg_pks):
            size = _bucket(len(chunk))
            conn.execute(
                "UPDATE messages SET final_at = ?, content = CASE WHEN ? THEN NULL ELSE content END"
                f" WHERE pk IN ({_qmarks(size)}) AND final_at IS NULL AND NOT EXISTS"
                " (SELECT 1 FROM recipients WHERE msg_pk = messages.pk AND state < ?)",
                [now, release, *chunk, *[chunk[0]] * (size - len(chunk)), _FINAL_FROM],
            )

    async def expire_due(self, now: float, limit: int = 1000) -> list[ExpiredRecipient]:
        if limit <= 0:
            return []
        return await self._write(lambda c: self._expire(c, now, limit))

    def _expire(self, conn: sqlite3.Connection, now: float, limit: int) -> list[ExpiredRecipient]:
        # CROSS JOIN pins the join order: walk live messages by expiry, not recipients.
        rows = conn.execute(
            "SELECT r.rid, r.msg_pk, m.queue_id, m.sender, r.address, m.message_id,"
            " r.last_code, r.last_enhanced, r.last_response"
            " FROM messages AS m CROSS JOIN recipients AS r ON r.msg_pk = m.pk"
            " WHERE m.final_at IS NULL AND m.expires_at <= ?"
            f" AND r.{_READY} LIMIT ?",
            (now, limit),
        ).fetchall()
        if not rows:
            return []
        stamp = self.clock.wall()
        conn.executemany(
            "UPDATE recipients SET state=?, updated_at=? WHERE rid=?",
            [(int(RecipientState.EXPIRED), stamp, row[0]) for row in rows],
        )
        # The content stays until purge: the delay DSN quotes the original headers.
        msg_pks = list(dict.fromkeys(row[1] for row in rows))
        self._finalize(conn, msg_pks, stamp, release=False)
        return [ExpiredRecipient(*row) for row in rows]

    async def retry(self, queue_id: str | None = None) -> int:
        if queue_id is not None:
            return await self._write(lambda c: self._retry(c, queue_id))
        # Everything: in slices, so that a deep queue neither holds the writer (and
        # with it intake) for seconds nor keeps a huge rollback journal in memory.
        now = self.clock.wall()
        return await self._in_slices(lambda c, limit: self._retry_slice(c, now, limit), 5000)

    async def _in_slices(self, fn: Callable[[sqlite3.Connection, int], int], limit: int) -> int:
        """``fn(conn, limit)`` in one transaction after another until a slice does fewer
        than ``limit`` rows; the total. No single transaction holds up intake for long."""
        total = 0
        while True:
            n = await self._write(lambda c: fn(c, limit))
            total += n
            if n < limit:
                return total

    @staticmethod
    def _retry_slice(conn: sqlite3.Connection, now: float, limit: int) -> int:
        cur = conn.execute(
            "UPDATE recipients SET next_attempt=?, updated_at=? WHERE rid IN"
            f" (SELECT rid FROM recipients WHERE {_READY} AND next_attempt > ? LIMIT ?)",
            (now, now, now, limit),
        )
        return cur.rowcount

    def _retry(self, conn: sqlite3.Connection, queue_id: str) -> int:
        now = self.clock.wall()
        cur = conn.execute(
            f"UPDATE recipients SET next_attempt=?, updated_at=? WHERE {_READY}"
            " AND msg_pk = (SELECT pk FROM messages WHERE queue_id = ?)",
            (now, now, queue_id),
        )
        return cur.rowcount

    async def delete(self, queue_id: str) -> bool:
        return await self._write(lambda c: self._delete(c, queue_id))

    @staticmethod
    def _delete(conn: sqlite3.Connection, queue_id: str) -> bool:
        row = conn.execute("SELECT pk FROM messages WHERE queue_id=?", (queue_id,)).fetchone()
        if row is None:
            return False
        conn.execute("DELETE FROM recipients WHERE msg_pk=?", row)
        conn.execute("DELETE FROM messages WHERE pk=?", row)
        return True

    async def purge(self, older_than: float) -> int:
        """Delete messages whose recipients all became final before ``older_than``.

        Runs in slices so that no single transaction holds up intake for long.
        Returns how many messages were deleted.
        """
        return await self._in_slices(lambda c, limit: self._purge(c, older_than, limit), 2000)

    @staticmethod
    def _purge(conn: sqlite3.Connection, older_than: float, limit: int) -> int:
        pks = [
            pk
            for (pk,) in conn.execute(
                "SELECT pk FROM messages WHERE final_at IS NOT NULL AND final_at < ? LIMIT ?",
                (older_than, limit),
            )
        ]
        conn.executemany("DELETE FROM recipients WHERE msg_pk=?", [(pk,) for pk in pks])
        conn.executemany("DELETE FROM messages WHERE pk=?", [(pk,) for pk in pks])
        return len(pks)

    async def next_due(self) -> float | None:
        return await self._read(self._next_due)

    @staticmethod
    def _next_due(conn: sqlite3.Connection) -> float | None:
        best: float | None = None
        prio = _next_priority(conn, _BELOW_ANY_PRIORITY)
        while prio is not None:
            due = conn.execute(
                "SELECT MIN(next_attempt) FROM recipients INDEXED BY recipients_ready"
                f" WHERE {_READY} AND priority = ?",
                (prio,),
            ).fetchone()[0]
            best = due if best is None else min(best, due)
            prio = _next_priority(conn, prio)
        return best

    async def stats(self) -> dict[str, int]:
        return await self._read(self._stats)

    @staticmethod
    def _stats(conn: sqlite3.Connection) -> dict[str, int]:
        counts = dict(conn.execute("SELECT state, n FROM state_counts").fetchall())
        return {s.label: int(counts.get(int(s), 0)) for s in RecipientState}

    async def oldest_age(self, now: float) -> dict[str, float]:
        return await self._read(lambda c: self._oldest_age(c, now))

    @staticmethod
    def _oldest_age(conn: sqlite3.Connection, now: float) -> dict[str, float]:
        # Message pks grow with arrival, so the smallest pk in a state is its oldest.
        ages: dict[str, float] = {}
        for s in _NON_FINAL:
            row = conn.execute(
                "SELECT m.received_at FROM messages m WHERE m.pk ="
                " (SELECT MIN(msg_pk) FROM recipients WHERE state = ?)",
                (int(s),),
            ).fetchone()
            ages[s.label] = max(0.0, now - row[0]) if row else 0.0
        return ages

    async def list_messages(
        self, *, state: RecipientState | None = None, limit: int = 100, offset: int = 0
    ) -> list[MessageView]:
        return await self._read(lambda c: self._list(c, state, limit, offset))

    def _list(
        self, conn: sqlite3.Connection, state: RecipientState | None, limit: int, offset: int
    ) -> list[MessageView]:
        if state is None:
            pks = [
                pk
                for (pk,) in conn.execute(
                    "SELECT pk FROM messages ORDER BY pk DESC LIMIT ? OFFSET ?", (limit, offset)
                )
            ]
        else:
            pks = [
                pk
                for (pk,) in conn.execute(
                    "SELECT DISTINCT msg_pk FROM recipients WHERE state = ?"
                    " ORDER BY msg_pk DESC LIMIT ? OFFSET ?",
                    (int(state), limit, offset),
                )
            ]
        return self._views(conn, pks)

    async def get(self, queue_id: str) -> MessageView | None:
        return await self._read(lambda c: self._get(c, queue_id))

    def _get(self, conn: sqlite3.Connection, queue_id: str) -> MessageView | None:
        row = conn.execute("SELECT pk FROM messages WHERE queue_id=?", (queue_id,)).fetchone()
        if row is None:
            return None
        views = self._views(conn, [row[0]])
        return views[0] if views else None

    @staticmethod
    def _views(conn: sqlite3.Connection, pks: list[int]) -> list[MessageView]:
        views: dict[int, MessageView] = {}
        for chunk in _chunks(pks):
            marks = _qmarks(len(chunk))
            for pk, qid, sender, mid, size, recv, exp, cclass, dsn in conn.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE pk IN ({marks})", chunk
            ):
                views[pk] = MessageView(pk, qid, sender, mid, size, recv, exp, cclass, bool(dsn))
            for msg_pk, rid, address, st, *rest in conn.execute(
                f"SELECT msg_pk, {_RCPT_COLS} FROM recipients WHERE msg_pk IN ({marks})"
                " ORDER BY rid",
                chunk,
            ):
                views[msg_pk].recipients.append(
                    RecipientView(rid, address, RecipientState(st), *rest)
                )
        return [views[pk] for pk in pks if pk in views]

    async def get_content(self, queue_id: str) -> bytes | None:
        return await self._read(lambda c: self._get_content(c, queue_id))

    @staticmethod
    def _get_content(conn: sqlite3.Connection, queue_id: str) -> bytes | None:
        row = conn.execute("SELECT content FROM messages WHERE queue_id=?", (queue_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])


def _next_priority(conn: sqlite3.Connection, after: int) -> int | None:
    """The smallest priority above ``after`` with a ready recipient: one index seek."""
    row = conn.execute(
        f"SELECT priority FROM recipients INDEXED BY recipients_ready WHERE {_READY}"
        " AND priority > ? ORDER BY priority LIMIT 1",
        (after,),
    ).fetchone()
    return None if row is None else int(row[0])


def _split_sql(script: str) -> list[str]:
    """Split a schema script into statements, keeping trigger bodies whole."""
    stmts: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--") and not buf:
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            stmts.append(buf.strip())
            buf = ""
    if buf.strip():
        stmts.append(buf.strip())
    return stmts
