"""Complaint-budget counts shared by the node's workers: one small SQLite database in
``data_dir`` (``complaints.sqlite``, WAL), like ``warmup.sqlite``.

Per sender domain and time bucket: recipients delivered of its marketing and bulk mail,
and complaints about it. Complaints arrive at worker 0 (the API and the feedback
address), deliveries at every worker: each writes its own counts, all read the sums,
and a restart keeps them. Per domain also: the last state decided (so that exactly one
worker logs a change) and an operator's lift.

:class:`BudgetStore` is the contract; :class:`SqliteBudgetStore` the embedded backend
(a Redis one, for a cluster, implements the same methods).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from smtplb.reputation.shared_db import SharedDb

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_bucket (
    domain TEXT NOT NULL, bucket INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0, complaints INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (domain, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS budget_domain (
    domain TEXT PRIMARY KEY, state TEXT NOT NULL DEFAULT 'ok',
    lifted_until REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""


class BudgetStore(Protocol):
    def add(self, counts: Mapping[str, tuple[int, int]], bucket: int) -> None:
        """Add (delivered, complaints) per domain to ``bucket``."""
        ...

    def counts(self, since: int) -> dict[str, tuple[int, int]]:
        """(delivered, complaints) per domain, summed over the buckets from ``since`` on."""
        ...

    def swap_state(self, domain: str, state: str) -> str:
        """Store ``state`` as the domain's; the one stored before ("ok" if none)."""
        ...

    def lift(self, domain: str, until: float) -> None:
        """An operator lets the domain's mail go until ``until`` (wall time; 0 ends it)."""
        ...

    def lifts(self) -> dict[str, float]:
        """The domains with a lift and its end (ended ones may be included)."""
        ...

    def prune(self, before: int) -> None:
        """Forget the buckets before ``before``."""
        ...

    def close(self) -> None: ...


class SqliteBudgetStore:
    """The embedded backend: one database file shared by the node's workers."""

    def __init__(self, path: Path | str) -> None:
        self.db = SharedDb(path, _SCHEMA)

    def __repr__(self) -> str:
        return f"SqliteBudgetStore({self.db.path.name})"

    def add(self, counts: Mapping[str, tuple[int, int]], bucket: int) -> None:
        with self.db.transaction() as db:
            db.executemany(
                "INSERT INTO budget_bucket (domain, bucket, delivered, complaints)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                " delivered = delivered + excluded.delivered,"
                " complaints = complaints + excluded.complaints",
                [(d, bucket, n, c) for d, (n, c) in counts.items()],
            )

    def counts(self, since: int) -> dict[str, tuple[int, int]]:
        rows = self.db.read(
            "SELECT domain, sum(delivered), sum(complaints) FROM budget_bucket"
            " WHERE bucket >= ? GROUP BY domain",
            (since,),
        )
        return {str(d): (int(str(n)), int(str(c))) for d, n, c in rows}

    def swap_state(self, domain: str, state: str) -> str:
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT state FROM budget_domain WHERE domain = ?", (domain,)
            ).fetchone()
            db.execute(
                "INSERT INTO budget_domain (domain, state) VALUES (?, ?)"
                " ON CONFLICT DO UPDATE SET state = excluded.state",
                (domain, state),
            )
        return "ok" if row is None else str(row[0])

    def lift(self, domain: str, until: float) -> None:
        with self.db.transaction() as db:
            db.execute(
                "INSERT INTO budget_domain (domain, lifted_until) VALUES (?, ?)"
                " ON CONFLICT DO UPDATE SET lifted_until = excluded.lifted_until",
                (domain, until),
            )

    def lifts(self) -> dict[str, float]:
        rows = self.db.read("SELECT domain, lifted_until FROM budget_domain WHERE lifted_until > 0")
        return {str(d): float(str(u)) for d, u in rows}

    def prune(self, before: int) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM budget_bucket WHERE bucket < ?", (before,))

    def close(self) -> None:
        self.db.close()
