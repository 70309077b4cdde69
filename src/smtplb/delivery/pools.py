"""Pools at run time: members, priority lanes of jobs, and how a member is chosen;
built from the config, at start and at each reload.

A :class:`Job` is one message's recipients for one (pool, recipient domain),
waiting in one of the pool's :data:`LANES`. :meth:`PoolRuntime.choose` runs the
pool's eligibility filters and then its strategy for the job at the head of a
lane; :meth:`PoolRuntime.record` takes a finished attempt back to the member
(health, counters) and to the strategy (latency), with the pool-wide rule that
no more than ``max_ejection_percent`` of the members are ejected at once.

A reload keeps a member that is still in the same pool (its connections,
health and counters live on, its settings change); a member new to the
config starts with a ramp (slow start). Operator pauses live in ``data_dir``
(:class:`PausedMembers`) so that they survive a restart and reach every worker.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from smtplb.balancing import PickRequest, Strategy, make_strategy
from smtplb.balancing.eligibility import Eligibility, Eligible, Selection
from smtplb.balancing.health import ActiveHealth, PassiveHealth, Transition, may_eject
from smtplb.clock import Clock
from smtplb.config import Config, MemberConfig, PoolConfig
from smtplb.delivery.connection import ConnectionSettings
from smtplb.delivery.member import AttemptResult, Member
from smtplb.delivery.outcome import RetrySchedule
from smtplb.experiments import variant_pool
from smtplb.model import domain_of
from smtplb.reputation.warmup_gate import WarmupGate, policy_of, warming_members
from smtplb.reputation.warmup_store import WarmupState
from smtplb.smtp.reply import Reply
from smtplb.spool.base import ClaimedMessage, ClaimedRecipient

LANES = 3  # 0 high, 1 normal, 2 low
# Round robin over more members than this picks by rotation (see PoolRuntime.choose);
# smaller pools filter every member at each pick, and their traces name them all.
ROTATE_ABOVE = 16
_NO_JOB = PickRequest()


@dataclass(slots=True)
class Job:
    message: ClaimedMessage
    recipients: list[ClaimedRecipient]
    pool: str
    priority: int
    domain: str
    tried: set[str] = field(default_factory=set)
    experiment: tuple[str, str] | None = None  # (experiment, variant)
    provider: str = ""  # the recipient domain's mailbox provider; "" until recognised
    request: PickRequest = field(init=False)

    def __post_init__(self) -> None:
        self.set_provider(self.provider)

    def set_provider(self, provider: str) -> None:
        # One request for every pick of this job: `tried` is the job's own set.
        self.provider = provider
        sender = self.message.sender
        self.request = PickRequest(
            recipient_domain=self.domain,
            sender_domain=domain_of(sender),
            client_ip=self.message.client_ip,
            sender=sender.lower(),
            tried=self.tried,
            provider=provider,
        )

    @property
    def variant(self) -> str | None:
        return self.experiment[1] if self.experiment is not None else None

    def __repr__(self) -> str:
        variant = f", variant={self.variant}" if self.experiment else ""
        return (
            f"Job({self.message.queue_id}, {len(self.recipients)} rcpt @{self.domain}, "
            f"pool={self.pool}{variant}, tried={sorted(self.tried)})"
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
    # an experiment's variants: each its own strategy over its member subset
    variants: dict[str, tuple[list[Member], Strategy]] = field(default_factory=dict)
    # Some member resolves MX hosts (egress): fixed per pool, a reload builds new ones.
    delivers_by_mx: bool = field(init=False)

    def __post_init__(self) -> None:
        self.delivers_by_mx = any(m.kind == "egress" for m in self.members)

    @property
    def name(self) -> str:
        return self.config.name

    def waiting(self) -> int:
        return sum(len(lane) for lane in self.lanes)

    def choose(self, job: Job, now: float) -> Choice:
        """Eligible members for ``job`` at ``now``, then the strategy's pick among them.

        Round robin in a pool of more than :data:`ROTATE_ABOVE` members takes the
        first member from its cursor on that can start the job and whose turn it is
        (one ramping up takes that share of its turns), so a pick costs the filters of
        the members passed over (the trace's skipped ones), not of every member; when
        a whole turn takes none, the filters and scores decide as in a small pool."""
        members, strategy = self.for_job(job)
        n = len(job.recipients)
        if strategy.rotates and len(members) > ROTATE_ABOVE:
            verdicts: list[tuple[str, str | None]] = []
            start = strategy.cursor % len(members)
            for index, candidate in self.eligibility.rotation(
                members, start, job.request, now, verdicts
            ):
                refused = None
                if strategy.takes_turn(candidate):
                    refused = self.eligibility.reserve(candidate.member, job.request, n, now)
                    if refused is None:
                        strategy.cursor = index + 1
                        return Choice(candidate.member, Selection([candidate], verdicts))
                verdicts.append((candidate.name, refused))
        selection = self.eligibility.select(members, job.request, now)
        while True:
            chosen: Eligible[Member] | None = None
            if selection.candidates:
                chosen = strategy.pick(selection.candidates, job.request)
            if chosen is None or chosen.full:
                return Choice(None, selection)
            refused = self.eligibility.reserve(chosen.member, job.request, n, now)
            if refused is None:
                return Choice(chosen.member, selection)
            selection.refuse(chosen.name, refused)  # e.g. another worker took the last slot

    def frees_at(self, job: Job, selection: Selection[Member], now: float) -> float | None:
        """When every member was excluded by a cap that frees at a known time (the
        warm-up day or hour): the earliest such time (wall clock); else None."""
        return self.eligibility.frees_at(self.members, selection, job.request, now)

    def release(self, member: Member, job: Job, now: float) -> None:
        """``member`` was chosen for ``job`` but sent nothing: give back its reservations."""
        self.eligibility.release(member, job.request, len(job.recipients), now)

    def for_job(self, job: Job | None) -> tuple[list[Member], Strategy]:
        """The members and the strategy that pick for ``job`` (its variant's, if any)."""
        variant = job.variant if job is not None else None
        if variant is not None and variant in self.variants:
            return self.variants[variant]
        return self.members, self.strategy

    def strategy_label(self, job: Job) -> str:
        """The strategy's name for the trace: the variant's, with the experiment."""
        if job.experiment is None:
            return self.config.strategy
        experiment, variant = job.experiment
        return f"{self.for_job(job)[1].name} (experiment {experiment}, variant {variant})"

    def any_available(self, now: float) -> bool:
        """Could any member take a job (not counting busy connections)?"""
        return any(self.eligibility.excluded(m, _NO_JOB, now) is None for m in self.members)

    def record(
        self,
        member: Member,
        result: AttemptResult,
        now: float,
        max_ejection_percent: int,
        job: Job | None = None,
    ) -> Transition | None:
        """A finished attempt on ``member``: its health and counters, the strategy's latency."""
        allowed = True
        if result.failure is not None:
            ejected = sum(1 for m in self.members if m.health.ejected)
            allowed = may_eject(ejected, len(self.members), max_ejection_percent)
        transition = member.record(result, now, may_eject=allowed)
        if result.answered or result.failure is not None:
            ok = result.answered and result.accepted
            self.for_job(job)[1].observe(member.name, result.seconds, ok, now)
        return transition

    def __repr__(self) -> str:
        return f"PoolRuntime({self.name!r}, {len(self.members)} members, {self.waiting()} waiting)"


def no_member_reply(selection: Selection[Member]) -> Reply:
    """The deferral reply when every member was excluded, naming each one's reason."""
    reasons = "; ".join(f"{name}: {why}" for name, why in selection.verdicts)
    return Reply(451, "4.4.1", f"no member available ({reasons})")


class PausedMembers:
    """Operator pauses, kept in ``data_dir`` so that they survive a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> set[str]:
        try:
            return {ln.strip() for ln in self.path.read_text().splitlines() if ln.strip()}
        except FileNotFoundError:
            return set()

    def save(self, names: set[str]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{n}\n" for n in sorted(names)))
        tmp.replace(self.path)

    def set(self, name: str, paused: bool) -> None:
        names = self.load()
        (names.add if paused else names.discard)(name)
        self.save(names)

    def mtime(self) -> float:
        """When the list last changed (-1 when there is none): peers poll this."""
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return -1.0

    def __repr__(self) -> str:
        return f"PausedMembers({sorted(self.load())})"


@dataclass(slots=True)
class Warmup:
    """The warm-up caps of a node: shared counts, and the gate every pool's
    eligibility filters include (as an EXCLUDE filter and a reserver, app.py)."""

    state: WarmupState
    gate: WarmupGate

    def reconfigure(self, config: Config) -> None:
        """A reload: the schedule, thresholds and warming members may change."""
        self.state.policy = policy_of(config)
        self.state.starts = warming_members(config)
        self.gate.members = set(self.state.starts)

    def __repr__(self) -> str:
        return f"Warmup({self.gate!r})"


def retry_schedule(config: Config) -> RetrySchedule:
    d = config.delivery
    return RetrySchedule(d.retry_base, d.retry_max, d.retry_jitter)


def connection_settings(config: Config, m: MemberConfig) -> ConnectionSettings:
    d = config.delivery
    return ConnectionSettings(
        ehlo_name=m.ehlo or config.hostname,
        tls=m.tls,  # type: ignore[arg-type]  # validated by config
        implicit_tls=m.implicit_tls,
        tls_verify=m.tls_verify,
        username=m.username,
        password=m.password,
        connect_timeout=d.connect_timeout,
        command_timeout=d.command_timeout,
        data_timeout=d.data_timeout,
    )


def build_pools(
    config: Config,
    existing: Mapping[str, Member],
    paused: set[str],
    workers: int,
    clock: Clock,
    eligibility: Eligibility | None = None,
) -> dict[str, PoolRuntime]:
    """Every pool of ``config``; members in ``existing`` (by name) are reused.

    ``workers`` is the number of worker processes running (each member takes
    its share of ``max_connections``); a reload does not change it. ``clock``
    times the new members' health and slow start. ``eligibility``: the filters
    of every pool (default: :class:`Eligibility`'s)."""
    pools: dict[str, PoolRuntime] = {}
    for pc in config.pools:
        members = [_member(config, pc, mc, existing, paused, workers, clock) for mc in pc.members]
        pools[pc.name] = PoolRuntime(pc, members, make_strategy(pc), eligibility or Eligibility())
    for exp in config.experiments:  # each variant: its strategy over its member subset
        pool = pools[exp.pool]
        for v in exp.variants:
            vpc = variant_pool(pool.config, exp, v.name)
            subset = {m.name for m in vpc.members}
            vmembers = [m for m in pool.members if m.name in subset]
            pool.variants[v.name] = (vmembers, make_strategy(vpc))
    return pools


def _member(
    config: Config,
    pc: PoolConfig,
    mc: MemberConfig,
    existing: Mapping[str, Member],
    paused: set[str],
    workers: int,
    clock: Clock,
) -> Member:
    hc = config.health
    old = existing.get(mc.name)
    if old is not None and old.pool == pc.name:
        old.reconfigure(mc)
        old.settings = connection_settings(config, mc)
        old.health.fall = hc.fall
        old.slow_start = hc.slow_start
        return old
    health = PassiveHealth(
        fall=hc.fall, base_ejection=hc.base_ejection, max_ejection=hc.max_ejection
    )
    member = Member(
        mc,
        pc.name,
        connection_settings(config, mc),
        health,
        checks=ActiveHealth(rise=hc.rise, fall=hc.fall),
        paused=mc.name in paused,
        slow_start=hc.slow_start,
        workers=workers,
        clock=clock,
    )
    if existing:  # added by a reload, not present at start: ramp up
        member.start_ramp()
    return member


def all_members(pools: Mapping[str, PoolRuntime]) -> Iterator[Member]:
    for pool in pools.values():
        yield from pool.members
