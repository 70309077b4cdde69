"""IP warm-up (SPEC §2.4): schedules of caps per member × provider, and the
closed loop that moves a member along its schedule. Pure decisions, no I/O.

Theory of operation. A warming member has, for each mailbox provider, a
*step*: an index into the schedule (step 0 is "day 1"). The cap for a calendar
day (UTC) is ``schedule[step]`` messages to that provider, and at most
``max_hourly_share`` of it in one hour. A member whose step is past the end of
the schedule is warm: no cap. Each provider counts separately (warm for Gmail,
still new for Yahoo); unknown providers share the ``other`` bucket.

The step moves once a day, when the first message of a new day is taken
(:func:`roll`), from the outcomes of the member's last day of traffic for that
provider (:func:`decide`): every rate under its *hold* threshold advances a
step; a rate at or over its hold threshold keeps the step; a rate at or over its
*step-back* threshold moves one step back. A day with no traffic decides
nothing, and a member idle for ``idle_restart`` (30 days) starts again at day 1.
Every decision comes back as a :class:`Decision` with the rates that decided
it, which the caller writes to the delivery log (``warmup_advanced``,
``warmup_held``, ``warmup_stepped_back``).

The counts live in :mod:`smtplb.reputation.warmup_store`, shared by the node's
workers; this module only computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from smtplb.reputation.book import provider_of as book_provider_of

DAY = 86400.0
HOUR = 3600.0
# A cluster backend's member whose lease of the cap is on its way (Status.wait): it
# waits (a WAIT filter), it is not excluded.
LEASE_WAIT = "waiting for a warm-up lease"
LEASE_RETRY = 1.0  # a job deferred for it anyway is due again this soon
AWAY_SHARE = "local share of the warm-up cap while Redis is away"
AWAY_RETRY = 5.0  # … for a local share used while Redis is away
OTHER = "other"
IDLE_RESTART_DAYS = 30


def default_schedule(start: int = 50, factor: float = 1.4, top: int = 100_000) -> tuple[int, ...]:
    """×``factor`` a day from ``start`` up to ``top`` (the SendGrid/Mailgun shape)."""
    caps = [start]
    while caps[-1] < top:
        caps.append(min(top, max(caps[-1] + 1, round(caps[-1] * factor))))
    return tuple(caps)


DEFAULT_SCHEDULE = default_schedule()


def day_index(ts: float) -> int:
    """The UTC calendar day of a Unix time, as days since 1970-01-01."""
    return int(ts // DAY)


def hour_index(ts: float) -> int:
    return int(ts // HOUR)


def provider_of(domain: str, known: str = "") -> str:
    """The warm-up bucket of a recipient domain: the recognised provider
    (``known``) when there is one, else reputation's stand-in by domain name
    (:func:`smtplb.reputation.book.provider_of`, ``other`` when unknown): one
    table for reputation and warm-up until recognition by MX lands."""
    return known or book_provider_of(domain.rstrip("."))


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Rates of one day that hold the step (``*_hold``) or step it back (``*_back``).
    The defaults follow the reputation thresholds (SPEC §3.4): throttle-level
    rates hold, quarantine-level rates step back."""

    deferral_hold: float = 0.02
    deferral_back: float = 0.10
    policy_block_hold: float = 0.01
    policy_block_back: float = 0.05
    bounce_hold: float = 0.05
    bounce_back: float = 0.10
    complaint_hold: float = 0.001
    complaint_back: float = 0.003


@dataclass(frozen=True, slots=True)
class WarmupPolicy:
    schedule: tuple[int, ...] = DEFAULT_SCHEDULE
    max_hourly_share: float = 0.2
    thresholds: Thresholds = Thresholds()
    idle_restart: float = IDLE_RESTART_DAYS * DAY

    def cap(self, step: int) -> int | None:
        """The day's cap at ``step``; None: warm (past the schedule's end)."""
        return self.schedule[step] if 0 <= step < len(self.schedule) else None

    def hourly_cap(self, cap: int) -> int:
        return max(1, math.ceil(cap * self.max_hourly_share - 1e-9))


@dataclass(frozen=True, slots=True)
class DayOutcomes:
    """What one member sent one provider on one day, by outcome (per recipient)."""

    sent: int = 0  # taken under the cap
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    policy_blocked: int = 0
    complained: int = 0

    @property
    def answered(self) -> int:
        return self.delivered + self.deferred + self.bounced + self.policy_blocked

    def rates(self) -> dict[str, float]:
        n = self.answered
        if n == 0:
            return {"deferral": 0.0, "policy_block": 0.0, "bounce": 0.0, "complaint": 0.0}
        return {
            "deferral": self.deferred / n,
            "policy_block": self.policy_blocked / n,
            "bounce": self.bounced / n,
            "complaint": self.complained / max(1, self.delivered),
        }


OUTCOME_KINDS = ("delivered", "deferred", "bounced", "policy_blocked", "complained")


def outcome_kind(code: int, enhanced: str | None) -> str:
    """A reply's outcome for the warm-up rates: 5.7.x is a policy block (it counts
    against the sending IP), other 5xx a bounce, 4xx a deferral."""
    if 200 <= code < 300:
        return "delivered"
    if code >= 500:
        return "policy_blocked" if (enhanced or "").startswith("5.7.") else "bounced"
    return "deferred"


@dataclass(frozen=True, slots=True)
class Decision:
    """One step decision for a member × provider, for the delivery log."""

    event: str  # warmup_advanced | warmup_held | warmup_stepped_back
    member: str
    provider: str
    day: int  # the day (step + 1) after the decision
    previous_day: int
    reason: str
    rates: dict[str, float]

    def text(self) -> str:
        rates = ", ".join(f"{k} {v:.1%}" for k, v in self.rates.items())
        return f"{self.provider}: day {self.previous_day} → {self.day} ({self.reason})" + (
            f"; {rates}" if rates else ""
        )


def decide(step: int, day: DayOutcomes, t: Thresholds) -> tuple[str, int, str]:
    """(event, new step, reason) after a day of traffic with outcomes ``day``."""
    r = day.rates()
    limits = (
        ("deferral", t.deferral_hold, t.deferral_back),
        ("policy_block", t.policy_block_hold, t.policy_block_back),
        ("bounce", t.bounce_hold, t.bounce_back),
        ("complaint", t.complaint_hold, t.complaint_back),
    )
    for name, _, back in limits:
        if r[name] >= back:
            return "warmup_stepped_back", max(0, step - 1), f"{name} rate at or over {back:.1%}"
    for name, hold, _ in limits:
        if r[name] >= hold:
            return "warmup_held", step, f"{name} rate at or over {hold:.1%}"
    return "warmup_advanced", step + 1, "rates under their thresholds"


@dataclass(frozen=True, slots=True)
class Progress:
    """A member × provider's place in warm-up, as stored."""

    step: int
    decided_day: int  # the calendar day (day_index) the step is for
    last_sent: float  # Unix time of the last message taken; 0: none yet


def roll(
    progress: Progress,
    today: int,
    now: float,
    last_day: DayOutcomes | None,
    policy: WarmupPolicy,
    member: str,
    provider: str,
) -> tuple[Progress, Decision | None]:
    """The step for ``today``: ``progress`` as stored (the step of an earlier day,
    ``progress.decided_day``, whose outcomes are ``last_day``), moved by that
    day's decision."""
    if progress.decided_day >= today:
        return progress, None
    step = progress.step
    if progress.last_sent and now - progress.last_sent >= policy.idle_restart:
        # Idle too long: the receiver has forgotten the IP; the last day's
        # outcomes are stale and decide nothing.
        idle = int((now - progress.last_sent) // DAY)
        new = replace(progress, step=0, decided_day=today)
        if step == 0:
            return new, None
        return new, Decision(
            "warmup_stepped_back", member, provider, 1, step + 1, f"idle for {idle} days", {}
        )
    if last_day is None or last_day.answered == 0 or policy.cap(step) is None:
        return replace(progress, decided_day=today), None
    event, new_step, reason = decide(step, last_day, policy.thresholds)
    rates = {k: round(v, 4) for k, v in last_day.rates().items()}
    decision = Decision(event, member, provider, new_step + 1, step + 1, reason, rates)
    return Progress(new_step, today, progress.last_sent), decision


@dataclass(frozen=True, slots=True)
class Status:
    """What the eligibility filter, the API and the metrics show for a member × provider."""

    provider: str
    day: int  # step + 1
    cap: int | None  # None: warm
    sent: int  # taken today
    hourly_cap: int | None
    hour_sent: int
    # Why the member waits although the counts allow it (a cluster backend waiting
    # for its lease, or its local share used while Redis is away); None: it does not.
    wait: str | None = None

    @property
    def warm(self) -> bool:
        return self.cap is None

    def skip_reason(self, n: int = 1) -> str | None:
        """Why the member may not take ``n`` more messages for this provider now."""
        if self.wait is not None:
            return self.wait
        if self.cap is None:
            return None
        if self.sent + n > self.cap:
            return f"warm-up cap {self.sent}/{self.cap} for {self.provider} (day {self.day})"
        if self.hourly_cap is not None and self.hour_sent + n > self.hourly_cap:
            return (
                f"warm-up hourly cap {self.hour_sent}/{self.hourly_cap} for {self.provider}"
                f" (day {self.day})"
            )
        return None

    def view(self) -> dict[str, int | None]:
        return {"day": self.day, "cap": self.cap, "sent": self.sent}


def initial_step(start_day: int | None, today: int) -> int:
    """The step of a member × provider seen for the first time: from a configured
    ``warmup_start`` (a day index), days since then; by default day 1."""
    return 0 if start_day is None else max(0, today - start_day)


def plan(
    policy: WarmupPolicy, step: int, today: int, days: int | None = None
) -> list[tuple[int, int, int | None]]:
    """Projected (calendar day, warm-up day, cap) from ``today`` while rates stay clean."""
    out: list[tuple[int, int, int | None]] = []
    remaining = len(policy.schedule) - step if days is None else days
    for i in range(max(1, remaining + (1 if days is None else 0))):
        s = step + i
        out.append((today + i, s + 1, policy.cap(s)))
    return out


@dataclass(slots=True)
class SimulatedBucket:
    progress: Progress
    outcomes: dict[int, DayOutcomes]
    hours: dict[int, int]


@dataclass(slots=True)
class SimulationResult:
    """A replayed log: per member × provider, what the schedule would have let through."""

    sent: dict[tuple[str, str], int]
    held: dict[tuple[str, str], int]  # over the cap: would have overflowed or waited
    decisions: list[Decision]
    days: dict[tuple[str, str], int]  # the warm-up day reached at the end


def simulate(
    events: Sequence[tuple[float, str, str, str, int, str]],
    policy: WarmupPolicy,
    members: Sequence[str] | None = None,
) -> SimulationResult:
    """Replay (ts, member, provider, event, code, enhanced) delivery-log events
    (``delivered``/``deferred``/``bounced`` after an attempt) through the schedule
    as if each member had started warm-up at its first message in the log."""
    buckets: dict[tuple[str, str], SimulatedBucket] = {}
    result = SimulationResult({}, {}, [], {})
    for ts, member, provider, _event, code, enhanced in sorted(events, key=lambda e: e[0]):
        if members is not None and member not in members:
            continue
        key = (member, provider)
        today = day_index(ts)
        b = buckets.get(key)
        if b is None:
            b = buckets[key] = SimulatedBucket(Progress(0, today, 0.0), {}, {})
        last = b.outcomes.get(b.progress.decided_day)
        b.progress, decision = roll(b.progress, today, ts, last, policy, member, provider)
        if decision is not None:
            result.decisions.append(decision)
        cap = policy.cap(b.progress.step)
        day = b.outcomes.get(today, DayOutcomes())
        hour = hour_index(ts)
        if cap is not None and (day.sent >= cap or b.hours.get(hour, 0) >= policy.hourly_cap(cap)):
            result.held[key] = result.held.get(key, 0) + 1
            continue
        kind = outcome_kind(code, enhanced)
        b.hours[hour] = b.hours.get(hour, 0) + 1
        fields = {"sent": day.sent + 1, kind: getattr(day, kind) + 1}
        b.outcomes[today] = replace(day, **fields)
        b.progress = replace(b.progress, last_sent=ts)
        result.sent[key] = result.sent.get(key, 0) + 1
    result.days = {k: b.progress.step + 1 for k, b in buckets.items()}
    return result
