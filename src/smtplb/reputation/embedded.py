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

from smtplb.reputation.state import Suppression, normalize

log = logging.getLogger("smtplb.reputation")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppression (
    address TEXT PRIMARY KEY,
    reason TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT 'operator',
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reputation_book (
    worker INTEGER PRIMARY KEY,
    snapshot BLOB NOT NULL
)
"""


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
                with writer:
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

    def is_suppressed(self, address: str) -> bool:
        try:
            row = self._reader.execute(
                "SELECT 1 FROM suppression WHERE address = ?", (normalize(address),)
            ).fetchone()
        except sqlite3.Error as exc:
            # Unreadable (a full disk at start): the spool refuses mail meanwhile.
            log.warning("suppression lookup failed: %s", exc)
            return False
        return row is not None

    async def suppress(self, entries: Sequence[Suppression]) -> int:
        rows = [(normalize(e.address), e.reason, e.source, e.created_at) for e in entries]
        return await asyncio.to_thread(self._suppress, rows)

    def _suppress(self, rows: list[tuple[str, str, str, float]]) -> int:
        with self._lock, self._writer as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT INTO suppression (address, reason, source, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (address) DO NOTHING",
                rows,
            )
            return conn.total_changes - before

    async def unsuppress(self, addresses: Sequence[str]) -> int:
        keys = [(normalize(a),) for a in addresses]
        return await asyncio.to_thread(self._unsuppress, keys)

    def _unsuppress(self, keys: list[tuple[str]]) -> int:
        with self._lock, self._writer as conn:
            before = conn.total_changes
            conn.executemany("DELETE FROM suppression WHERE address = ?", keys)
            return conn.total_changes - before

    async def suppressions(
        self, *, limit: int = 100, offset: int = 0, address: str | None = None
    ) -> list[Suppression]:
        if address is not None:
            sql = "SELECT * FROM suppression WHERE address = ?"
            args: tuple[object, ...] = (normalize(address),)
        else:
            sql = "SELECT * FROM suppression ORDER BY address LIMIT ? OFFSET ?"
            args = (limit, offset)
        rows = await asyncio.to_thread(self._read_all, sql, args)
        return [Suppression(str(a), str(r), str(s), float(t)) for a, r, s, t in rows]

    async def suppression_count(self) -> int:
        rows = await asyncio.to_thread(self._read_all, "SELECT count(*) FROM suppression", ())
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
