"""Durable, exact experiment counts: one SQLite file beside the spool shards.

Why a file of its own and not a table in each spool shard: with ``workers =
N`` every worker has its own spool shard, but an experiment's counts must be
one sum, and a stop (by the guardrail in one worker, or by ``smtplb experiment
stop``) must reach every worker. One WAL-mode file that every worker writes
with short transactions (SQLite's own locking, ``busy_timeout``) is exact
without a merge step and survives restarts; a stopped experiment's rows stay,
so its report stays available. With a cluster, Redis takes this role
(:class:`CounterStore`, ``smtplb.cluster.experiments``).

Every finished recipient of an experiment's message is one row of
``experiment_results``, in arrival order: the report's sequential p-values
are computed over that order, as if an operator had looked after every
message (the most frequent peeking there is).

All methods are blocking; the service calls them from a thread
(``asyncio.to_thread``), a batch at a time.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

OUTCOMES = ("delivered", "bounced", "policy_block", "expired", "complaint")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiment_results (
    id INTEGER PRIMARY KEY,
    experiment TEXT NOT NULL,
    variant TEXT NOT NULL,
    provider TEXT NOT NULL,
    outcome TEXT NOT NULL,          -- delivered | bounced | policy_block | expired | complaint
    deferred_ever INTEGER NOT NULL, -- deferred at least once before this outcome
    time_to_deliver REAL,           -- seconds from acceptance to delivery
    latency REAL,                   -- seconds of the last upstream transaction
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS experiment_results_by_experiment
    ON experiment_results (experiment, variant, id);
-- running totals kept in the same transaction: the guardrail reads them after
-- every batch without scanning the results
CREATE TABLE IF NOT EXISTS experiment_counts (
    experiment TEXT NOT NULL,
    variant TEXT NOT NULL,
    outcome TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (experiment, variant, outcome)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS experiment_runs (
    experiment TEXT PRIMARY KEY,
    running INTEGER NOT NULL,
    changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS experiment_stops (
    experiment TEXT NOT NULL,
    variant TEXT NOT NULL,
    stopped_at REAL NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (experiment, variant)
);
CREATE TABLE IF NOT EXISTS experiment_events (
    id INTEGER PRIMARY KEY,
    experiment TEXT NOT NULL,
    variant TEXT,
    event TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Observation:
    """One finished recipient (or one complaint) of an experiment's message."""

    experiment: str
    variant: str
    provider: str
    outcome: str  # one of OUTCOMES
    deferred_ever: bool = False
    time_to_deliver: float | None = None
    latency: float | None = None
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class Row:
    variant: str
    provider: str
    outcome: str
    deferred_ever: bool
    time_to_deliver: float | None
    latency: float | None
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class Event:
    experiment: str
    variant: str | None
    event: str  # started | stopped | variant_stopped
    detail: str
    at: float


class StoreError(Exception):
    """A store that cannot answer now (a non-SQLite backend's own errors, wrapped)."""


# What a store raises when it cannot answer: the runtime keeps going and asks again.
STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, StoreError)


class CounterStore(Protocol):
    """The experiments' shared state (:class:`ExperimentStore`, or Redis for a cluster:
    ``smtplb.cluster.experiments.RedisExperimentStore``). Blocking: called in a thread."""

    def add(self, observations: Iterable[Observation]) -> int: ...

    def rows(self, experiment: str) -> list[Row]: ...

    def counts(self, experiment: str) -> dict[tuple[str, str], int]: ...

    def running(self, experiment: str, default: bool = True) -> bool: ...

    def set_running(self, experiment: str, running: bool, at: float, detail: str = "") -> None: ...

    def stopped_variants(self, experiment: str) -> dict[str, tuple[float, str]]: ...

    def stop_variant(self, experiment: str, variant: str, at: float, reason: str) -> bool: ...

    def events(self, experiment: str) -> list[Event]: ...

    def close(self) -> None: ...


class ExperimentStore:
    """The experiments' durable state: results, run state, stopped variants, events."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # A full disk must not keep the node from starting (the spool starts and
        # answers 451): the file is opened again at the next use.
        with contextlib.suppress(sqlite3.Error), self._lock:
            self._open()

    @property
    def _db(self) -> sqlite3.Connection:
        return self._open()

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def add(self, observations: Iterable[Observation]) -> int:
        rows = [
            (
                o.experiment,
                o.variant,
                o.provider,
                o.outcome,
                int(o.deferred_ever),
                o.time_to_deliver,
                o.latency,
                o.at,
            )
            for o in observations
        ]
        if not rows:
            return 0
        totals = Counter((r[0], r[1], r[3]) for r in rows)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO experiment_results (experiment, variant, provider, outcome,"
                    " deferred_ever, time_to_deliver, latency, at) VALUES (?,?,?,?,?,?,?,?)",
                    rows,
                )
                self._db.executemany(
                    "INSERT INTO experiment_counts (experiment, variant, outcome, n)"
                    " VALUES (?,?,?,?) ON CONFLICT (experiment, variant, outcome)"
                    " DO UPDATE SET n = n + excluded.n",
                    [(*key, n) for key, n in totals.items()],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return len(rows)

    def rows(self, experiment: str) -> list[Row]:
        """Every result of ``experiment`` in arrival order."""
        with self._lock:
            cur = self._db.execute(
                "SELECT variant, provider, outcome, deferred_ever, time_to_deliver, latency, at"
                " FROM experiment_results WHERE experiment = ? ORDER BY id",
                (experiment,),
            )
            return [Row(v, p, o, bool(d), t, lat, at) for v, p, o, d, t, lat, at in cur]

    def counts(self, experiment: str) -> dict[tuple[str, str], int]:
        """(variant, outcome) → rows, from the running totals (no scan)."""
        with self._lock:
            cur = self._db.execute(
                "SELECT variant, outcome, n FROM experiment_counts WHERE experiment = ?",
                (experiment,),
            )
            return {(v, o): n for v, o, n in cur}

    # -- run state ---------------------------------------------------------------

    def running(self, experiment: str, default: bool = True) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT running FROM experiment_runs WHERE experiment = ?", (experiment,)
            ).fetchone()
        return default if row is None else bool(row[0])

    def set_running(self, experiment: str, running: bool, at: float, detail: str = "") -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO experiment_runs (experiment, running, changed_at) VALUES (?,?,?)"
                " ON CONFLICT (experiment) DO UPDATE SET running = excluded.running,"
                " changed_at = excluded.changed_at",
                (experiment, int(running), at),
            )
            if running:  # a restart gives the stopped variants their traffic back
                self._db.execute("DELETE FROM experiment_stops WHERE experiment = ?", (experiment,))
            self._insert_event(
                Event(experiment, None, "started" if running else "stopped", detail, at)
            )
            self._db.execute("COMMIT")

    def stopped_variants(self, experiment: str) -> dict[str, tuple[float, str]]:
        with self._lock:
            cur = self._db.execute(
                "SELECT variant, stopped_at, reason FROM experiment_stops WHERE experiment = ?",
                (experiment,),
            )
            return {v: (at, reason) for v, at, reason in cur}

    def stop_variant(self, experiment: str, variant: str, at: float, reason: str) -> bool:
        """Stop one variant (its traffic returns to control); False if it already was."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute(
                "INSERT OR IGNORE INTO experiment_stops (experiment, variant, stopped_at, reason)"
                " VALUES (?,?,?,?)",
                (experiment, variant, at, reason),
            )
            new = cur.rowcount > 0
            if new:
                self._insert_event(Event(experiment, variant, "variant_stopped", reason, at))
            self._db.execute("COMMIT")
        return new

    def events(self, experiment: str) -> list[Event]:
        with self._lock:
            cur = self._db.execute(
                "SELECT experiment, variant, event, detail, at FROM experiment_events"
                " WHERE experiment = ? ORDER BY id",
                (experiment,),
            )
            return [Event(*row) for row in cur]

    def _insert_event(self, e: Event) -> None:
        self._db.execute(
            "INSERT INTO experiment_events (experiment, variant, event, detail, at)"
            " VALUES (?,?,?,?,?)",
            (e.experiment, e.variant, e.event, e.detail, e.at),
        )

    def __repr__(self) -> str:
        return f"ExperimentStore({self.path.name})"
