"""Traffic shaping per member × provider: rate, connections, suspensions (SPEC §2.4).

Theory of operation. For each (member, provider) pair a :class:`Lane` holds

- a token bucket for the provider's ``rate`` (a small burst; a ``throttle``
  rule halves the rate for its duration, then it comes back in steps);
- the deliveries in progress, bounded by the provider's ``max_connections``
  and by an adaptive window (AIMD, as Postfix's destination concurrency
  feedback): +1 per window's worth of successes, halved on a ``421`` or a
  refused connection; the level that failed becomes a ceiling, probed again
  after a run of successes (twice as long a run after each failed probe);
- a suspension by a response rule (member × provider).

A provider may also be suspended for every member (``suspend_provider``).

The eligibility filters ask :meth:`Shaping.suspended` (the member is excluded:
the job goes to another member or waits in the spool) and :meth:`Shaping.over_limit`
(the member is busy: the job waits in its lane). The dispatcher reports each
start and finish and each reply a rule may match. Times are the injected
clock's monotonic seconds; :meth:`Shaping.wall` turns one into Unix time for
the log. State lives in this object (one per node worker), but for the rate,
which a :class:`RateLimiter` keeps: in this process, or shared by every worker of
every node in Redis (:mod:`smtplb.cluster.rate`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from smtplb.clock import Clock
from smtplb.reputation.rules import ResponseRule, RuleBook, reply_line
from smtplb.routing.providers import OTHER, ProviderTable
from smtplb.smtp.reply import Reply

INITIAL_WINDOW = 5.0  # Postfix's initial_destination_concurrency
# A provider without max_connections (and "other"): no slow start, the member's own
# max_connections rules; the window matters once a 421 has set a ceiling.
OPEN_WINDOW = 100.0
PROBE_AFTER = 50  # successes at the ceiling before one more connection is tried
MAX_PROBE_AFTER = 6400  # a probe that fails doubles the wait before the next one
RESTORE_STEPS = 4  # a throttle comes back in this many steps after it ends
MAX_BURST = 5.0


@dataclass(slots=True)
class Lane:
    """One member's traffic to one provider."""

    active: int = 0
    window: float = INITIAL_WINDOW
    ceiling: int | None = None  # the level a 421 was seen at, minus one
    streak: int = 0  # successes since the last decrease or probe
    probe_after: int = PROBE_AFTER
    suspended_until: float = 0.0
    suspended_rule: str = ""
    throttle_until: float = 0.0
    throttle_length: float = 0.0
    throttle_rule: str = ""
    rate_limited: int = 0  # picks that skipped this member for its rate
    suspensions: int = 0


@dataclass(frozen=True, slots=True)
class Fired:
    """A response rule matched a reply: what it did, for the log and the webhook."""

    rule: ResponseRule
    member: str
    provider: str
    until: float  # monotonic; 0 when the action has no duration
    line: str
    new: bool  # False: already in force (not logged again)


def throttle_factor(lane: Lane, now: float) -> float:
    """1.0, or the share of the rate a throttle leaves at ``now`` (0.5, then steps to 1)."""
    if not lane.throttle_until:
        return 1.0
    if now < lane.throttle_until:
        return 0.5
    step = max(lane.throttle_length / RESTORE_STEPS, 1.0)
    done = int((now - lane.throttle_until) // step) + 1
    return min(1.0, 0.5 + 0.5 * done / RESTORE_STEPS)


def burst(rate: float) -> float:
    """Tokens a bucket holds at most: about two seconds' worth, at least 1, at most 5."""
    return max(1.0, min(MAX_BURST, 2.0 * rate))


class RateLimiter(Protocol):
    """The rate of a member × provider: token buckets in this process
    (:class:`LocalRate`) or shared by every node (``smtplb.cluster.rate.RedisRate``).
    Both answer at once: the hot path never waits for I/O."""

    def wait(self, member: str, provider: str, rate: float, now: float) -> float:
        """0 when one message may go now at ``rate`` (a second), else the seconds
        until one may (a hint for when to look again)."""
        ...

    def spend(self, member: str, provider: str, rate: float, now: float) -> None:
        """One message went."""
        ...


class SuspensionBus(Protocol):
    """Where a suspension fired here is told to the other workers and nodes
    (``smtplb.cluster.suspensions.RedisSuspensions``); they call :meth:`Shaping.apply`."""

    def announce(self, member: str | None, provider: str, until: float, rule: str) -> None:
        """``member`` (None: every member) suspended for ``provider`` until ``until``
        (Unix time) by ``rule``."""
        ...


@dataclass(slots=True)
class LocalRate:
    """Token buckets in this process: ``burst(rate)`` tokens at most, ``rate`` a second."""

    buckets: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def _bucket(self, key: tuple[str, str], rate: float, now: float) -> list[float]:
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = [burst(rate), now]
        elif now > b[1]:
            b[0] = min(burst(rate), b[0] + (now - b[1]) * rate)
            b[1] = now
        return b

    def wait(self, member: str, provider: str, rate: float, now: float) -> float:
        tokens = self._bucket((member, provider), rate, now)[0]
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate

    def spend(self, member: str, provider: str, rate: float, now: float) -> None:
        self._bucket((member, provider), rate, now)[0] -= 1.0

    def __repr__(self) -> str:
        return f"LocalRate({len(self.buckets)} buckets)"


@dataclass(slots=True)
class Shaping:
    providers: ProviderTable
    rules: RuleBook
    clock: Clock
    lanes: dict[tuple[str, str], Lane] = field(default_factory=dict)
    provider_suspended: dict[str, tuple[float, str]] = field(default_factory=dict)
    wake_at: float | None = None  # earliest time a waiting member gets a token
    limiter: RateLimiter = field(default_factory=LocalRate)
    bus: SuspensionBus | None = None  # a cluster's: suspensions seen by every node

    def lane(self, member: str, provider: str, now: float) -> Lane:
        lane = self.lanes.get((member, provider))
        if lane is None:
            p = self.providers.get(provider)
            limit = p.max_connections if p is not None else None
            window = min(INITIAL_WINDOW, float(limit)) if limit else OPEN_WINDOW
            lane = Lane(window=window)
            self.lanes[(member, provider)] = lane
        return lane

    def rate(self, lane: Lane, provider: str, now: float) -> float | None:
        p = self.providers.get(provider)
        if p is None or p.rate is None:
            return None
        return p.rate * throttle_factor(lane, now)

    def connection_limit(self, lane: Lane, provider: str) -> int:
        """The member's limit for the provider now: configured, window and ceiling."""
        p = self.providers.get(provider)
        limit = int(lane.window)
        if lane.ceiling is not None:
            limit = min(limit, lane.ceiling)
        if p is not None and p.max_connections is not None:
            limit = min(limit, p.max_connections)
        return max(1, limit)

    # -- the eligibility filters' questions ----------------------------------------

    def suspended(self, member: str, provider: str, now: float) -> str | None:
        held = self.provider_suspended.get(provider)
        if held is not None and held[0] > now:
            return (
                f"{provider} suspended for all members until {self._hhmm(held[0], now)} "
                f"by rule {held[1]}"
            )
        lane = self.lanes.get((member, provider))
        if lane is not None and lane.suspended_until > now:
            until = self._hhmm(lane.suspended_until, now)
            return f"suspended for {provider} until {until} by rule {lane.suspended_rule}"
        return None

    def over_limit(self, member: str, provider: str, now: float) -> str | None:
        lane = self.lane(member, provider, now)
        limit = self.connection_limit(lane, provider)
        if lane.active >= limit:
            return f"over connections for {provider} ({lane.active} of {limit})"
        rate = self.rate(lane, provider, now)
        if rate is not None:
            wait = self.limiter.wait(member, provider, rate, now)
            if wait > 0:
                lane.rate_limited += 1
                ready = now + wait
                if self.wake_at is None or ready < self.wake_at:
                    self.wake_at = ready
                return f"over rate for {provider}"
        return None

    # -- what the dispatcher reports ----------------------------------------------

    def started(self, member: str, provider: str, now: float) -> None:
        lane = self.lane(member, provider, now)
        lane.active += 1
        rate = self.rate(lane, provider, now)
        if rate is not None:
            self.limiter.spend(member, provider, rate, now)

    def finished(self, member: str, provider: str, now: float, *, overloaded: bool) -> bool:
        """A delivery ended; ``overloaded``: a 421 or a refused connection (the window
        shrinks), else a success (it grows). True when the window shrank."""
        lane = self.lane(member, provider, now)
        saturated = lane.active >= self.connection_limit(lane, provider)
        lane.active = max(0, lane.active - 1)
        if overloaded:
            self._decrease(lane, lane.active + 1)
            return True
        if not saturated:
            # Only a window in full use learns from a success (TCP's congestion
            # window validation): light traffic neither grows it nor probes.
            return False
        p = self.providers.get(provider)
        cap = p.max_connections if p is not None and p.max_connections else None
        lane.window = min(lane.window + 1.0 / max(lane.window, 1.0), float(cap or OPEN_WINDOW))
        lane.streak += 1
        if lane.ceiling is not None and lane.streak >= lane.probe_after:
            lane.ceiling += 1
            lane.streak = 0
            if lane.ceiling >= (cap or OPEN_WINDOW):
                lane.ceiling = None
                lane.probe_after = PROBE_AFTER
        return False

    @staticmethod
    def _decrease(lane: Lane, level: int) -> None:
        if lane.ceiling is not None:  # a limit met again: probe it less often
            lane.probe_after = min(lane.probe_after * 2, MAX_PROBE_AFTER)
        lane.window = max(1.0, lane.window / 2)
        lane.ceiling = max(1, min(level - 1, lane.ceiling or level))
        lane.streak = 0

    def on_reply(self, member: str, provider: str, reply: Reply, now: float) -> Fired | None:
        """Apply the first response rule that matches ``reply``, if any."""
        rule = self.rules.match(provider, reply)
        if rule is None:
            return None
        lane = self.lane(member, provider, now)
        until = now + rule.duration if rule.duration else 0.0
        new = True
        if rule.action == "suspend":
            new = not (lane.suspended_until > now and lane.suspended_rule == rule.name)
            if new:
                lane.suspended_until, lane.suspended_rule = until, rule.name
                lane.suspensions += 1
                if self.bus is not None:
                    self.bus.announce(member, provider, self.wall(until), rule.name)
        elif rule.action == "suspend_provider":
            held = self.provider_suspended.get(provider)
            new = not (held is not None and held[0] > now and held[1] == rule.name)
            if new:
                self.provider_suspended[provider] = (until, rule.name)
                lane.suspensions += 1
                if self.bus is not None:
                    self.bus.announce(None, provider, self.wall(until), rule.name)
        elif rule.action == "throttle":
            new = not (lane.throttle_until > now and lane.throttle_rule == rule.name)
            if new:
                lane.throttle_until, lane.throttle_rule = until, rule.name
                lane.throttle_length = rule.duration
        elif rule.action == "reduce_connections":
            self._decrease(lane, lane.active + 1)
        return Fired(rule, member, provider, until, reply_line(reply), new)

    def apply(self, member: str | None, provider: str, until: float, rule: str) -> None:
        """A suspension another worker or node announced (``until``: Unix time): it holds
        here too, unless one that lasts longer already does."""
        now = self.clock.monotonic()
        ends = now + (until - self.clock.wall())
        if ends <= now:
            return
        if member is None:
            held = self.provider_suspended.get(provider)
            if held is None or held[0] < ends:
                self.provider_suspended[provider] = (ends, rule)
            return
        lane = self.lane(member, provider, now)
        if lane.suspended_until < ends:
            lane.suspended_until, lane.suspended_rule = ends, rule

    # -- for operators ------------------------------------------------------------

    def wall(self, monotonic: float) -> float:
        return self.clock.wall() + (monotonic - self.clock.monotonic())

    def _hhmm(self, until: float, now: float) -> str:
        return time.strftime("%H:%M", time.localtime(self.clock.wall() + (until - now)))

    def take_wake(self) -> float | None:
        """When a member over its rate gets its next token (monotonic), once."""
        wake, self.wake_at = self.wake_at, None
        return wake

    def snapshot(self, members: Iterable[str]) -> list[dict[str, Any]]:
        """Per provider: its limits and rules; per member that sent to it: the lane."""
        now = self.clock.monotonic()
        names = list(members)
        out: list[dict[str, Any]] = []
        for p in self.providers:
            held = self.provider_suspended.get(p.name)
            entry: dict[str, Any] = {
                "name": p.name,
                "domains": list(p.domains),
                "mx_suffixes": list(p.mx_suffixes),
                "max_connections": p.max_connections,
                "max_messages_per_connection": p.max_messages_per_connection,
                "rate": p.rate_text,
                "rules": [r.name for r in self.rules.rules_for(p.name)],
                "suspended": self._suspension(held[0], held[1], now)
                if held and held[0] > now
                else None,
                "members": [],
            }
            for m in names:
                lane = self.lanes.get((m, p.name))
                if lane is not None:
                    entry["members"].append(self._lane_view(m, p.name, lane, now))
            out.append(entry)
        other = [(m, self.lanes[(m, OTHER)]) for m in names if (m, OTHER) in self.lanes]
        if other:
            out.append(
                {
                    "name": OTHER,
                    "members": [self._lane_view(m, OTHER, lane, now) for m, lane in other],
                }
            )
        return out

    def _suspension(self, until: float, rule: str, now: float) -> dict[str, Any]:
        return {
            "rule": rule,
            "until": round(self.wall(until), 3),
            "seconds_left": round(until - now, 1),
        }

    def _lane_view(self, member: str, provider: str, lane: Lane, now: float) -> dict[str, Any]:
        rate = self.rate(lane, provider, now)
        return {
            "member": member,
            "active": lane.active,
            "concurrency": self.connection_limit(lane, provider),
            "window": round(lane.window, 2),
            "rate_per_minute": None if rate is None else round(rate * 60, 2),
            "throttled": throttle_factor(lane, now) < 1.0,
            "rate_limited": lane.rate_limited,
            "suspensions": lane.suspensions,
            "suspended": self._suspension(lane.suspended_until, lane.suspended_rule, now)
            if lane.suspended_until > now
            else None,
        }

    def __repr__(self) -> str:
        now = self.clock.monotonic()
        held = sum(1 for lane in self.lanes.values() if lane.suspended_until > now)
        return f"Shaping({len(self.lanes)} lanes, {held} suspended)"


_PROVIDER_WAITS = ("over rate for ", "over connections for ")


class _Waiting(Protocol):
    @property
    def wait_reason(self) -> str | None: ...


def waits_for_provider(candidates: Iterable[_Waiting]) -> bool:
    """The members that could take a job wait only for the job's provider (its rate or
    connections, reasons from :meth:`Shaping.over_limit`), not for being busy."""
    reasons = [c.wait_reason for c in candidates if c.wait_reason is not None]
    return bool(reasons) and all(r.startswith(_PROVIDER_WAITS) for r in reasons)


def is_overload(reply: Reply | None) -> bool:
    """A reply that says "fewer connections, please": 421, or a 4xx naming connections."""
    if reply is None:
        return False
    return reply.code == 421 or (
        reply.is_transient
        and "connection" in reply.text.lower()
        and "too many" in reply.text.lower()
    )
