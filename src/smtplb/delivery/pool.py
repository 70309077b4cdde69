"""A pool at run time: its members, priority lanes of jobs, and how one is chosen.

A :class:`Job` is one message's recipients for one (pool, recipient domain),
waiting in one of the pool's :data:`LANES`. :meth:`PoolRuntime.choose` runs the
pool's eligibility filters and then its strategy for the job at the head of a
lane; :meth:`PoolRuntime.record` takes a finished attempt back to the member
(health, counters) and to the strategy (latency), with the pool-wide rule that
no more than ``max_ejection_percent`` of the members are ejected at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from smtplb.balancing import PickRequest, Strategy
from smtplb.balancing.eligibility import Eligibility, Eligible, Selection
from smtplb.balancing.health import Transition, may_eject
from smtplb.config import PoolConfig
from smtplb.delivery.member import AttemptResult, Member
from smtplb.model import Reply, domain_of
from smtplb.spool.base import ClaimedMessage, ClaimedRecipient

LANES = 3  # 0 high, 1 normal, 2 low
_NO_JOB = PickRequest()


@dataclass(slots=True)
class Job:
    message: ClaimedMessage
    recipients: list[ClaimedRecipient]
    pool: str
    priority: int
    domain: str
    tried: set[str] = field(default_factory=set)
    request: PickRequest = field(init=False)

    def __post_init__(self) -> None:
        # One request for every pick of this job: `tried` is the job's own set.
        sender = self.message.sender
        self.request = PickRequest(
            recipient_domain=self.domain,
            sender_domain=domain_of(sender),
            client_ip=self.message.client_ip,
            sender=sender.lower(),
            tried=self.tried,
        )

    def __repr__(self) -> str:
        return (
            f"Job({self.message.queue_id}, {len(self.recipients)} rcpt @{self.domain}, "
            f"pool={self.pool}, tried={sorted(self.tried)})"
        )


@dataclass(slots=True)
class Choice:
    """What :meth:`PoolRuntime.choose` decided for a job."""

    member: Member | None  # None: no member may take it now (see ``selection``)
    selection: Selection[Member]

    @property
    def waits(self) -> bool:
        """Members may take it, but not now (all busy): the job stays in its lane."""
        return self.member is None and bool(self.selection.candidates)


@dataclass(slots=True)
class PoolRuntime:
    config: PoolConfig
    members: list[Member]
    strategy: Strategy
    eligibility: Eligibility = field(default_factory=Eligibility)
    lanes: tuple[deque[Job], ...] = field(
        default_factory=lambda: tuple(deque() for _ in range(LANES))
    )

    @property
    def name(self) -> str:
        return self.config.name

    def waiting(self) -> int:
        return sum(len(lane) for lane in self.lanes)

    def choose(self, job: Job, now: float) -> Choice:
        """Eligible members for ``job`` at ``now``, then the strategy's pick among them."""
        selection = self.eligibility.select(self.members, job.request, now)
        chosen: Eligible[Member] | None = None
        if selection.candidates:
            chosen = self.strategy.pick(selection.candidates, job.request)
        if chosen is None or chosen.full:
            return Choice(None, selection)
        return Choice(chosen.member, selection)

    def any_available(self, now: float) -> bool:
        """Could any member take a job (not counting busy connections)?"""
        return any(self.eligibility.excluded(m, _NO_JOB, now) is None for m in self.members)

    def record(
        self, member: Member, result: AttemptResult, now: float, max_ejection_percent: int
    ) -> Transition | None:
        """A finished attempt on ``member``: its health and counters, the strategy's latency."""
        allowed = True
        if result.failure is not None:
            ejected = sum(1 for m in self.members if m.health.ejected)
            allowed = may_eject(ejected, len(self.members), max_ejection_percent)
        transition = member.record(result, now, may_eject=allowed)
        if result.answered or result.failure is not None:
            ok = result.answered and result.accepted
            self.strategy.observe(member.name, result.seconds, ok, now)
        return transition

    def __repr__(self) -> str:
        return f"PoolRuntime({self.name!r}, {len(self.members)} members, {self.waiting()} waiting)"


def no_member_reply(selection: Selection[Member]) -> Reply:
    """The deferral reply when every member was excluded, naming each one's reason."""
    reasons = "; ".join(f"{name}: {why}" for name, why in selection.verdicts)
    return Reply(451, "4.4.1", f"no member available ({reasons})")
