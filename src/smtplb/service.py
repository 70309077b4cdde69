"""The running service: wires intake → spool → routing → balancing → delivery.

One event loop carries the SMTP listeners, the HTTP API, the dispatcher and
the spool's writer thread. SIGTERM drains: intake stops (421), deliveries in
progress finish, the rest stays in the spool. SIGHUP reloads pools, routes,
static routes and retry settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import secrets
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from smtplb.balancing import make_strategy
from smtplb.balancing.health import ActiveHealth, PassiveHealth
from smtplb.clock import SystemClock
from smtplb.config import Config, MemberConfig, PoolConfig, load_config, parse_hostport
from smtplb.delivery.connection import ConnectionSettings
from smtplb.delivery.dispatcher import BounceNotice, Dispatcher, PoolRuntime
from smtplb.delivery.dsn import build_dsn
from smtplb.delivery.health_check import HealthChecker
from smtplb.delivery.member import Member
from smtplb.delivery.mx import MxResolver
from smtplb.delivery.outcome import RetrySchedule
from smtplb.intake.auth import AuthThrottle, make_authenticator
from smtplb.intake.headers import prepare_message
from smtplb.intake.server import ConnectionCap, Listener
from smtplb.intake.session import SessionPolicy
from smtplb.model import Envelope, Reply, domain_of
from smtplb.observability.delivery_log import DeliveryLog
from smtplb.observability.live import LiveStats
from smtplb.observability.metrics import Metrics
from smtplb.observability.trace import TraceBook
from smtplb.observability.webhooks import Webhooks
from smtplb.routing.routes import RoutingInput, classify_content, decide_route
from smtplb.spool.base import ClaimedMessage, ClaimedRecipient, NewMessage, NewRecipient, SpoolError
from smtplb.spool.shards import ShardedQueue, adopt_orphans, shard_path
from smtplb.spool.sqlite import SqliteSpool
from smtplb.workers import drain_flag, write_snapshot

log = logging.getLogger("smtplb")


_QUEUE_ID_PROCESS = f"{secrets.randbits(20):05X}"  # tells this process's ids apart
_QUEUE_ID_COUNTER = itertools.count()


def new_queue_id() -> str:
    """20 hex digits: milliseconds (sortable by arrival), a per-process random part,
    and a counter — unique without a system call per message."""
    n = next(_QUEUE_ID_COUNTER) & 0xFFFF
    return f"{int(time.time() * 1000):011X}{_QUEUE_ID_PROCESS}{n:04X}"


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


class Service:
    def __init__(self, config: Config, config_path: Path | None = None, worker: int = 0) -> None:
        self.config = config
        self.config_path = config_path
        self.worker = worker
        self.workers = config.workers
        self.data_dir = Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = SqliteSpool(shard_path(self.data_dir, worker))
        # The operator's view of the queue: worker 0 also reads its peers' shards.
        self.peer_spools = [
            SqliteSpool(shard_path(self.data_dir, i), recover=False)
            for i in range(1, self.workers)
            if worker == 0
        ]
        self.queue = ShardedQueue([self.spool, *self.peer_spools])
        self.delivery_log = DeliveryLog(
            self.data_dir / "logs" / "delivery.jsonl",
            max_size=config.log.delivery_log_max_size,
            keep=config.log.delivery_log_keep,
            rotates=worker == 0,
        )
        self.metrics = Metrics()
        self.live = LiveStats()
        self.delivery_log.listeners += [self.metrics.on_record, self.live.on_record]
        self.webhooks: Webhooks | None = None
        if config.webhooks:
            self.webhooks = Webhooks(config.webhooks)
            self.delivery_log.listeners.append(self.webhooks.on_record)
        self.traces = TraceBook()
        self.paused = PausedMembers(self.data_dir / "paused-members")
        self.pools = self._build_pools(config, {})
        self.resolver = MxResolver(config.static_routes)
        self.dispatcher = Dispatcher(
            spool=self.spool,
            pools=self.pools,
            resolver=self.resolver,
            delivery_log=self.delivery_log,
            schedule=self._schedule(config),
            max_in_flight=config.delivery.max_in_flight,
            max_ejection_percent=config.health.max_ejection_percent,
            on_bounce=self.send_dsn,
            traces=self.traces,
        )
        self.listeners: list[Listener] = []
        self.draining = False
        self.started_at = time.time()
        self._relay_networks = [
            ipaddress.ip_network(n, strict=False) for n in config.smtp.relay_networks
        ]
        self._authenticate = make_authenticator(
            {u.name: u.password_hash for u in config.smtp.users}
        )
        smtp = config.smtp
        # smtp.max_connections is for the node: each worker takes its share.
        self._connection_cap = ConnectionCap(max(1, -(-smtp.max_connections // self.workers)))
        self._auth_throttle = AuthThrottle(
            SystemClock(),
            max_failures=smtp.auth_max_failures,
            lockout=smtp.auth_lockout,
            delay=smtp.auth_delay,
            max_delay=smtp.auth_max_delay,
        )
        self._policies: dict[str, SessionPolicy] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._http: _EmbeddedServer | None = None
        self._http_task: asyncio.Task[None] | None = None
        self.http_port = 0

    # -- building blocks -----------------------------------------------------------

    @staticmethod
    def _schedule(config: Config) -> RetrySchedule:
        d = config.delivery
        return RetrySchedule(d.retry_base, d.retry_max, d.retry_jitter)

    def _settings(self, m: MemberConfig) -> ConnectionSettings:
        d = self.config.delivery
        return ConnectionSettings(
            ehlo_name=m.ehlo or self.config.hostname,
            tls=m.tls,  # type: ignore[arg-type]  # validated by config
            implicit_tls=m.implicit_tls,
            tls_verify=m.tls_verify,
            username=m.username,
            password=m.password,
            connect_timeout=d.connect_timeout,
            command_timeout=d.command_timeout,
            data_timeout=d.data_timeout,
        )

    def _build_pools(self, config: Config, existing: dict[str, Member]) -> dict[str, PoolRuntime]:
        paused = self.paused.load()
        pools: dict[str, PoolRuntime] = {}
        for pc in config.pools:
            members = [self._member(pc, mc, existing, paused) for mc in pc.members]
            strategy = make_strategy(pc)
            pools[pc.name] = PoolRuntime(pc, members, strategy)
        return pools

    def _member(
        self, pc: PoolConfig, mc: MemberConfig, existing: dict[str, Member], paused: set[str]
    ) -> Member:
        old = existing.get(mc.name)
        if old is not None and old.pool == pc.name:
            old.reconfigure(mc)
            old.settings = self._settings(mc)
            old.health.fall = self.config.health.fall
            old.slow_start = self.config.health.slow_start
            return old
        hc = self.config.health
        health = PassiveHealth(
            fall=hc.fall, base_ejection=hc.base_ejection, max_ejection=hc.max_ejection
        )
        member = Member(
            mc,
            pc.name,
            self._settings(mc),
            health,
            checks=ActiveHealth(rise=hc.rise, fall=hc.fall),
            paused=mc.name in paused,
            slow_start=self.config.health.slow_start,
            workers=self.workers,
        )
        if existing:  # added by a reload, not present at start: ramp up
            member.start_ramp()
        return member

    def members(self) -> Iterator[Member]:
        for pool in self.pools.values():
            yield from pool.members

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members() if m.name == name), None)

    # -- intake --------------------------------------------------------------------

    def policy_for(self, client_ip: str) -> SessionPolicy:
        """The session policy for a client address (cached: asked at every connection)."""
        policy = self._policies.get(client_ip)
        if policy is None:
            if len(self._policies) > 10_000:
                self._policies.clear()
            policy = self._policies[client_ip] = self._make_policy(client_ip)
        return policy

    def _make_policy(self, client_ip: str) -> SessionPolicy:
        smtp = self.config.smtp
        try:
            addr = ipaddress.ip_address(client_ip)
            relay_ok = any(addr in net for net in self._relay_networks)
        except ValueError:
            relay_ok = False
        return SessionPolicy(
            hostname=self.config.hostname,
            max_message_size=smtp.max_message_size,
            max_recipients=smtp.max_recipients,
            max_line_length=smtp.max_line_length,
            max_errors=smtp.max_errors,
            starttls_available=smtp.tls_cert is not None,
            auth_enabled=bool(smtp.users),
            auth_without_tls=smtp.auth_without_tls,
            require_auth=smtp.require_auth,
            relay_allowed=relay_ok and not smtp.require_auth,
        )

    def refuse(self) -> Reply | None:
        if self.draining:
            return Reply(421, "4.3.2", f"{self.config.hostname} is draining, try another server")
        return None

    async def handle_message(self, envelope: Envelope, data: bytes) -> Reply:
        if self.draining:
            self.metrics.intake.labels("smtp", "4xx").inc()
            return Reply(421, "4.3.2", "service draining, try again later")
        try:
            queue_id = await self.submit(envelope, data)
        except SpoolError as exc:
            log.error("spool write failed: %s", exc)
            self.metrics.intake.labels("smtp", "4xx").inc()
            return Reply(451, "4.3.0", "temporary local problem, try again later")
        self.metrics.intake.labels("smtp", "2xx").inc()
        return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")

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
        self.metrics.set_queue(await self.spool.stats(), await self.spool.oldest_age(time.time()))
        # (with several workers each reports its own shard; worker 0's /metrics adds them up)
        self.metrics.set_waiting((p.name, p.waiting()) for p in self.pools.values())

    async def submit(self, envelope: Envelope, data: bytes, *, is_dsn: bool = False) -> str:
        """Route, store durably (fsync) and hand to delivery. Raises SpoolError."""
        now = time.time()
        queue_id = new_queue_id()
        content, headers, message_id = prepare_message(
            data, envelope, self.config.hostname, queue_id, now
        )
        content_class = classify_content(headers, len(envelope.rcpt_to))
        default_pool = self.config.pools[0].name
        recipients = []
        for rcpt in envelope.rcpt_to:
            decision = decide_route(
                self.config.routes,
                default_pool,
                RoutingInput(
                    envelope.mail_from,
                    rcpt,
                    headers,
                    content_class,
                    envelope.auth_user,
                    envelope.client_ip,
                ),
            )
            content_class = decision.content_class
            recipients.append(NewRecipient(rcpt, decision.pool, decision.priority))
            self.traces.add(
                queue_id,
                "routed",
                rcpt,
                decision.route_index,
                decision.pool,
                decision.priority,
                decision.content_class,
            )
        message = NewMessage(
            queue_id=queue_id,
            sender=envelope.mail_from,
            recipients=tuple(recipients),
            content=content,
            message_id=message_id,
            received_at=now,
            expires_at=now + self.config.delivery.max_lifetime,
            client_ip=envelope.client_ip,
            auth_user=envelope.auth_user,
            content_class=content_class,
            is_dsn=is_dsn,
        )
        inflight = self.dispatcher.has_room()
        rids = await self.spool.store(message, inflight=inflight)
        for r in recipients:
            self.delivery_log.write(
                "received",
                queue_id=queue_id,
                message_id=message_id,
                sender=envelope.mail_from,
                recipient=r.address,
                recipient_domain=domain_of(r.address),
                pool=r.pool,
                client_ip=envelope.client_ip,
                size=len(content),
                **{"class": content_class},
            )
        if not inflight:
            self.dispatcher.note_overflow()
        else:
            self.dispatcher.submit(
                ClaimedMessage(
                    msg_pk=0,
                    queue_id=queue_id,
                    sender=envelope.mail_from,
                    message_id=message_id,
                    content=content,
                    received_at=now,
                    expires_at=message.expires_at,
                    content_class=content_class,
                    is_dsn=is_dsn,
                    recipients=[
                        ClaimedRecipient(rid, r.address, r.pool, r.priority, 0)
                        for rid, r in zip(rids, recipients, strict=True)
                    ],
                )
            )
        return queue_id

    async def send_dsn(self, notice: BounceNotice) -> None:
        now = time.time()
        content = build_dsn(
            reporting_mta=self.config.hostname,
            original_sender=notice.sender,
            original_queue_id=notice.queue_id,
            original_content=notice.content,
            arrival_date=notice.received_at,
            recipients=notice.recipients,
            now=now,
            expired=notice.expired,
        )
        envelope = Envelope(
            mail_from="", rcpt_to=[notice.sender], helo="localhost", client_ip="127.0.0.1"
        )
        try:
            await self.submit(envelope, content, is_dsn=True)
        except SpoolError:
            log.exception("could not queue the DSN for %s", notice.queue_id)

    # -- lifecycle -----------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        smtp = self.config.smtp
        if smtp.tls_cert is None or smtp.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(smtp.tls_cert, smtp.tls_key)
        return ctx

    async def start(self) -> None:
        await self.spool.open()
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
                handler=self,
                policy_for=self.policy_for,
                ssl_context=ctx,
                authenticate=self._authenticate if smtp.users else None,
                idle_timeout=smtp.idle_timeout,
                data_timeout=smtp.data_timeout,
                command_deadline=smtp.command_deadline,
                max_connections_per_client=smtp.max_connections_per_client,
                cap=self._connection_cap,
                auth_throttle=self._auth_throttle,
                refuse=self.refuse,
                reuse_port=smtp.reuse_port or self.workers > 1,
            )
            await listener.start()
            self.listeners.append(listener)
        if self.worker == 0:
            await self._start_http()
        if self.webhooks is not None:
            self.webhooks.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.dispatcher.run()))
        self._tasks.append(loop.create_task(self._housekeeping()))
        if self.worker > 0:
            self._tasks.append(loop.create_task(self._peer_loop()))
        if self.config.health.checks:
            checker = HealthChecker(self.config.health, self._on_check_event)
            self._tasks.append(loop.create_task(checker.run(self.members)))
        log.info(
            "smtplb listening on %s (SMTP) and %s (HTTP)%s",
            ", ".join(f"{lst!r}" for lst in self.listeners),
            self.config.http.listen if self.worker == 0 else "worker 0",
            f", worker {self.worker} of {self.workers}" if self.workers > 1 else "",
        )

    async def _start_http(self) -> None:
        from smtplb.api import create_app

        host, port = parse_hostport(self.config.http.listen)
        config = uvicorn.Config(
            create_app(self),
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        self._http = _EmbeddedServer(config)
        task = asyncio.get_running_loop().create_task(self._http.serve())
        self._http_task = task
        while not self._http.started:
            if task.done():
                task.result()
                raise RuntimeError(f"HTTP server on {self.config.http.listen} did not start")
            await asyncio.sleep(0.01)
        self.http_port = self._http.servers[0].sockets[0].getsockname()[1]

    async def _housekeeping(self) -> None:
        idle_after = self.config.delivery.connection_idle
        next_purge = time.monotonic() + 60
        while True:
            await asyncio.sleep(0.5)
            self.delivery_log.flush()
            for member in self.members():
                member.close_idle(idle_after)
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + 600
                keep = self.config.delivery.keep_final
                purged = await self.spool.purge(time.time() - keep)
                if purged:
                    log.info("purged %d finished messages older than %gs", purged, keep)

    def _on_check_event(self, member: Member, event: str, reason: str) -> None:
        self.dispatcher.member_event(member, event, reason)
        self.dispatcher.wake()

    def drain(self) -> None:
        """Stop taking mail (421, /readyz 503); keep delivering what is queued."""
        self.draining = True
        if self.workers > 1 and self.worker == 0:
            drain_flag(self.data_dir).parent.mkdir(parents=True, exist_ok=True)
            drain_flag(self.data_dir).touch()

    def snapshot(self) -> dict[str, Any]:
        """This worker's state for worker 0's API (see smtplb.workers)."""
        return {
            "worker": self.worker,
            "members": [{**m.snapshot(), **self.live.member_rates(m.name)} for m in self.members()],
            "waiting": {p.name: p.waiting() for p in self.pools.values()},
            "totals": self.live.totals,
            "series": self.live.series(),
            "errors": list(self.live.errors),
            "metrics": self.metrics.render().decode(),
        }

    async def _peer_loop(self) -> None:
        """Workers 1…N-1: publish state, follow pauses and the drain flag."""
        paused_mtime = 0.0
        while True:
            await self.refresh_gauges()
            write_snapshot(self.data_dir, self.worker, self.snapshot())
            try:
                mtime = self.paused.path.stat().st_mtime
            except FileNotFoundError:
                mtime = -1.0
            if mtime != paused_mtime:
                paused_mtime = mtime
                names = self.paused.load()
                for member in self.members():
                    member.paused = member.name in names
                self.dispatcher.wake()
            if not self.draining and drain_flag(self.data_dir).exists():
                self.draining = True
            await asyncio.sleep(0.5)

    async def reload(self) -> None:
        """Re-read the config file: pools, members, routes, static routes, retry
        settings, SMTP limits and relay_networks change; listeners need a restart."""
        if self.config_path is None:
            log.info("SIGHUP: no config file to reload")
            return
        try:
            new = load_config(self.config_path)
        except Exception as exc:
            log.error("reload failed, keeping the running config: %s", exc)
            return
        existing = {m.name: m for m in self.members()}
        self.config = new
        self._relay_networks = [
            ipaddress.ip_network(n, strict=False) for n in new.smtp.relay_networks
        ]
        self._policies.clear()  # limits and relay_networks apply to new connections
        self.pools.clear()
        self.pools.update(self._build_pools(new, existing))
        self.resolver.static = MxResolver(new.static_routes).static
        self.dispatcher.schedule = self._schedule(new)
        log.info("configuration reloaded from %s", self.config_path)
        self.dispatcher.wake()

    async def stop(self) -> None:
        self.draining = True
        for listener in self.listeners:
            await listener.stop()
        await self.dispatcher.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await self._http_task
        if self.webhooks is not None:
            await self.webhooks.stop()
        for peer in self.peer_spools:
            await peer.close()
        await self.spool.close()
        self.delivery_log.close()

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()) and None)
        await self.start()
        await stop.wait()
        log.info("stopping: draining intake, finishing deliveries in progress")
        await self.stop()

    def __repr__(self) -> str:
        return f"Service({len(self.listeners)} listeners, {self.dispatcher!r})"


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our loop: the service owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
