"""The warm-up cap at run time: the eligibility filter, the pick-time reservation,
the outcomes that feed the closed loop, and the views for API and metrics.

:class:`WarmupGate` is an ``EXCLUDE`` filter of every pool (``over_warmup_cap``)
and a :class:`~smtplb.balancing.eligibility.Reserver`. Excluding (rather than
making the job wait for the member) is what lets a message over the cap
*overflow* to another member of the pool, and, when no member can take it, go
back to the spool deferred without counting an attempt. A job's provider is
``request.provider`` once provider recognition has set it, else the stand-in
:func:`~smtplb.reputation.warmup.provider_of`.

The filter reads the shared counts (no write); the reservation takes them in
one transaction (:class:`~smtplb.reputation.warmup_store.WarmupState`), so
never more than the cap leaves the node, whatever the number of workers. The
``now`` the filters get is the monotonic time; warm-up days are calendar days,
so the gate asks its clock for the wall time.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from typing import Any, Protocol

from smtplb.clock import Clock
from smtplb.config import Config
from smtplb.observability.record import DeliveryRecord
from smtplb.reputation.warmup import (
    AWAY_RETRY,
    AWAY_SHARE,
    DAY,
    DEFAULT_SCHEDULE,
    HOUR,
    LEASE_RETRY,
    LEASE_WAIT,
    Decision,
    Thresholds,
    WarmupPolicy,
    day_index,
    hour_index,
    outcome_kind,
    provider_of,
)
from smtplb.reputation.warmup_store import WarmupState
from smtplb.smtp.reply import Reply

log = logging.getLogger("smtplb.warmup")


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _Request(Protocol):
    @property
    def recipient_domain(self) -> str: ...


def request_provider(request: _Request) -> str:
    return provider_of(request.recipient_domain, getattr(request, "provider", "") or "")


def policy_of(config: Config) -> WarmupPolicy:
    w = config.warmup
    t = Thresholds(
        deferral_hold=w.deferral_hold,
        deferral_back=w.deferral_step_back,
        policy_block_hold=w.policy_block_hold,
        policy_block_back=w.policy_block_step_back,
        bounce_hold=w.bounce_hold,
        bounce_back=w.bounce_step_back,
        complaint_hold=w.complaint_hold,
        complaint_back=w.complaint_step_back,
    )
    schedule = tuple(w.schedule) if w.schedule else DEFAULT_SCHEDULE
    return WarmupPolicy(schedule, w.max_hourly_share, t, float(w.idle_restart))


def warming_members(config: Config) -> dict[str, int | None]:
    """Members with ``warmup = true`` and their ``warmup_start`` as a day index."""
    out: dict[str, int | None] = {}
    for m in config.members:
        if m.warmup:
            start = None
            if m.warmup_start:
                start = int(date.fromisoformat(m.warmup_start).toordinal()) - _EPOCH
            out[m.name] = start
    return out


_EPOCH = date(1970, 1, 1).toordinal()


def calendar_date(day: int) -> str:
    return date.fromordinal(day + _EPOCH).isoformat()


class WarmupGate:
    """EXCLUDE filter and reserver for the warm-up caps of the warming members."""

    __name__ = "over_warmup_cap"

    def __init__(
        self,
        state: WarmupState,
        clock: Clock,
        on_decision: Callable[[Decision], None] | None = None,
        members: Iterable[str] = (),
    ) -> None:
        self.state = state
        self.clock = clock
        self.on_decision = on_decision
        self.members = set(members)

    def __repr__(self) -> str:
        return f"WarmupGate({sorted(self.members)}, {self.state!r})"

    def __call__(self, member: _Named, request: _Request, now: float) -> str | None:
        if member.name not in self.members or not request.recipient_domain:
            # (no job: "could this member take anything?" — yes, another provider's mail)
            return None
        try:
            status = self.state.status(member.name, request_provider(request), self.clock.wall())
        except sqlite3.Error as exc:  # fail closed: without counts, no warm-up traffic
            return f"warm-up counts unavailable ({exc})"
        return None if status.wait == LEASE_WAIT else status.skip_reason()

    def waiting(self, member: _Named, request: _Request, now: float) -> str | None:
        """WAIT: a cluster backend's lease of the cap is on its way (milliseconds): the
        job waits in its lane, or goes to a member that can take it now."""
        if member.name not in self.members or not request.recipient_domain:
            return None
        status = self.state.status(member.name, request_provider(request), self.clock.wall())
        return LEASE_WAIT if status.wait == LEASE_WAIT else None

    def reserve(self, member: _Named, request: _Request, n: int, now: float) -> str | None:
        if member.name not in self.members:
            return None
        provider = request_provider(request)
        try:
            reason, decisions = self.state.take(member.name, provider, n, self.clock.wall())
        except sqlite3.Error as exc:
            return f"warm-up counts unavailable ({exc})"
        self._emit(decisions)
        return reason

    def release(self, member: _Named, request: _Request, n: int, now: float) -> None:
        if member.name in self.members:
            provider = request_provider(request)
            try:
                self.state.give_back(member.name, provider, n, self.clock.wall())
            except sqlite3.Error as exc:  # the slot stays taken: under the cap, never over
                log.warning(
                    "warm-up: cannot give back %d for %s × %s: %s", n, member.name, provider, exc
                )

    def frees_at(self, member: _Named, request: _Request, reason: str) -> float | None:
        """When ``member`` may take this provider's mail again, if ``reason`` is its
        warm-up cap: the next hour for the hourly cap, the next UTC day for the day's."""
        if member.name not in self.members:
            return None
        now = self.clock.wall()
        if reason == LEASE_WAIT:
            return now + LEASE_RETRY
        if reason.startswith(AWAY_SHARE):
            return now + AWAY_RETRY
        if not reason.startswith("warm-up "):
            return None
        if reason.startswith("warm-up hourly cap"):
            return (hour_index(now) + 1) * HOUR
        return (day_index(now) + 1) * DAY

    def record(self, member: str, request: _Request, replies: Sequence[Reply]) -> None:
        """The replies of an attempt on ``member``: the day's rates for the closed loop."""
        if member not in self.members or not replies:
            return
        counts: dict[str, int] = {}
        for r in replies:
            kind = outcome_kind(r.code, r.enhanced_code)
            counts[kind] = counts.get(kind, 0) + 1
        try:
            self.state.record(member, request_provider(request), counts, self.clock.wall())
        except sqlite3.Error as exc:
            log.warning("warm-up: cannot record outcomes of %s: %s", member, exc)

    def complaint(self, member: str, provider: str) -> None:
        """A complaint (feedback loop) about mail ``member`` sent to ``provider``."""
        if member in self.members:
            self.state.record(member, provider, {"complained": 1}, self.clock.wall())

    def _emit(self, decisions: list[Decision]) -> None:
        if self.on_decision is not None:
            for d in decisions:
                self.on_decision(d)

    def views(self, member: str) -> dict[str, dict[str, Any]]:
        """Per provider: ``day``, ``cap`` (None: warm), ``sent`` today (SPEC §3.4)."""
        if member not in self.members:
            return {}
        now = self.clock.wall()
        try:
            providers = self.state.providers(member)
            return {p: self.state.status(member, p, now).view() for p in providers}
        except sqlite3.Error as exc:
            log.warning("warm-up: cannot read the counts of %s: %s", member, exc)
            return {}


def decision_record(decision: Decision, pool: str | None) -> DeliveryRecord:
    """A step decision as a delivery-log record (the rates are in ``response``)."""
    return DeliveryRecord(
        event=decision.event,
        provider=decision.provider,
        pool=pool,
        member=decision.member,
        response=decision.text(),
    )
