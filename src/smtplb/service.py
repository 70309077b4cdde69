"""The running node: its parts' lifecycle, and the operations the API offers.

:mod:`smtplb.app` builds a :class:`Service` from the config; here it starts
(spool, SMTP listeners, HTTP API, dispatcher, housekeeping, peering), reloads
(SIGHUP: pools, routes, static routes, retry settings, SMTP limits, DKIM keys) and stops
(SIGTERM: intake answers 421, deliveries in progress finish, the rest stays in
the spool). It also implements :class:`smtplb.api.operations.Operations`, the
narrow interface the HTTP API is written against: each operation is a few
lines that call the part that owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol

from smtplb import __version__
from smtplb.api.server import HttpServer
from smtplb.balancing.eligibility import Eligibility
from smtplb.cluster.heartbeat import Heartbeats, cluster_view, heartbeat, node_name
from smtplb.config import Config
from smtplb.delivery.bounces import DsnWriter
from smtplb.delivery.dispatcher import Dispatcher
from smtplb.delivery.health_check import HealthChecker, verdicts
from smtplb.delivery.member import Member
from smtplb.delivery.mx import MxResolver
from smtplb.delivery.pools import PausedMembers, PoolRuntime, Warmup, all_members
from smtplb.experiments import Experiments
from smtplb.intake.auth import AuthThrottle
from smtplb.intake.pipeline import IntakePipeline
from smtplb.intake.server import ConnectionCap, Listener
from smtplb.model import Envelope, RecipientState
from smtplb.observability.delivery_log import DeliveryLog
from smtplb.observability.live import LiveStats
from smtplb.observability.metrics import Metrics
from smtplb.observability.record import member_record
from smtplb.observability.trace import TraceBook
from smtplb.observability.webhooks import Webhooks
from smtplb.reputation.book import ReputationBook
from smtplb.reputation.complaint_budget import ComplaintBudget, compliance_view
from smtplb.reputation.feedback import Feedback, FeedbackHandler
from smtplb.reputation.state import State
from smtplb.reputation.suppression import BounceSuppressor
from smtplb.service_peers import peer_link
from smtplb.service_reload import reload_config
from smtplb.spool.base import MessageView, Spool
from smtplb.spool.shards import ShardedQueue, adopt_orphans
from smtplb.units import parse_hostport
from smtplb.workers import (
    merge_live,
    merge_members,
    merge_metrics,
    read_snapshots,
    set_drain_flag,
    write_health,
)

log = logging.getLogger("smtplb")


class _MemberBus(Protocol):
    def tell(self, flag: str, member: str, on: bool) -> None: ...


class Service:
    """One smtplb process (worker ``worker`` of ``config.workers``)."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None,
        worker: int,
        spool: Spool,
        peer_spools: list[Spool],
        delivery_log: DeliveryLog,
        metrics: Metrics,
        live: LiveStats,
        traces: TraceBook,
        webhooks: Webhooks | None,
        paused: PausedMembers,
        pools: dict[str, PoolRuntime],
        resolver: MxResolver,
        dispatcher: Dispatcher,
        experiments: Experiments,
        intake: IntakePipeline,
        dsn: DsnWriter,
        authenticate: Callable[[str, str], bool] | None,
        auth_throttle: AuthThrottle,
        connection_cap: ConnectionCap,
        state: State,
        suppressor: BounceSuppressor,
        book: ReputationBook,
        eligibility: Eligibility,
        feedback: FeedbackHandler,
        warmup: Warmup,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.worker = worker
        self.workers = config.workers
        self.data_dir = Path(config.data_dir)
        self.spool = spool
        self.peer_spools = peer_spools
        # The operator's view of the queue: worker 0 also reads its peers' shards.
        self.queue = ShardedQueue([spool, *peer_spools])
        self.delivery_log = delivery_log
        self.metrics = metrics
        self.live = live
        self.traces = traces
        self.webhooks = webhooks
        self.paused = paused
        self.pools = pools
        self.resolver = resolver
        self.dispatcher = dispatcher
        self.experiments = experiments
        self.intake = intake
        self.dsn = dsn
        self.authenticate = authenticate
        self.auth_throttle = auth_throttle
        self.connection_cap = connection_cap
        self.reputation_state = state  # the suppression list (and counters)
        self.suppressor = suppressor
        self.book = book  # reputation per member and member × provider
        self.eligibility = eligibility  # every pool's filters (reputation among them)
        self.feedback_handler = feedback
        self.warmup = warmup
        self.budget: ComplaintBudget | None = None  # [compliance] complaint_budget (app.py)
        self.http: HttpServer | None = None  # set by smtplb.app on worker 0
        self.heartbeats: Heartbeats | None = None  # worker 0, with [cluster] redis (app.py)
        # A cluster's: pauses and quarantines told to every node (worker 0's)
        self.member_bus: _MemberBus | None = None
        # Run at the end of start, and last on stop (smtplb.app adds the cluster link's)
        self.starters: list[Callable[[], object]] = []
        self.closers: list[Callable[[], Awaitable[None]]] = []
        self.listeners: list[Listener] = []
        self.started_at = time.time()
        self._drained = False  # by the operator (or, on a peer, by worker 0's flag)
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()  # one-off tasks (a reload)

    def members(self) -> Iterator[Member]:
        return all_members(self.pools)

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members() if m.name == name), None)

    # -- Operations: intake --------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._drained or self._stopping

    def drain(self) -> None:
        """Stop taking mail (421, /readyz 503); keep delivering what is queued."""
        self._drained = True
        if self.workers > 1 and self.worker == 0:
            set_drain_flag(self.data_dir, True)

    def undrain(self) -> None:
        """Take mail again (a drain undone; not a stop in progress)."""
        self._drained = False
        if self.workers > 1 and self.worker == 0:
            set_drain_flag(self.data_dir, False)

    async def inject(self, envelope: Envelope, content: bytes) -> str:
        return await self.intake.inject(envelope, content)

    # -- Operations: views -----------------------------------------------------------

    def _peer_snapshots(self) -> list[dict[str, Any]]:
        return read_snapshots(self.data_dir, self.workers) if self.workers > 1 else []

    async def refresh_gauges(self) -> None:
        """Bring state gauges up to date (called at each scrape)."""
        for member in self.members():
            self.metrics.set_member(
                member.pool,
                member.name,
                member.state,
                member.active,
                member.idle_connections,
                member.weight,
            )
            self.metrics.set_reputation(member.name, self.book.view(member.name))
            for provider, w in self.warmup.gate.views(member.name).items():
                self.metrics.set_warmup(member.pool, member.name, provider, w["cap"], w["sent"])
        self.metrics.set_queue(await self.spool.stats(), await self.spool.oldest_age(time.time()))
        # (with several workers each reports its own shard; worker 0's /metrics adds them up)
        self.metrics.set_waiting((p.name, p.waiting()) for p in self.pools.values())
        self.metrics.set_providers(self.provider_views())

    async def metrics_text(self) -> bytes:
        await self.refresh_gauges()
        body = self.metrics.render()
        peers = self._peer_snapshots()
        if peers:
            body = merge_metrics([body.decode(), *(p["metrics"] for p in peers)]).encode()
        return body

    def _own_member_views(self) -> list[dict[str, Any]]:
        return [
            {
                **m.snapshot(),
                **self.live.member_rates(m.name),
                "reputation": self.book.view(m.name),
                "warmup": self.warmup.gate.views(m.name),
            }
            for m in self.members()
        ]

    def member_views(self) -> list[dict[str, Any]]:
        """Every member as the node sees it: this worker's view, plus the counters of
        the other workers when there are several (health is the node's: worker 0 checks)."""
        return merge_members(self._own_member_views(), self._peer_snapshots())

    def pool_views(self) -> list[dict[str, Any]]:
        return [
            {
                "name": p.name,
                "strategy": p.config.strategy,
                "waiting": p.waiting(),
                "members": [m.name for m in p.members],
            }
            for p in self.pools.values()
        ]

    def compliance_view(self) -> dict[str, Any]:
        return compliance_view(self.config, self.budget)

    def lift_complaint_budget(self, domain: str) -> dict[str, Any] | None:
        """Let ``domain``'s marketing and bulk mail go for one window; None: the budget
        is off or has counted no mail of the domain in the window."""
        if self.budget is None or domain.lower() not in self.budget.standing():
            return None
        until = time.time() + float(self.config.reputation.window)
        self.budget.lift(domain, until)
        return {"domain": domain.lower(), "lifted_until": until}

    def provider_views(self) -> list[dict[str, Any]]:
        # This worker's shaping state (each worker shapes its own share of the traffic).
        return self.dispatcher.desk.shaping.snapshot(m.name for m in self.members())

    async def overview(self) -> dict[str, Any]:
        peers = self._peer_snapshots()
        members = merge_members(self._own_member_views(), peers)
        totals = dict(self.live.totals)
        series = self.live.series()
        errors = list(self.live.errors)
        waiting = {p.name: p.waiting() for p in self.pools.values()}
        merge_live(totals, series, errors, waiting, peers)
        return {
            "hostname": self.config.hostname,
            "version": __version__,
            "uptime": time.time() - self.started_at,
            "draining": self.draining,
            "workers": self.workers,
            "pools": [
                {
                    "name": p.name,
                    "strategy": p.config.strategy,
                    "waiting": waiting.get(p.name, 0),
                    "members": [m for m in members if m["pool"] == p.name],
                }
                for p in self.pools.values()
            ],
            # Providers this worker has sent to, or that are suspended (the panel).
            "providers": [p for p in self.provider_views() if p["members"] or p.get("suspended")],
            "queue": await self.queue.stats(),
            "queue_oldest_age": await self.queue.oldest_age(time.time()),
            "totals": totals,
            "series": series,
            "errors": errors[:50],
        }

    def snapshot(self, metrics: str | None = None) -> dict[str, Any]:
        """This worker's state for worker 0's API (see smtplb.workers); ``metrics``:
        its Prometheus text when already rendered."""
        return {
            "worker": self.worker,
            "members": self._own_member_views(),
            "waiting": {p.name: p.waiting() for p in self.pools.values()},
            "totals": self.live.totals,
            "series": self.live.series(),
            "errors": list(self.live.errors),
            "metrics": self.metrics.render().decode() if metrics is None else metrics,
        }

    async def _heartbeat(self) -> dict[str, Any]:
        """This node's record for the cluster view (see smtplb.cluster.heartbeat)."""
        return heartbeat(
            node=node_name(self.config.cluster.node),
            smtp=list(self.config.smtp.listen),
            http=self.config.http.listen,
            queue=await self.queue.stats(),
            members=self.member_views(),
            version=__version__,
            now=time.time(),
            draining=self.draining,
        )

    async def cluster(self) -> dict[str, Any]:
        beats = self.heartbeats
        others = await beats.nodes() if beats is not None else []
        state = beats.state if beats is not None else "off"
        return cluster_view(await self._heartbeat(), others, redis_state=state, now=time.time())

    # -- Operations: members -----------------------------------------------------------

    def pause(self, member: str) -> dict[str, Any] | None:
        return self._set_paused(member, True)

    def resume(self, member: str) -> dict[str, Any] | None:
        return self._set_paused(member, False)

    def _set_paused(self, name: str, paused: bool, by: str = "operator") -> dict[str, Any] | None:
        member = self.member(name)
        if member is None:
            return None
        member.paused = paused
        self.paused.set(name, paused)  # peers and the next start follow the file
        event = "member_paused" if paused else "member_resumed"
        self.delivery_log.write(member_record(event, member.pool, name, by))
        self.dispatcher.wake()
        if self.member_bus is not None and by == "operator":
            self.member_bus.tell("paused", name, paused)
        return next(m for m in self.member_views() if m["name"] == name)

    def quarantine(self, member: str) -> dict[str, Any] | None:
        if self.member(member) is None:
            return None
        self.book.quarantine(member)
        if self.member_bus is not None:
            self.member_bus.tell("quarantined", member, True)
        return next(m for m in self.member_views() if m["name"] == member)

    def release(self, member: str) -> dict[str, Any] | None:
        if self.member(member) is None:
            return None
        self.book.release(member)
        self.dispatcher.wake()
        if self.member_bus is not None:
            self.member_bus.tell("quarantined", member, False)
        return next(m for m in self.member_views() if m["name"] == member)

    def follow_cluster(self, flag: str, name: str, on: bool) -> None:
        """Another node's operator paused, resumed, quarantined or released ``name``."""
        member = self.member(name)
        if member is None:
            return
        if flag == "paused":
            if member.paused != on:
                self._set_paused(name, on, by="operator on another node")
        elif on != (self.book.view(name)["state"] == "quarantined"):
            if on:
                self.book.quarantine(name, "by the operator on another node")
            else:
                self.book.release(name)
                self.dispatcher.wake()

    async def feedback(self, report: Feedback) -> dict[str, Any]:
        return await self.feedback_handler.handle(report)

    async def _save_book(self) -> None:
        if self.book.dirty:
            self.book.dirty = False
            try:
                snapshot = json.dumps(self.book.snapshot()).encode()
                await self.reputation_state.save_book(self.worker, snapshot)
            except Exception:
                log.exception("could not save the reputation book")

    # -- Operations: queue ---------------------------------------------------------------

    async def queue_stats(self) -> tuple[dict[str, int], dict[str, float]]:
        return await self.queue.stats(), await self.queue.oldest_age(time.time())

    async def list_messages(
        self, state: RecipientState | None, limit: int, offset: int
    ) -> list[MessageView]:
        return await self.queue.list_messages(state=state, limit=limit, offset=offset)

    async def message(self, queue_id: str) -> MessageView | None:
        return await self.queue.get(queue_id)

    async def trace(self, queue_id: str) -> list[dict[str, Any]]:
        # The stored steps (every shard's, from before a restart too) and the newest
        # ones, which wait in memory for the spool's next commit.
        return self.traces.get(queue_id, await self.queue.trace(queue_id))

    async def retry(self, queue_id: str | None) -> int | None:
        count = await self.queue.retry(queue_id)
        if queue_id is not None and count == 0 and await self.queue.get(queue_id) is None:
            return None
        self.dispatcher.wake()
        return count

    async def delete(self, queue_id: str) -> bool:
        return await self.queue.delete(queue_id)

    # -- lifecycle -----------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        smtp = self.config.smtp
        if smtp.tls_cert is None or smtp.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(smtp.tls_cert, smtp.tls_key)
        return ctx

    async def start(self) -> None:
        await self.spool.open()
        saved = await self.reputation_state.load_book(self.worker)
        if saved is not None:
            self.book.load(json.loads(saved))
        if self.worker == 0:
            for peer in self.peer_spools:
                await peer.open()
            moved = await adopt_orphans(self.data_dir, self.workers, self.spool)
            if moved:
                log.info("adopted %d messages from the shards of removed workers", moved)
        smtp = self.config.smtp
        ctx = self._ssl_context()
        for addr in smtp.listen:
            host, port = parse_hostport(addr)
            listener = Listener(
                host=host,
                port=port,
                handler=self.intake,
                policy_for=self.intake.policy_for,
                ssl_context=ctx,
                authenticate=self.authenticate,
                idle_timeout=smtp.idle_timeout,
                data_timeout=smtp.data_timeout,
                command_deadline=smtp.command_deadline,
                max_connections_per_client=smtp.max_connections_per_client,
                cap=self.connection_cap,
                auth_throttle=self.auth_throttle,
                refuse=self.intake.refuse,
                reuse_port=smtp.reuse_port or self.workers > 1,
            )
            await listener.start()
            self.listeners.append(listener)
        if self.http is not None:
            await self.http.start()
        if self.webhooks is not None:
            self.webhooks.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.dispatcher.run()))
        self._tasks.append(loop.create_task(self._housekeeping()))
        if self.worker > 0:
            self._tasks.append(loop.create_task(peer_link(self).run()))
        elif self.heartbeats is not None:  # worker 0 beats for the node
            self._tasks.append(loop.create_task(self.heartbeats.run(self._heartbeat)))
        if self.config.health.checks and self.worker == 0:  # the peers follow its verdicts
            checker = HealthChecker(
                self.config.health, self._on_check_event, clock=self.dispatcher.clock
            )
            self._tasks.append(loop.create_task(checker.run(self.members)))
        for begin in self.starters:
            begin()
        log.info(
            "smtplb listening on %s (SMTP) and %s (HTTP)%s",
            ", ".join(f"{lst!r}" for lst in self.listeners),
            self.config.http.listen if self.http is not None else "worker 0",
            f", worker {self.worker} of {self.workers}" if self.workers > 1 else "",
        )

    async def _housekeeping(self) -> None:
        idle_after = self.config.delivery.connection_idle
        next_purge = time.monotonic() + 60
        published: dict[str, Any] = {}
        while True:
            await asyncio.sleep(0.5)
            self.delivery_log.flush()
            if (
                self.workers > 1
                and self.worker == 0
                and published != (v := verdicts(self.members()))
            ):
                write_health(self.data_dir, published := v)
            for member in self.members():
                member.close_idle(idle_after)
            await self._save_book()
            if self.config.experiments:
                await self.experiments.refresh()  # stops made by other workers or the CLI
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + 600
                keep = self.config.delivery.keep_final
                purged = await self.spool.purge(time.time() - keep)
                if purged:
                    log.info("purged %d finished messages older than %gs", purged, keep)

    def _on_check_event(self, member: Member, event: str, reason: str) -> None:
        self.dispatcher.member_event(member, event, reason)
        self.dispatcher.wake()

    def follow_drain(self, draining: bool) -> None:
        """Worker 0's drain flag changed (on workers 1…N-1: see smtplb.service_peers)."""
        self._drained = draining

    async def reload(self) -> None:
        """Re-read the config file (SIGHUP; see smtplb.service_reload)."""
        reload_config(self)

    # -- experiments (Operations) -------------------------------------------------------

    def experiment_views(self) -> list[dict[str, Any]]:
        return self.experiments.summary()

    async def experiment_report(self, name: str) -> dict[str, Any] | None:
        if name not in self.experiments.by_name:
            return None
        return await self.experiments.report(name)

    async def set_experiment_running(self, name: str, running: bool) -> dict[str, Any] | None:
        if name not in self.experiments.by_name:
            return None
        return await self.experiments.set_running(name, running)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a one-off task, holding a reference until it ends (the loop keeps
        only a weak one: an unreferenced task may be collected mid-way)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def stop(self) -> None:
        self._stopping = True
        for listener in self.listeners:
            await listener.stop()
        await self.dispatcher.stop()
        await self.experiments.flush()
        self.experiments.store.close()
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.http is not None:
            await self.http.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        if self.heartbeats is not None:
            await self.heartbeats.close()  # leaves the cluster view at once
        await self.intake.close()
        for peer in self.peer_spools:
            await peer.close()
        await self.suppressor.settle()
        await self._save_book()
        await self.spool.close()
        self.reputation_state.close()
        self.warmup.state.close()
        if self.budget is not None:
            self.budget.close()
        for close in self.closers:
            await close()
        self.delivery_log.close()

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.spawn(self.reload()) and None)
        await self.start()
        await stop.wait()
        log.info("stopping: draining intake, finishing deliveries in progress")
        await self.stop()

    @property
    def http_port(self) -> int:
        """The HTTP API's port (0 on workers without it, and before the start)."""
        return self.http.port if self.http is not None else 0

    def __repr__(self) -> str:
        state = "draining" if self.draining else "accepting"
        return (
            f"Service(worker {self.worker}, {state}, "
            f"{len(self.listeners)} listeners, {self.dispatcher!r})"
        )
