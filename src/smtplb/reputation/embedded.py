"""Reputation state in the spool database (SQLite, WAL): a table of its own,
its own connections. Reads are one primary-key lookup on the caller's thread;
writes run in a thread (a spool batch may hold the write lock for a moment)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smtplb.reputation.state import Suppression, normalize, normalize_domain

log = logging.getLogger("smtplb.reputation")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppression (
    address TEXT NOT NULL,
    domain TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT 'operator',
    created_at REAL NOT NULL,
    PRIMARY KEY (address, domain)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reputation_book (
    worker INTEGER PRIMARY KEY,
    snapshot BLOB NOT NULL
)
"""


def _migrate(conn: sqlite3.Connection) -> None:
    """A table of the first release (address alone the key) gets its ``domain``
    column: its entries are global (""); done once, in the schema's transaction."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(suppression)")}
    if not columns or "domain" in columns:
        return
    log.info("suppression list: adding the per-sender-domain scope")
    conn.execute("ALTER TABLE suppression RENAME TO suppression_v1")
    conn.execute(_SCHEMA.split(";")[0])
    conn.execute(
        "INSERT INTO suppression (address, domain, reason, source, created_at)"
        " SELECT address, '', reason, source, created_at FROM suppression_v1"
    )
    conn.execute("DROP TABLE suppression_v1")


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


class SqliteState:
    """Opened at first use, and again after a failure: on a full disk the node
    starts (intake answers 451 meanwhile) and the list is there once space returns."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # the writer connection, one thread at a time
        self._open_lock = threading.Lock()
        self._conns: tuple[sqlite3.Connection, sqlite3.Connection] | None = None
        try:
            self._open()
        except sqlite3.Error as exc:
            log.error("reputation state %s unavailable for now: %s", self.path, exc)

    def _open(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        if self._conns is not None:
            return self._conns
        with self._open_lock:
            return self._open_locked()

    def _open_locked(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        if self._conns is None:
            writer = self._connect()
            try:
                with writer:  # one transaction: two workers starting at once agree
                    writer.execute("BEGIN IMMEDIATE")
                    _migrate(writer)
                    for statement in _SCHEMA.split(";"):
                        writer.execute(statement)
                self._conns = (writer, self._connect())
            except sqlite3.Error:
                writer.close()
                raise
        return self._conns

    @property
    def _writer(self) -> sqlite3.Connection:
        return self._open()[0]

    @property
    def _reader(self) -> sqlite3.Connection:
        return self._open()[1]

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def __repr__(self) -> str:
        return f"SqliteState({self.path}{'' if self._conns else ', not open'})"

    def close(self) -> None:
        with self._lock:
            if self._conns is not None:
                for conn in self._conns:
                    conn.close()
                self._conns = None

    # -- suppression ---------------------------------------------------------------

    def is_suppressed(self, address: str, sender_domain: str = "") -> bool:
        try:
            row = self._reader.execute(
                "SELECT 1 FROM suppression WHERE address = ? AND domain IN ('', ?)",
                (normalize(address), normalize_domain(sender_domain)),
            ).fetchone()
        except sqlite3.Error as exc:
            # Unreadable (a full disk at start): the spool refuses mail meanwhile.
            log.warning("suppression lookup failed: %s", exc)
            return False
        return row is not None

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
        with self._lock, self._writer as conn:
            conn.execute(
                "INSERT OR REPLACE INTO reputation_book (worker, snapshot) VALUES (?, ?)",
                (worker, snapshot),
            )

    async def load_book(self, worker: int) -> bytes | None:
        try:
            rows = await asyncio.to_thread(
                self._read_all, "SELECT snapshot FROM reputation_book WHERE worker = ?", (worker,)
            )
        except sqlite3.Error as exc:  # a full disk at start: begin with an empty book
            log.error("could not load the reputation book: %s", exc)
            return None
        return bytes(rows[0][0]) if rows else None

    def _read_all(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._writer.execute(sql, args).fetchall()
