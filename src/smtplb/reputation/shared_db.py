"""A small SQLite file in ``data_dir`` that the node's workers share (warm-up counts,
complaint-budget counts): WAL, a busy timeout, explicit ``BEGIN IMMEDIATE``
transactions, opened at first use and guarded by a lock (the connection is used from
the event loop and from worker threads)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _wal(db: sqlite3.Connection, wait: float = 10.0) -> None:
    """``PRAGMA journal_mode=WAL``, waiting its turn: when two workers open a new file at
    once, the switch can answer "database is locked" at once, without the busy timeout
    (SQLite does not wait for the lock it needs to change the journal mode)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class SharedDb:
    """The file at ``path`` with its ``schema`` (statements separated by ``;``)."""

    def __init__(self, path: Path | str, schema: str) -> None:
        self.path = Path(path)
        self.schema = schema
        self.lock = threading.Lock()
        self._db: sqlite3.Connection | None = None  # opened at first use

    def __repr__(self) -> str:
        return f"SharedDb({self.path.name}, {'open' if self._db else 'closed'})"

    def connection(self) -> sqlite3.Connection:
        """The database, opened at first use (call it holding :attr:`lock`): a node that
        never needs the file never touches it, and one started on a full disk still
        starts."""
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
            try:
                db.isolation_level = None  # transactions are explicit
                db.execute("PRAGMA busy_timeout=10000")
                _wal(db)
                # A lost commit needs an OS crash; it costs a few counts.
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("BEGIN IMMEDIATE")
                for stmt in self.schema.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute("COMMIT")
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

    def read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """The rows of one query, outside a transaction."""
        with self.lock:
            return self.connection().execute(sql, args).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed, or rolled back on any error."""
        with self.lock:
            db = self.connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # already rolled back (disk full)
                    db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self.lock:
            if self._db is not None:
                self._db.close()
                self._db = None
