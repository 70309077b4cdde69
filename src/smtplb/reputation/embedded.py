"""Reputation state beside the spool (SQLite, WAL). The suppression list has a
file of its own, ``suppression.db`` next to ``spool.db``: a lookup's read
transaction then sees a file that changes only when the list does, so SQLite keeps
the connection's page cache. In ``spool.db``, which the spool commits to all the
time, each lookup re-read the B-tree path (with 1M entries ~1.2 read syscalls and
~4.9 KB more per message than an empty list; bench/RESULTS.md). The reputation
book stays in ``spool.db``. Reads are one primary-key lookup on the caller's
thread; writes run in a thread (a spool batch may hold the write lock a moment)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from smtplb.reputation.state import Suppression, normalize, normalize_domain

log = logging.getLogger("smtplb.reputation")

SUPPRESSION_FILE = "suppression.db"

_SUPPRESSION_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppression (
    address TEXT NOT NULL,
    domain TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT 'operator',
    created_at REAL NOT NULL,
    PRIMARY KEY (address, domain)
) WITHOUT ROWID
"""
_BOOK_SCHEMA = """
CREATE TABLE IF NOT EXISTS reputation_book (
    worker INTEGER PRIMARY KEY,
    snapshot BLOB NOT NULL
)
"""


def _move_old_list(conn: sqlite3.Connection, spool: Path) -> None:
    """The list of an earlier release lived in the spool database: copy it into this
    file (its entries global when it had no ``domain`` column), then drop it there.
    Two transactions, the copy first: a crash between them copies again (the copy
    ignores entries already there), so no entry is lost."""
    conn.execute("ATTACH DATABASE ? AS spool", (str(spool),))
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            columns = {row[1] for row in conn.execute("PRAGMA spool.table_info(suppression)")}
            if not columns:
                return
            domain = "domain" if "domain" in columns else "''"
            conn.execute(
                "INSERT OR IGNORE INTO main.suppression"
                " (address, domain, reason, source, created_at)"
                f" SELECT address, {domain}, reason, source, created_at FROM spool.suppression"
            )
            log.info("suppression list moved from %s to its own file", spool.name)
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DROP TABLE IF EXISTS spool.suppression")
    finally:
        conn.execute("DETACH DATABASE spool")


def _scope_filter(address: str | None, domain: str | None) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause (and its arguments) of a listing by address and/or scope."""
    terms, args = [], []
    if address is not None:
        terms.append("address = ?")
        args.append(normalize(address))
    if domain is not None:
        terms.append("domain = ?")
        args.append(normalize_domain(domain))
    return (" WHERE " + " AND ".join(terms) if terms else ""), tuple(args)


class _Connections(NamedTuple):
    book: sqlite3.Connection  # spool.db: the reputation book
    writer: sqlite3.Connection  # suppression.db: additions, removals, listings
    reader: sqlite3.Connection  # suppression.db: the lookups, on the event loop


class SqliteState:
    """Opened at first use, and again after a failure: on a full disk the node
    starts (intake answers 451 meanwhile) and the list is there once space returns."""

    def __init__(self, path: Path | str, suppression_path: Path | str | None = None) -> None:
        self.path = Path(path)  # the spool database (worker 0's), for the book
        self.suppression_path = (
            Path(suppression_path) if suppression_path else self.path.with_name(SUPPRESSION_FILE)
        )
        self._lock = threading.Lock()  # the writing connections, one thread at a time
        self._open_lock = threading.Lock()
        self._conns: _Connections | None = None
        # (connections, the reader's data_version) at which the list was empty.
        self._empty_at: tuple[_Connections, int] | None = None
        try:
            self._open()
        except sqlite3.Error as exc:
            log.error("reputation state %s unavailable for now: %s", self.path, exc)

    def _open(self) -> _Connections:
        if self._conns is not None:
            return self._conns
        with self._open_lock:
            return self._open_locked()

    def _open_locked(self) -> _Connections:
        if self._conns is not None:
            return self._conns
        opened: list[sqlite3.Connection] = []
        try:
            writer = self._connect(self.suppression_path, opened)
            with writer:
                writer.execute(_SUPPRESSION_SCHEMA)
            _move_old_list(writer, self.path)
            book = self._connect(self.path, opened)
            with book:
                book.execute(_BOOK_SCHEMA)
            self._conns = _Connections(book, writer, self._connect(self.suppression_path, opened))
        except sqlite3.Error:
            for conn in opened:
                conn.close()
            raise
        return self._conns

    @staticmethod
    def _connect(path: Path, opened: list[sqlite3.Connection]) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
        opened.append(conn)
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    @property
    def _writer(self) -> sqlite3.Connection:
        return self._open().writer

    @property
    def _reader(self) -> sqlite3.Connection:
        return self._open().reader

    def __repr__(self) -> str:
        opened = "" if self._conns else ", not open"
        return f"SqliteState({self.path}, {self.suppression_path.name}{opened})"

    def close(self) -> None:
        with self._lock:
            if self._conns is not None:
                for conn in self._conns:
                    conn.close()
                self._conns = None

    # -- suppression ---------------------------------------------------------------

    def is_suppressed(self, address: str, sender_domain: str = "") -> bool:
        """One primary-key lookup; none while the list is known to be empty.

        The reader's ``PRAGMA data_version`` changes whenever any other connection
        (this process's writer, another worker's, the CLI's) commits to the file, so
        an empty list seen at version v is still empty while the version reads v:
        an addition anywhere applies at the next lookup. The pragma costs about half
        of the lookup it saves (the common case: most nodes have an empty list)."""
        try:
            conns = self._open()
            reader = conns.reader
            version = reader.execute("PRAGMA data_version").fetchone()[0]
            if self._empty_at == (conns, version):
                return False
            listed, empty = reader.execute(
                "SELECT EXISTS (SELECT 1 FROM suppression WHERE address = ? AND domain IN ('', ?)),"
                " NOT EXISTS (SELECT 1 FROM suppression)",
                (normalize(address), normalize_domain(sender_domain)),
            ).fetchone()
        except sqlite3.Error as exc:
            # Unreadable (a full disk at start): the spool refuses mail meanwhile.
            log.warning("suppression lookup failed: %s", exc)
            return False
        # Empty at a state no older than `version`: a commit between the two reads
        # moved data_version on, so the next lookup does not take this shortcut.
        self._empty_at = (conns, version) if empty else None
        return bool(listed)

    async def suppress(self, entries: Sequence[Suppression]) -> int:
        rows = [
            (normalize(e.address), normalize_domain(e.domain), e.reason, e.source, e.created_at)
            for e in entries
        ]
        return await asyncio.to_thread(self._suppress, rows)

    def _suppress(self, rows: list[tuple[str, str, str, str, float]]) -> int:
        with self._lock, self._writer as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT INTO suppression (address, domain, reason, source, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (address, domain) DO NOTHING",
                rows,
            )
            return conn.total_changes - before

    async def unsuppress(self, addresses: Sequence[str], domain: str = "") -> int:
        scope = normalize_domain(domain)
        keys = [(normalize(a), scope) for a in addresses]
        return await asyncio.to_thread(self._unsuppress, keys)

    def _unsuppress(self, keys: list[tuple[str, str]]) -> int:
        with self._lock, self._writer as conn:
            before = conn.total_changes
            conn.executemany("DELETE FROM suppression WHERE address = ? AND domain = ?", keys)
            return conn.total_changes - before

    async def suppressions(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        address: str | None = None,
        domain: str | None = None,
    ) -> list[Suppression]:
        where, args = _scope_filter(address, domain)
        sql = (
            f"SELECT address, reason, source, created_at, domain FROM suppression{where}"
            " ORDER BY address, domain LIMIT ? OFFSET ?"
        )
        rows = await asyncio.to_thread(self._read_all, sql, (*args, limit, offset))
        return [Suppression(str(a), str(r), str(s), float(t), str(d)) for a, r, s, t, d in rows]

    async def suppression_count(self, domain: str | None = None) -> int:
        where, args = _scope_filter(None, domain)
        rows = await asyncio.to_thread(
            self._read_all, f"SELECT count(*) FROM suppression{where}", args
        )
        return int(rows[0][0])

    # -- reputation book -------------------------------------------------------------

    async def save_book(self, worker: int, snapshot: bytes) -> None:
        await asyncio.to_thread(self._save_book, worker, snapshot)

    def _save_book(self, worker: int, snapshot: bytes) -> None:
        with self._lock, self._open().book as conn:
            conn.execute(
                "INSERT OR REPLACE INTO reputation_book (worker, snapshot) VALUES (?, ?)",
                (worker, snapshot),
            )

    async def load_book(self, worker: int) -> bytes | None:
        try:
            rows = await asyncio.to_thread(
                self._read_all,
                "SELECT snapshot FROM reputation_book WHERE worker = ?",
                (worker,),
                book=True,
            )
        except sqlite3.Error as exc:  # a full disk at start: begin with an empty book
            log.error("could not load the reputation book: %s", exc)
            return None
        return bytes(rows[0][0]) if rows else None

    def _read_all(
        self, sql: str, args: tuple[object, ...], *, book: bool = False
    ) -> list[tuple[Any, ...]]:
        with self._lock:
            conns = self._open()
            return (conns.book if book else conns.writer).execute(sql, args).fetchall()
