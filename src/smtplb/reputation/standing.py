"""Reputation of a member and of a member × provider: rolling counts, rates,
and the state they lead to (SPEC §2.4). Pure: no I/O, time is an argument.

Theory of operation. Every finished attempt of a member adds one outcome
(delivered, deferred, hard bounce, policy block; complaints come later, from
feedback) to the counts of (member, provider), kept in buckets of 1/24 of
``[reputation] window`` so old outcomes fall out of the window. From the counts
come rates — hard bounces, policy blocks and deferrals per attempt, complaints
per delivered message — and :func:`next_standing` turns them into a state:

    ok ──(throttle threshold)──▶ throttled ──(below again)──▶ ok
    ok / throttled / probation ──(quarantine threshold)──▶ quarantined
    quarantined ──(after `quarantine`)──▶ probation ──(`probation` attempts)──▶ ok
    probation ──(any threshold)──▶ quarantined

No decision is taken on fewer than ``min_volume`` attempts (a tenth of it on
probation). The counts of a (member, provider) start again when it leaves
quarantine: probation judges the member on what it does after the cool-down,
not on what sent it there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from smtplb.config import ReputationConfig

__all__ = [
    "Counts",
    "Outcome",
    "Reputation",
    "Standing",
    "Thresholds",
    "next_standing",
]


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    HARD = "hard_bounce"
    POLICY = "policy_block"
    BOUNCED = "bounced"  # other permanent failures: an attempt, no judgement
    COMPLAINT = "complaint"


class Reputation(enum.Enum):
    OK = "ok"
    THROTTLED = "throttled"
    QUARANTINED = "quarantined"
    PROBATION = "probation"


@dataclass(frozen=True, slots=True)
class Thresholds:
    min_volume: int = 50
    hard_bounce_throttle: float = 0.05
    hard_bounce_quarantine: float = 0.10
    complaint_throttle: float = 0.001
    complaint_quarantine: float = 0.003
    policy_block_quarantine: float = 0.05
    quarantine: float = 6 * 3600.0
    probation: int = 100

    @classmethod
    def from_config(cls, c: ReputationConfig) -> Thresholds:
        return cls(
            c.min_volume,
            c.hard_bounce_throttle,
            c.hard_bounce_quarantine,
            c.complaint_throttle,
            c.complaint_quarantine,
            c.policy_block_quarantine,
            float(c.quarantine),
            c.probation,
        )


@dataclass(slots=True)
class Counts:
    delivered: int = 0
    deferred: int = 0
    hard_bounce: int = 0
    policy_block: int = 0
    bounced: int = 0
    complaint: int = 0

    def add(self, outcome: Outcome, n: int = 1) -> None:
        name = outcome.value
        setattr(self, name, getattr(self, name) + n)

    def merge(self, other: Counts) -> None:
        for outcome in Outcome:
            self.add(outcome, getattr(other, outcome.value))

    def subtract(self, other: Counts) -> None:
        for outcome in Outcome:
            self.add(outcome, -getattr(other, outcome.value))

    @property
    def attempts(self) -> int:
        return self.delivered + self.deferred + self.hard_bounce + self.policy_block + self.bounced

    def rates(self) -> dict[str, float]:
        attempts = max(self.attempts, 1)
        return {
            "hard_bounce": self.hard_bounce / attempts,
            "policy_block": self.policy_block / attempts,
            "deferred": self.deferred / attempts,
            "complaint": self.complaint / max(self.delivered, 1),
        }


@dataclass(frozen=True, slots=True)
class Standing:
    state: Reputation = Reputation.OK
    since: float = 0.0
    until: float = 0.0  # quarantined: when probation starts
    probation_left: int = 0  # probation: attempts still to make before "ok"
    reason: str = ""


def breach(
    counts: Counts, t: Thresholds, *, on_probation: bool = False
) -> tuple[Reputation, str] | None:
    """The worst threshold ``counts`` cross, with why; None below them all (or on too
    little volume: ``min_volume``, a tenth of it on probation, where a member sends
    a tenth of its share and its counts started again)."""
    volume = max(1, t.min_volume // 10) if on_probation else t.min_volume
    if counts.attempts < volume:
        return None
    r = counts.rates()
    checks = (
        ("policy_block", r["policy_block"], t.policy_block_quarantine, Reputation.QUARANTINED),
        ("hard_bounce", r["hard_bounce"], t.hard_bounce_quarantine, Reputation.QUARANTINED),
        ("complaint", r["complaint"], t.complaint_quarantine, Reputation.QUARANTINED),
        ("hard_bounce", r["hard_bounce"], t.hard_bounce_throttle, Reputation.THROTTLED),
        ("complaint", r["complaint"], t.complaint_throttle, Reputation.THROTTLED),
    )
    for name, rate, limit, state in checks:
        if rate >= limit:
            return state, f"{name} rate {rate:.1%} >= {limit:.1%} over {counts.attempts} attempts"
    return None


def next_standing(s: Standing, counts: Counts, t: Thresholds, now: float) -> Standing:
    """The state after the latest outcome (or the passing of time) at ``now``."""
    if s.state is Reputation.QUARANTINED:
        if now >= s.until:
            return Standing(Reputation.PROBATION, now, 0.0, t.probation, "cool-down over")
        return s
    found = breach(counts, t, on_probation=s.state is Reputation.PROBATION)
    if s.state is Reputation.PROBATION:
        if found is not None:
            return Standing(Reputation.QUARANTINED, now, now + t.quarantine, 0, found[1])
        if s.probation_left <= 0:
            return Standing(Reputation.OK, now, reason="probation passed")
        return s
    if found is None:
        if s.state is Reputation.THROTTLED:
            return Standing(Reputation.OK, now, reason="rates below the thresholds")
        return s
    state, why = found
    if state is Reputation.QUARANTINED:
        return Standing(Reputation.QUARANTINED, now, now + t.quarantine, 0, why)
    if s.state is not Reputation.THROTTLED:
        return Standing(Reputation.THROTTLED, now, reason=why)
    return s


def after_attempt(s: Standing) -> Standing:
    """One more attempt made on probation."""
    if s.state is Reputation.PROBATION and s.probation_left > 0:
        return replace(s, probation_left=s.probation_left - 1)
    return s


# Share of a strategy's weight by state (quarantined members are excluded instead).
SHARE: dict[Reputation, float] = {
    Reputation.OK: 1.0,
    Reputation.THROTTLED: 0.5,
    Reputation.PROBATION: 0.1,
    Reputation.QUARANTINED: 0.0,
}


@dataclass(slots=True)
class Window:
    """Counts in ``buckets`` slices of ``length`` seconds; the oldest fall out. The
    total is kept as slices come and go, so reading it costs no summing."""

    length: float
    buckets: int = 24
    slices: dict[int, Counts] = field(default_factory=dict)
    running: Counts = field(default_factory=Counts)

    def _slice(self, now: float) -> int:
        return int(now // (self.length / self.buckets))

    def add(self, outcome: Outcome, now: float, n: int = 1) -> None:
        key = self._slice(now)
        counts = self.slices.get(key)
        if counts is None:
            self._expire(key)
            counts = self.slices[key] = Counts()
        counts.add(outcome, n)
        self.running.add(outcome, n)

    def _expire(self, current: int) -> None:
        oldest = current - self.buckets
        for key in [k for k in self.slices if k <= oldest]:
            self.running.subtract(self.slices.pop(key))

    def total(self, now: float) -> Counts:
        """The counts of the last ``length`` seconds at ``now`` (do not change them)."""
        self._expire(self._slice(now))
        return self.running

    def load(self, slices: dict[int, Counts]) -> None:
        self.slices = slices
        self.running = Counts()
        for counts in slices.values():
            self.running.merge(counts)

    def clear(self) -> None:
        self.slices.clear()
        self.running = Counts()
