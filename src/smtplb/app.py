"""The one wiring point: a :class:`~smtplb.service.Service` built from the config.

Every part is made here and handed to the parts that use it; nothing else
constructs spools, logs, pools or the dispatcher. No logic lives here: what
a part does is in its own package, and the order below is only the order in
which parts need each other:

    spool shards → delivery log (+ metrics, live stats, webhooks) → traces →
    pools (with the operator's pauses) → dispatcher → DKIM keys → intake pipeline →
    DSN writer (the dispatcher's on_bounce) → suppressor (its on_hard_bounce) →
    service → HTTP API (worker 0)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from smtplb.api import create_app
from smtplb.api.server import HttpServer
from smtplb.balancing.eligibility import (
    EXCLUDE,
    WAIT,
    Eligibility,
    OverProviderLimit,
    SuspendedForProvider,
)
from smtplb.clock import Clock, SystemClock
from smtplb.cluster.experiments import RedisExperimentStore
from smtplb.cluster.heartbeat import Heartbeats, node_name
from smtplb.cluster.link import ClusterLink
from smtplb.cluster.members import ClusterMembers
from smtplb.cluster.rate import RedisRate
from smtplb.cluster.reputation import RedisReputation
from smtplb.cluster.suppression import RedisSuppressionState
from smtplb.cluster.suspensions import RedisSuspensions
from smtplb.cluster.warmup import RedisWarmupState
from smtplb.config import Config
from smtplb.delivery.bounces import DsnWriter
from smtplb.delivery.dispatcher import Dispatcher
from smtplb.delivery.member import Member
from smtplb.delivery.mx import MxResolver
from smtplb.delivery.pools import Job, PausedMembers, Warmup, build_pools, retry_schedule
from smtplb.experiments import Experiments, ExperimentStore, log_events
from smtplb.intake.auth import AuthThrottle, make_authenticator
from smtplb.intake.pipeline import IntakePipeline
from smtplb.intake.server import ConnectionCap
from smtplb.mailauth.dmarc_watch import DmarcWatch, dns_lookup
from smtplb.mailauth.keys import load_keyring
from smtplb.mailauth.sign import DkimSigner, offload_signing
from smtplb.observability.delivery_log import DeliveryLog
from smtplb.observability.live import LiveStats
from smtplb.observability.metrics import Metrics
from smtplb.observability.record import DeliveryRecord
from smtplb.observability.trace import TraceBook
from smtplb.observability.webhooks import Webhooks
from smtplb.reputation.book import ReputationBook
from smtplb.reputation.complaint_budget import (
    BudgetPolicy,
    ComplaintBudget,
    DomainBudget,
    rate_text,
)
from smtplb.reputation.complaint_store import SqliteBudgetStore
from smtplb.reputation.embedded import SqliteState
from smtplb.reputation.feedback import FeedbackHandler
from smtplb.reputation.rules import RuleBook
from smtplb.reputation.shaping import Shaping
from smtplb.reputation.state import State
from smtplb.reputation.suppression import BounceSuppressor
from smtplb.reputation.warmup_gate import (
    WarmupGate,
    decision_record,
    policy_of,
    warming_members,
)
from smtplb.reputation.warmup_store import SqliteWarmupState, WarmupState
from smtplb.routing.providers import ProviderTable
from smtplb.service import Service
from smtplb.smtp.reply import Reply
from smtplb.spool.base import Spool
from smtplb.spool.schema import create_file
from smtplb.spool.shards import shard_path
from smtplb.spool.sqlite import SqliteSpool


def build_service(config: Config, config_path: Path | None = None, worker: int = 0) -> Service:
    """Worker ``worker`` of the node described by ``config`` (not started yet)."""
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    # smtp.max_connections is for the node: each worker takes its share.
    connection_cap = ConnectionCap(max(1, -(-config.smtp.max_connections // config.workers)))
    # The other SMTP sessions open in this worker may store a message soon: while there
    # are any, a commit waits a moment for them (group commit, see spool.writer).
    spool = SqliteSpool(shard_path(data_dir, worker), siblings=lambda: connection_cap.open - 1)
    # Worker 0 answers for the node: it also reads its peers' shards.
    peer_spools: list[Spool] = [
        SqliteSpool(shard_path(data_dir, i), recover=False)
        for i in range(1, config.workers)
        if worker == 0
    ]

    delivery_log = DeliveryLog(
        data_dir / "logs" / "delivery.jsonl",
        max_size=config.log.delivery_log_max_size,
        keep=config.log.delivery_log_keep,
        rotates=worker == 0,
    )
    metrics = Metrics()
    live = LiveStats()
    delivery_log.listeners += [metrics.on_record, live.on_record]
    webhooks = Webhooks(config.webhooks) if config.webhooks else None
    if webhooks is not None:
        delivery_log.listeners.append(webhooks.on_record)
    traces = TraceBook(persist=spool.note_trace)  # stored with the spool's next commit
    # Several nodes share their limits through Redis; one node keeps them embedded.
    cluster = None
    if config.cluster.redis is not None:
        cluster = ClusterLink(config.cluster.redis, config.cluster.node, worker, data_dir / "run")
        metrics.set_cluster(cluster)
    # Reputation state lives beside the node's first spool database, shared by the workers
    # (with a cluster it is the node's replica of the suppression list kept in Redis);
    # whichever worker comes first creates that file, with the spool's page size.
    create_file(shard_path(data_dir, 0))
    state: State = SqliteState(shard_path(data_dir, 0))
    if cluster is not None:
        state = RedisSuppressionState(
            SqliteState(shard_path(data_dir, 0)), cluster, follows=worker == 0
        )
    experiments = Experiments(
        config.experiments,
        # one for all workers (in Redis: for all nodes)
        RedisExperimentStore(config.cluster.redis)
        if config.cluster.redis is not None
        else ExperimentStore(data_dir / "experiments.sqlite"),
        on_event=log_events(delivery_log),
    )

    clock = SystemClock()  # the one clock of delivery, members, health and AUTH throttling
    paused = PausedMembers(data_dir / "paused-members")
    book = ReputationBook(config.reputation, clock)
    warmup = build_warmup(config, data_dir, clock, delivery_log, cluster)
    shaping = Shaping(ProviderTable.build(config.providers), RuleBook(config.providers), clock)
    suspensions = shared_book = None
    if cluster is not None:
        shaping.limiter = RedisRate(cluster)
        shaping.bus = suspensions = RedisSuspensions(cluster, shaping)
        shared_book = RedisReputation(cluster, book)  # the cluster's counts and standings
    # Member-wide reputation, then suspensions for the job's provider, then the warm-up cap,
    # exclude; the provider's rate and connections make a member wait.
    eligibility = Eligibility(
        exclude=(*EXCLUDE, book.skip_reason, SuspendedForProvider(shaping), warmup.gate),
        wait=(*WAIT, OverProviderLimit(shaping), warmup.gate.waiting),
        share=book.share,
        reservers=(warmup.gate,),
    )
    pools = build_pools(config, {}, paused.load(), config.workers, clock, eligibility)
    resolver = MxResolver(
        config.static_routes,
        nameservers=config.dns.nameservers,
        mx_port=config.delivery.mx_port,
        clock=clock,
    )
    dispatcher = Dispatcher(
        spool=spool,
        pools=pools,
        resolver=resolver,
        delivery_log=delivery_log,
        schedule=retry_schedule(config),
        max_in_flight=config.delivery.max_in_flight,
        max_ejection_percent=config.health.max_ejection_percent,
        traces=traces,
        clock=clock,
        experiments=experiments,
        shaping=shaping,
    )

    service: Service  # bound below; the pipeline asks only once the service runs
    intake = IntakePipeline(
        config,
        spool=spool,
        handoff=dispatcher,
        delivery_log=delivery_log,
        metrics=metrics,
        traces=traces,
        is_draining=lambda: service.draining,
        provider_of=dispatcher.provider_hint,
        signer=DkimSigner(  # ConfigError names a bad key file
            load_keyring(config.dkim),
            offload=offload_signing(config.workers, os.cpu_count()),
        ),
        dmarc_watch=DmarcWatch(
            dns_lookup(config.dns.nameservers),
            SystemClock(),
            on_missing=lambda _: metrics.compliance.labels("dmarc_missing", "warn").inc(),
        ),
        state=state,
    )
    dsn = DsnWriter(config.hostname, intake.submit)
    dispatcher.reputation = book
    book.on_change = dispatcher.reputation_event
    dispatcher.on_bounce = dsn
    suppressor = BounceSuppressor(state, clock)
    if config.suppression.hard_bounces:
        dispatcher.on_hard_bounce = suppressor
    budget = build_budget(config, data_dir, clock, delivery_log)
    if budget is None:
        dispatcher.on_outcome = lambda member, job, replies: warmup.gate.record(
            member.name, job.request, replies
        )
    else:

        def on_outcome(member: Member, job: Job, replies: Sequence[Reply]) -> None:
            warmup.gate.record(member.name, job.request, replies)
            delivered = sum(1 for r in replies if r.is_positive)
            budget.delivered(job.request.sender_domain, job.message.content_class, delivered)

        def hold(job: Job) -> tuple[Reply, float] | None:
            reason = budget.hold(job.request.sender_domain, job.message.content_class)
            if reason is None:
                return None
            return Reply(451, "4.7.0", reason), clock.wall() + budget.retry_after()

        dispatcher.on_outcome = on_outcome
        dispatcher.hold = hold

    smtp = config.smtp
    users = {u.name: u.password_hash for u in smtp.users}
    auth_throttle = AuthThrottle(
        clock,
        max_failures=smtp.auth_max_failures,
        lockout=smtp.auth_lockout,
        delay=smtp.auth_delay,
        max_delay=smtp.auth_max_delay,
    )
    service = Service(
        config,
        config_path=config_path,
        worker=worker,
        spool=spool,
        peer_spools=peer_spools,
        delivery_log=delivery_log,
        metrics=metrics,
        live=live,
        traces=traces,
        webhooks=webhooks,
        paused=paused,
        pools=pools,
        resolver=resolver,
        dispatcher=dispatcher,
        experiments=experiments,
        intake=intake,
        dsn=dsn,
        authenticate=make_authenticator(users) if users else None,
        auth_throttle=auth_throttle,
        connection_cap=connection_cap,
        state=state,
        suppressor=suppressor,
        book=book,
        eligibility=eligibility,
        feedback=FeedbackHandler(
            state,
            book,
            delivery_log,
            lambda q: service.message(q),
            clock,
            scope=config.suppression.scope,
        ),
        warmup=warmup,
    )
    intake.feedback = service.feedback_handler
    if budget is not None:
        service.budget = budget
        service.feedback_handler.on_complaint = budget.complaint
    if cluster is not None:
        service.starters.append(cluster.start)  # registered before the first message
        if suspensions is not None:
            service.starters.append(suspensions.start)
        if shared_book is not None:
            shared_book.on_adopt = dispatcher.wake
            service.starters.append(shared_book.start)
        if isinstance(state, RedisSuppressionState):
            service.starters.append(state.start)
        if worker == 0:  # the API's worker: tells the operator's actions, follows others'
            service.member_bus = members = ClusterMembers(cluster, service.follow_cluster)
            service.starters.append(members.start)
            node = node_name(config.cluster.node)
            service.heartbeats = Heartbeats(cluster, node, clock=clock)  # beats for the node
        service.closers.append(cluster.aclose)
        if isinstance(warmup.state, RedisWarmupState):
            warmup.state.on_lease = dispatcher.wake
        if isinstance(shaping.limiter, RedisRate):
            shaping.limiter.on_ready = dispatcher.wake
    if worker == 0:
        service.http = HttpServer(create_app(service), config.http.listen)
    return service


def build_budget(
    config: Config, data_dir: Path, clock: Clock, delivery_log: DeliveryLog
) -> ComplaintBudget | None:
    """The complaint budget per sender domain (None when ``[compliance]
    complaint_budget`` is false): counts in ``data_dir/complaints.sqlite``, shared by
    the workers; each change of a domain's state is a ``complaint_budget`` record."""
    if not config.compliance.complaint_budget:
        return None

    def changed(d: DomainBudget) -> None:
        delivery_log.write(
            DeliveryRecord(
                event="complaint_budget",
                sender_domain=d.domain,
                state=d.state,
                rate=round(d.rate, 6),
                response=rate_text(d.delivered, d.complaints),
            )
        )

    store = SqliteBudgetStore(data_dir / "complaints.sqlite")
    return ComplaintBudget(store, BudgetPolicy.of(config), clock, on_change=changed)


def build_warmup(
    config: Config,
    data_dir: Path,
    clock: Clock,
    delivery_log: DeliveryLog,
    cluster: ClusterLink | None = None,
) -> Warmup:
    """The warm-up caps: counts in Redis for a cluster, else in ``data_dir/warmup.sqlite``,
    shared by the workers; each step decision is written to the delivery log."""
    state: WarmupState
    if cluster is not None:
        state = RedisWarmupState(cluster, policy_of(config), warming_members(config))
    else:
        state = SqliteWarmupState(
            data_dir / "warmup.sqlite", policy_of(config), warming_members(config)
        )
    pool_of = {m.name: p.name for p in config.pools for m in p.members}
    gate = WarmupGate(
        state,
        clock,
        lambda d: delivery_log.write(decision_record(d, pool_of.get(d.member))),
        state.starts,
    )
    return Warmup(state, gate)
