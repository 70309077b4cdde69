"""Warm-up counts shared by the node's workers: one small SQLite database in
``data_dir`` (``warmup.sqlite``, WAL), apart from the spool so that a spool
batch never holds up a pick.

Exactness across workers: a message is *taken* under the cap at pick time in
one ``BEGIN IMMEDIATE`` transaction (read the day's count, compare, add), so
two workers cannot both take the last slot; a take whose attempt does not
happen is *given back*. The day's step decision (:func:`smtplb.reputation.warmup.roll`)
is written in the same transaction, so exactly one worker logs it.

:class:`WarmupState` is the contract; :class:`SqliteWarmupState` the embedded
backend (a Redis one, for a cluster, implements the same methods with a Lua
check-and-take).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from smtplb.reputation.shared_db import SharedDb
from smtplb.reputation.warmup import (
    OUTCOME_KINDS,
    DayOutcomes,
    Decision,
    Progress,
    Status,
    WarmupPolicy,
    day_index,
    hour_index,
    initial_step,
    roll,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS warmup_progress (
    member TEXT NOT NULL, provider TEXT NOT NULL,
    step INTEGER NOT NULL, decided_day INTEGER NOT NULL, last_sent REAL NOT NULL,
    PRIMARY KEY (member, provider)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS warmup_day (
    member TEXT NOT NULL, provider TEXT NOT NULL, day INTEGER NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0, delivered INTEGER NOT NULL DEFAULT 0,
    deferred INTEGER NOT NULL DEFAULT 0, bounced INTEGER NOT NULL DEFAULT 0,
    policy_blocked INTEGER NOT NULL DEFAULT 0, complained INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (member, provider, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS warmup_hour (
    member TEXT NOT NULL, provider TEXT NOT NULL, hour INTEGER NOT NULL,
    sent INTEGER NOT NULL,
    PRIMARY KEY (member, provider, hour)
) WITHOUT ROWID;
"""

KEEP_DAYS = 40  # outcome rows kept (the idle restart looks back 30 days)


class WarmupState(Protocol):
    policy: WarmupPolicy  # a reload replaces them
    starts: dict[str, int | None]  # the members in warm-up and their start day

    def status(self, member: str, provider: str, now: float) -> Status:
        """Where ``member`` stands for ``provider`` at ``now`` (no write)."""
        ...

    def take(
        self, member: str, provider: str, n: int, now: float
    ) -> tuple[str | None, list[Decision]]:
        """Take ``n`` messages under the cap, atomically: (None, decisions) when
        taken, (the skip reason, decisions) when over the cap."""
        ...

    def give_back(self, member: str, provider: str, n: int, now: float) -> None:
        """``n`` taken messages were not sent after all."""
        ...

    def record(self, member: str, provider: str, counts: Mapping[str, int], now: float) -> None:
        """Outcomes (``delivered``, ``deferred``, ``bounced``, ``policy_blocked``,
        ``complained``) of messages sent today."""
        ...

    def providers(self, member: str) -> list[str]:
        """The providers ``member`` has warm-up progress for."""
        ...

    def close(self) -> None: ...


class SqliteWarmupState:
    """The embedded backend: one database file shared by the node's workers."""

    def __init__(
        self,
        path: Path | str,
        policy: WarmupPolicy,
        starts: Mapping[str, int | None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.policy = policy
        # Members in warm-up and their configured start day (None: first use).
        self.starts: dict[str, int | None] = dict(starts or {})
        self.db = SharedDb(path, _SCHEMA)

    def __repr__(self) -> str:
        return f"SqliteWarmupState({self.path}, {len(self.starts)} members warming)"

    def close(self) -> None:
        self.db.close()

    # -- reads ---------------------------------------------------------------------

    def _progress(self, db: sqlite3.Connection, member: str, provider: str) -> Progress | None:
        row = db.execute(
            "SELECT step, decided_day, last_sent FROM warmup_progress"
            " WHERE member = ? AND provider = ?",
            (member, provider),
        ).fetchone()
        return None if row is None else Progress(int(row[0]), int(row[1]), float(row[2]))

    def _day(self, db: sqlite3.Connection, member: str, provider: str, day: int) -> DayOutcomes:
        row = db.execute(
            "SELECT sent, delivered, deferred, bounced, policy_blocked, complained"
            " FROM warmup_day WHERE member = ? AND provider = ? AND day = ?",
            (member, provider, day),
        ).fetchone()
        return DayOutcomes() if row is None else DayOutcomes(*(int(v) for v in row))

    def _hour(self, db: sqlite3.Connection, member: str, provider: str, hour: int) -> int:
        row = db.execute(
            "SELECT sent FROM warmup_hour WHERE member = ? AND provider = ? AND hour = ?",
            (member, provider, hour),
        ).fetchone()
        return 0 if row is None else int(row[0])

    def _current(
        self, db: sqlite3.Connection, member: str, provider: str, now: float
    ) -> tuple[Progress, Decision | None, bool]:
        """Today's progress (rolled forward, not written), its decision, and
        whether anything changed since it was stored."""
        today = day_index(now)
        stored = self._progress(db, member, provider)
        if stored is None:
            step = initial_step(self.starts.get(member), today)
            return Progress(step, today, 0.0), None, True
        last = self._day(db, member, provider, stored.decided_day)
        rolled, decision = roll(stored, today, now, last, self.policy, member, provider)
        return rolled, decision, rolled != stored

    def _status(self, db: sqlite3.Connection, member: str, provider: str, now: float) -> Status:
        progress, _, _ = self._current(db, member, provider, now)
        return self._status_for(db, progress, member, provider, now)

    def status(self, member: str, provider: str, now: float) -> Status:
        with self.db.lock:
            return self._status(self.db.connection(), member, provider, now)

    def providers(self, member: str) -> list[str]:
        rows = self.db.read(
            "SELECT provider FROM warmup_progress WHERE member = ? ORDER BY provider", (member,)
        )
        return [str(r[0]) for r in rows]

    # -- writes --------------------------------------------------------------------

    def take(
        self, member: str, provider: str, n: int, now: float
    ) -> tuple[str | None, list[Decision]]:
        decisions: list[Decision] = []
        with self.db.transaction() as db:
            progress, decision, changed = self._current(db, member, provider, now)
            if decision is not None:
                decisions.append(decision)
            status = self._status_for(db, progress, member, provider, now)
            reason = status.skip_reason(n)
            if reason is None:
                progress = replace(progress, last_sent=now)
                changed = True
                self._add(db, member, provider, now, "sent", n)
                db.execute(
                    "INSERT INTO warmup_hour (member, provider, hour, sent) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT DO UPDATE SET sent = sent + excluded.sent",
                    (member, provider, hour_index(now), n),
                )
            if changed:
                self._save(db, member, provider, progress)
                if decision is not None:
                    self._prune(db, day_index(now))
        return reason, decisions

    def _status_for(
        self, db: sqlite3.Connection, progress: Progress, member: str, provider: str, now: float
    ) -> Status:
        cap = self.policy.cap(progress.step)
        sent = self._day(db, member, provider, day_index(now)).sent
        hour_sent = self._hour(db, member, provider, hour_index(now))
        hourly = None if cap is None else self.policy.hourly_cap(cap)
        return Status(provider, progress.step + 1, cap, sent, hourly, hour_sent)

    def give_back(self, member: str, provider: str, n: int, now: float) -> None:
        with self.db.transaction() as db:
            self._add(db, member, provider, now, "sent", -n)
            db.execute(
                "UPDATE warmup_hour SET sent = max(0, sent - ?)"
                " WHERE member = ? AND provider = ? AND hour = ?",
                (n, member, provider, hour_index(now)),
            )

    def record(self, member: str, provider: str, counts: Mapping[str, int], now: float) -> None:
        with self.db.transaction() as db:
            for kind, n in counts.items():
                if kind not in OUTCOME_KINDS:
                    raise ValueError(f"unknown warm-up outcome {kind!r}")
                if n:
                    self._add(db, member, provider, now, kind, n)

    def _add(
        self, db: sqlite3.Connection, member: str, provider: str, now: float, col: str, n: int
    ) -> None:
        # `col` is one of the fixed column names (checked by the callers).
        db.execute(
            f"INSERT INTO warmup_day (member, provider, day, {col}) VALUES (?, ?, ?, max(0, ?))"
            f" ON CONFLICT DO UPDATE SET {col} = max(0, {col} + ?)",
            (member, provider, day_index(now), n, n),
        )

    def _save(self, db: sqlite3.Connection, member: str, provider: str, p: Progress) -> None:
        db.execute(
            "INSERT INTO warmup_progress (member, provider, step, decided_day, last_sent)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET step = excluded.step,"
            " decided_day = excluded.decided_day, last_sent = excluded.last_sent",
            (member, provider, p.step, p.decided_day, p.last_sent),
        )

    def _prune(self, db: sqlite3.Connection, today: int) -> None:
        db.execute("DELETE FROM warmup_day WHERE day < ?", (today - KEEP_DAYS,))
        db.execute("DELETE FROM warmup_hour WHERE hour < ?", ((today - 1) * 24,))
