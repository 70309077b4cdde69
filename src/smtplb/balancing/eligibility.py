"""Which members of a pool may take a job now: an ordered list of small filters.

Theory of operation. Choosing a member is two steps:

1. *Eligibility*: every member of the pool goes through the filters below, in
   order. A filter is a pure function of (member, request, now) that returns
   why the member is skipped, or None. The first reason found is the one the
   trace (``smtplb queue show``) prints for that member.
2. *Choice*: the pool's strategy picks one of the members that passed.

There are two kinds of filter:

- ``EXCLUDE`` filters say the member cannot take this job now (paused, down,
  ejected, already failed for this job; to come: suspended for the job's
  provider, quarantined, over its warm-up cap). With every member excluded the
  job goes back to the spool, deferred without counting an attempt.
- ``WAIT`` filters say the member could take it soon (all its connections are
  in use; to come: over its sending rate). Such a member stays a candidate,
  marked ``full``: a strategy that spreads load passes it over, one that keeps
  a key on its member (hash, failover) may choose it, and the job then waits
  in its lane for that member.

A limit that counts (the warm-up cap) also *reserves* its share once the
strategy has chosen: a :class:`Reserver` takes the message atomically in state
shared by the node's workers, and when it cannot (another worker took the last
slot meanwhile) the member is excluded for this pick with that reason and the
strategy chooses again. A reservation whose attempt does not happen is released.

A new limit is one more function in one of these tuples (or an object with
``__call__``, when it reads shared state such as reputation); the dispatcher
does not change. Filters take the member as a :class:`MemberView`, a read-only
protocol, and time as an argument: they are tested on a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from smtplb.balancing.base import PickRequest
from smtplb.balancing.health import ActiveHealth, PassiveHealth


class MemberView(Protocol):
    """What eligibility filters (and strategies, through :class:`Eligible`) read of a member."""

    @property
    def name(self) -> str: ...

    @property
    def paused(self) -> bool: ...

    @property
    def checks(self) -> ActiveHealth: ...

    @property
    def health(self) -> PassiveHealth: ...

    @property
    def active(self) -> int:
        """Deliveries in progress on this member."""
        ...

    @property
    def connection_limit(self) -> int: ...

    @property
    def base_weight(self) -> float:
        """The configured weight (a strategy sees it × the slow-start ramp)."""
        ...

    def ramp_at(self, now: float) -> float:
        """Slow-start share from 0 to 1 at ``now``."""
        ...


SkipReason = Callable[[MemberView, PickRequest, float], "str | None"]
# The share of its weight a member keeps for this job (reputation: throttled,
# probation), from 0 to 1; a strategy sees weight × ramp × share.
Share = Callable[[MemberView, PickRequest, float], float]


class Reserver(Protocol):
    """A limit that takes its share of a job at pick time (see the module doc)."""

    def reserve(self, member: MemberView, request: PickRequest, n: int, now: float) -> str | None:
        """Take ``n`` messages for ``member``; None: taken, else why not."""
        ...

    def release(self, member: MemberView, request: PickRequest, n: int, now: float) -> None:
        """Give back a reservation whose attempt did not happen."""
        ...

    def frees_at(self, member: MemberView, request: PickRequest, reason: str) -> float | None:
        """If ``reason`` is this limit's for ``member``: when it frees (wall time)."""
        ...


# -- the filters ---------------------------------------------------------------------


def failed_this_attempt(member: MemberView, request: PickRequest, now: float) -> str | None:
    return "failed this attempt" if member.name in request.tried else None


def paused(member: MemberView, request: PickRequest, now: float) -> str | None:
    return "paused" if member.paused else None


def down(member: MemberView, request: PickRequest, now: float) -> str | None:
    if member.checks.up:
        return None
    why = member.checks.last_failure
    return f"down (health checks: {why})" if why else "down (health checks)"


def ejected(member: MemberView, request: PickRequest, now: float) -> str | None:
    return member.health.skip_reason(now)


def over_connection_limit(member: MemberView, request: PickRequest, now: float) -> str | None:
    # After a connection-level failure the circuit is suspect: one delivery at a
    # time until a success, so a dead upstream sees at most `fall` new attempts.
    if member.health.suspect:
        if member.active >= 1:
            return "busy (one delivery at a time since a failure)"
        return None
    limit = member.connection_limit
    if member.active >= limit:
        return f"busy (all {limit} connections in use)"
    return None


class ShapingView(Protocol):
    """Per member × provider limits (:class:`smtplb.reputation.shaping.Shaping`)."""

    def suspended(self, member: str, provider: str, now: float) -> str | None: ...

    def over_limit(self, member: str, provider: str, now: float) -> str | None: ...


class SuspendedForProvider:
    """EXCLUDE: a response rule suspended this member (or every member) for the
    job's provider: ``suspended for gmail until 14:05 by rule gmail-4.7.28``."""

    __name__ = "suspended_for_provider"

    def __init__(self, shaping: ShapingView) -> None:
        self.shaping = shaping

    def __call__(self, member: MemberView, request: PickRequest, now: float) -> str | None:
        if not request.provider:
            return None
        return self.shaping.suspended(member.name, request.provider, now)


class OverProviderLimit:
    """WAIT: the member is at its connection limit or out of rate for the job's
    provider (``over rate for gmail``); the job waits, no attempt is counted."""

    __name__ = "over_provider_limit"

    def __init__(self, shaping: ShapingView) -> None:
        self.shaping = shaping

    def __call__(self, member: MemberView, request: PickRequest, now: float) -> str | None:
        if not request.provider:
            return None
        return self.shaping.over_limit(member.name, request.provider, now)


def with_shaping(shaping: ShapingView) -> Eligibility:
    """The default filters plus the provider ones: suspension excludes, shaping waits."""
    return Eligibility(
        (*EXCLUDE, SuspendedForProvider(shaping)), (*WAIT, OverProviderLimit(shaping))
    )


EXCLUDE: tuple[SkipReason, ...] = (failed_this_attempt, paused, down, ejected)
WAIT: tuple[SkipReason, ...] = (over_connection_limit,)


# -- the pipeline --------------------------------------------------------------------

M = TypeVar("M", bound=MemberView)


@dataclass(slots=True)
class Eligible(Generic[M]):
    """A member that passed the ``EXCLUDE`` filters, as a strategy sees it at ``now``
    (a :class:`smtplb.balancing.base.Candidate`)."""

    member: M
    name: str
    weight: float
    ramp: float
    load: int
    wait_reason: str | None  # the first WAIT filter's reason; None: it can start now

    @property
    def full(self) -> bool:
        return self.wait_reason is not None


@dataclass(slots=True)
class Selection(Generic[M]):
    """The outcome of the filters for one job: who may be chosen, who was skipped and why."""

    candidates: list[Eligible[M]] = field(default_factory=list)
    # Every member in pool order with its first EXCLUDE or WAIT reason; None: it
    # could start the job now.
    verdicts: list[tuple[str, str | None]] = field(default_factory=list)

    def refuse(self, name: str, reason: str) -> None:
        """``name`` may not be chosen after all (a reservation failed): ``reason``."""
        self.candidates = [c for c in self.candidates if c.name != name]
        self.verdicts = [(n, reason if n == name else r) for n, r in self.verdicts]

    def reasons(self, chosen: M | None = None) -> tuple[tuple[str, str | None], ...]:
        """Every member but ``chosen`` with why it was not chosen, for the trace;
        None: it could have taken the job, the strategy preferred another."""
        name = None if chosen is None else chosen.name
        return tuple(v for v in self.verdicts if v[0] != name)


class Eligibility:
    """The ordered filters of a pool. ``exclude`` and ``wait`` default to
    :data:`EXCLUDE` and :data:`WAIT`."""

    def __init__(
        self,
        exclude: Sequence[SkipReason] = EXCLUDE,
        wait: Sequence[SkipReason] = WAIT,
        share: Share | None = None,
        reservers: Sequence[Reserver] = (),
    ) -> None:
        self.exclude = tuple(exclude)
        self.wait = tuple(wait)
        self.share = share
        self.reservers = tuple(reservers)

    def reserve(self, member: MemberView, request: PickRequest, n: int, now: float) -> str | None:
        """Every reserver's share of ``n`` messages for ``member``, all or none:
        None when taken, else the first reason (what was taken is released)."""
        for i, r in enumerate(self.reservers):
            reason = r.reserve(member, request, n, now)
            if reason is not None:
                for taken in self.reservers[:i]:
                    taken.release(member, request, n, now)
                return reason
        return None

    def release(self, member: MemberView, request: PickRequest, n: int, now: float) -> None:
        for r in self.reservers:
            r.release(member, request, n, now)

    def frees_at(
        self, members: Iterable[M], selection: Selection[M], request: PickRequest, now: float
    ) -> float | None:
        """With every member excluded by a reserver's limit that frees at a known
        time, the earliest of those times; None when any member waits for
        something else (paused, down…), whose end nobody knows."""
        verdicts = dict(selection.verdicts)
        earliest: float | None = None
        for m in members:
            reason = verdicts.get(m.name)
            if reason is None:
                return None
            at = next(
                (t for r in self.reservers if (t := r.frees_at(m, request, reason)) is not None),
                None,
            )
            if at is None:
                return None
            earliest = at if earliest is None else min(earliest, at)
        return earliest

    def excluded(self, member: MemberView, request: PickRequest, now: float) -> str | None:
        """The first ``EXCLUDE`` reason for ``member``; None: it may be chosen."""
        for skip_reason in self.exclude:
            reason = skip_reason(member, request, now)
            if reason is not None:
                return reason
        return None

    def waits(self, member: MemberView, request: PickRequest, now: float) -> str | None:
        """The first ``WAIT`` reason for ``member``; None: it can start now."""
        for skip_reason in self.wait:
            reason = skip_reason(member, request, now)
            if reason is not None:
                return reason
        return None

    def select(self, members: Iterable[M], request: PickRequest, now: float) -> Selection[M]:
        # This runs for every pick: the loops of `excluded` and `waits`, inlined.
        candidates: list[Eligible[M]] = []
        verdicts: list[tuple[str, str | None]] = []
        for m in members:
            for skip_reason in self.exclude:
                reason = skip_reason(m, request, now)
                if reason is not None:
                    verdicts.append((m.name, reason))
                    break
            else:
                reason = None
                for skip_reason in self.wait:
                    reason = skip_reason(m, request, now)
                    if reason is not None:
                        break
                verdicts.append((m.name, reason))
                ramp = m.ramp_at(now)
                if self.share is not None:
                    ramp *= self.share(m, request, now)
                candidates.append(Eligible(m, m.name, m.base_weight * ramp, ramp, m.active, reason))
        return Selection(candidates, verdicts)

    def rotation(
        self,
        members: Sequence[M],
        start: int,
        request: PickRequest,
        now: float,
        verdicts: list[tuple[str, str | None]],
    ) -> Iterator[tuple[int, Eligible[M]]]:
        """A rotation's candidates, lazily: from ``members[start]`` on (wrapping), each
        member that can start the job now, with its index; each one passed over
        (excluded or waiting) goes into ``verdicts`` with its reason. A round robin
        pick stops at the first it takes, so it costs the filters of a few members,
        not of the whole pool."""
        n = len(members)
        for k in range(n):
            i = (start + k) % n
            m = members[i]
            for skip_reason in self.exclude:
                reason = skip_reason(m, request, now)
                if reason is not None:
                    break
            else:
                for skip_reason in self.wait:
                    reason = skip_reason(m, request, now)
                    if reason is not None:
                        break
                else:
                    ramp = m.ramp_at(now)
                    if self.share is not None:
                        ramp *= self.share(m, request, now)
                    yield i, Eligible(m, m.name, m.base_weight * ramp, ramp, m.active, None)
                    continue
            verdicts.append((m.name, reason))

    def __repr__(self) -> str:
        names = [f.__name__ if hasattr(f, "__name__") else repr(f) for f in self.exclude]
        waits = [f.__name__ if hasattr(f, "__name__") else repr(f) for f in self.wait]
        return f"Eligibility(exclude={names}, wait={waits})"
