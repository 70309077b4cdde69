"""A member at run time: one sending path with its connections and health.

``relay`` members hand every message to one upstream (``host:port``);
``egress`` members resolve the recipient domain's MX and connect from their
own ``source_ip``. Both keep a small pool of open connections for reuse,
never more than ``max_connections`` open at once (in use plus idle) on the
node: with several workers each takes its share of the limit.

A member owns its health and counters: a delivery begins with :meth:`Member.start`
and its result comes back in one call, :meth:`Member.record`; active checks
report through :meth:`Member.record_check`. Whether it may take a job is for the
eligibility filters (:mod:`smtplb.balancing.eligibility`) to say, which read it
as a ``MemberView``. Time comes from the injected clock.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from smtplb.balancing.health import ActiveHealth, PassiveHealth, Transition
from smtplb.clock import Clock, SystemClock
from smtplb.config import MemberConfig
from smtplb.delivery.connection import (
    ConnectError,
    ConnectionSettings,
    SmtpClientConnection,
    TransactionResult,
)
from smtplb.delivery.mx import Destination, MxResolver
from smtplb.model import RecipientState
from smtplb.units import parse_hostport


@dataclass(slots=True)
class MemberCounters:
    delivered: int = 0
    deferred: int = 0  # deferred or expired after an attempt on this member
    bounced: int = 0
    failures: int = 0  # local-origin (connection-level) failures
    attempts: int = 0

    def count(self, state: RecipientState) -> None:
        self.attempts += 1
        if state is RecipientState.DELIVERED:
            self.delivered += 1
        elif state is RecipientState.BOUNCED:
            self.bounced += 1
        else:
            self.deferred += 1


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one delivery attempt came to, as the member's health and counters see it.

    ``answered``: the upstream answered the transaction (the circuit closes);
    ``failure``: a connection-level reason (refused, timeout, tls, dropped…),
    which counts towards ejection; neither: nothing was sent (no MX, or an
    internal error), health is unchanged. ``states``: each recipient's next
    state, counted (empty on a failure: the job fails over)."""

    states: Sequence[RecipientState] = ()
    answered: bool = False
    failure: str | None = None
    seconds: float = 0.0
    accepted: bool = False  # the upstream took the data (a latency sample that is a success)


@dataclass(slots=True)
class _Idle:
    conn: SmtpClientConnection
    since: float


@dataclass(slots=True)
class Delivered:
    """A finished transaction and where it went."""

    result: TransactionResult
    upstream: str
    latency: float  # seconds from start (incl. connect when a new connection was needed)


@dataclass(slots=True)
class Member:
    config: MemberConfig
    pool: str
    settings: ConnectionSettings
    health: PassiveHealth
    checks: ActiveHealth = field(default_factory=ActiveHealth)
    clock: Clock = field(default_factory=SystemClock)
    paused: bool = False
    slow_start: float = 0.0  # seconds to ramp up after recovering (0: off)
    ramp_since: float | None = None  # monotonic time the ramp started; None: fully up
    workers: int = 1  # worker processes on the node sharing max_connections
    active: int = 0  # deliveries in progress
    open_connections: int = 0
    counters: MemberCounters = field(default_factory=MemberCounters)
    _idle: dict[Destination, list[_Idle]] = field(default_factory=lambda: defaultdict(list))
    _relay: list[Destination] | None = field(init=False, default=None)
    # config.name, read by every filter of every pick: a plain attribute, not a property.
    name: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.reconfigure(self.config)

    def reconfigure(self, config: MemberConfig) -> None:
        """A new config for this member (a reload); the relay is parsed here, once."""
        self.config = config
        self.name = config.name
        relay = config.relay
        self._relay = None if relay is None else [Destination(*parse_hostport(relay))]

    @property
    def base_weight(self) -> float:
        return self.config.weight

    def ramp_at(self, now: float) -> float:
        """Slow start: the share from 0 to 1 a recovering member may take at ``now``."""
        if self.ramp_since is None or self.slow_start <= 0:
            return 1.0
        share = (now - self.ramp_since) / self.slow_start
        if share >= 1.0:
            return 1.0
        return max(share, 0.05)

    def weight_at(self, now: float) -> float:
        return self.config.weight * self.ramp_at(now)

    def start_ramp(self, now: float | None = None) -> None:
        if self.slow_start > 0:
            self.ramp_since = self.clock.monotonic() if now is None else now

    @property
    def weight(self) -> float:
        """The weight now (for operators)."""
        return self.weight_at(self.clock.monotonic())

    # -- results -------------------------------------------------------------------

    def start(self, now: float) -> None:
        """A delivery starts on this member (a probe, while half-open)."""
        self.active += 1
        self.health.started(now)

    def record(
        self, result: AttemptResult, now: float, *, may_eject: bool = True
    ) -> Transition | None:
        """A delivery that :meth:`start` began has ended: count it and update health.

        ``may_eject`` False: the pool already has its maximum share ejected.
        Returns the health transition worth logging, if any."""
        self.active -= 1
        c = self.counters
        for state in result.states:
            c.count(state)
        if result.failure is not None:
            c.failures += 1
            return self.health.failure(now, result.failure, may_eject=may_eject)
        if result.answered:
            transition = self.health.success(now)
            if transition is not None:
                self.start_ramp(now)
            return transition
        return None

    def record_check(self, ok: bool, reason: str, now: float) -> Transition | None:
        """One active health check's result (rise/fall, HAProxy meanings)."""
        transition = self.checks.observe(ok, reason)
        if ok:
            self.health.active_check_passed(now)
        if transition is not None and transition.event == "member_up":
            self.health.reset(now)
            self.start_ramp(now)
        return transition

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def source_ip(self) -> str | None:
        ip = self.config.source_ip
        return None if ip in (None, "0.0.0.0", "::") else ip

    @property
    def connection_limit(self) -> int:
        """This worker's share of ``max_connections`` (at least one)."""
        return max(1, -(-self.config.max_connections // self.workers))

    async def destinations(self, domain: str, resolver: MxResolver) -> list[Destination]:
        if self._relay is not None:
            return self._relay
        return await resolver.resolve(domain)

    async def deliver(
        self,
        destinations: list[Destination],
        mail_from: str,
        rcpts: list[str],
        data: bytes,
        *,
        smtputf8: bool = False,
        max_messages: int | None = None,
        plain_lines: bool = False,
    ) -> Delivered:
        """Send one transaction over a reused or new connection.

        Raises :class:`ConnectError` when no destination could be reached or the
        connection failed before the upstream answered the data. ``max_messages``:
        the provider's messages per connection, when lower than the member's.
        ``plain_lines``: see :meth:`ClientSession.send_transaction`.
        """
        start = self.clock.monotonic()
        last_error: ConnectError | None = None
        for dest in destinations:
            reused = self._take_idle(dest)
            # A reused connection the upstream has silently closed is not the
            # member's fault: one more try on a fresh connection.
            for conn_or_none in (reused, None) if reused is not None else (None,):
                conn = conn_or_none
                try:
                    if conn is None:
                        conn = await self._open(dest)
                    result = await conn.send(
                        mail_from, rcpts, data, smtputf8=smtputf8, plain_lines=plain_lines
                    )
                except ConnectError as exc:
                    last_error = exc
                    if conn is not None:
                        self._discard(conn)
                    continue
                self._release(dest, conn, max_messages)
                return Delivered(result, str(dest), self.clock.monotonic() - start)
        assert last_error is not None, "destinations is never empty"
        raise last_error

    def _take_idle(self, dest: Destination) -> SmtpClientConnection | None:
        idle = self._idle.get(dest)
        while idle:
            entry = idle.pop()
            if entry.conn.is_usable:
                return entry.conn
            self._discard(entry.conn)
        return None

    async def _open(self, dest: Destination) -> SmtpClientConnection:
        if self.open_connections >= self.connection_limit:
            self._close_one_idle()
        self.open_connections += 1
        try:
            return await SmtpClientConnection.open(
                dest.address or dest.host, dest.port, self.settings, source_ip=self.source_ip
            )
        except BaseException:
            self.open_connections -= 1
            raise

    def _release(
        self, dest: Destination, conn: SmtpClientConnection, max_messages: int | None = None
    ) -> None:
        limit = self.config.max_messages_per_connection
        if max_messages is not None:
            limit = min(limit, max_messages)
        if conn.is_usable and conn.messages_sent < limit and not self.paused:
            self._idle[dest].append(_Idle(conn, self.clock.monotonic()))
        else:
            self._discard(conn, polite=conn.is_usable)

    def _discard(self, conn: SmtpClientConnection, *, polite: bool = False) -> None:
        self.open_connections -= 1
        if polite:
            task = asyncio.get_running_loop().create_task(conn.quit())
            _background.add(task)
            task.add_done_callback(_background.discard)
        else:
            conn.abort()

    def _close_one_idle(self) -> None:
        oldest: tuple[float, Destination] | None = None
        for dest, entries in self._idle.items():
            if entries and (oldest is None or entries[0].since < oldest[0]):
                oldest = (entries[0].since, dest)
        if oldest is not None:
            entry = self._idle[oldest[1]].pop(0)
            self._discard(entry.conn, polite=True)

    def close_idle(self, older_than: float) -> int:
        """Close idle connections unused for ``older_than`` seconds (all when 0)."""
        now = self.clock.monotonic()
        closed = 0
        for entries in self._idle.values():
            keep = [e for e in entries if now - e.since < older_than]
            for e in entries:
                if now - e.since >= older_than:
                    self._discard(e.conn, polite=True)
                    closed += 1
            entries[:] = keep
        return closed

    def snapshot(self) -> dict[str, Any]:
        """What operators see of this member (the API, the dashboard, peer workers)."""
        c = self.counters
        return {
            "name": self.name,
            "pool": self.pool,
            "kind": self.kind,
            "target": self.config.relay or self.config.source_ip,
            "weight": self.weight,
            "health": self.state,
            "paused": self.paused,
            "active": self.active,
            "idle_connections": self.idle_connections,
            "max_connections": self.connection_limit,
            "delivered": c.delivered,
            "deferred": c.deferred,
            "bounced": c.bounced,
            "failures": c.failures,
        }

    @property
    def idle_connections(self) -> int:
        return sum(len(v) for v in self._idle.values())

    @property
    def state(self) -> str:
        """One word for operators: paused, down (checks), ejected, half_open or up."""
        if self.paused:
            return "paused"
        if not self.checks.up:
            return "down"
        return self.health.state_at(self.clock.monotonic()).value

    def __repr__(self) -> str:
        state = self.state
        return (
            f"Member({self.name!r}, {state}, {self.active} active, "
            f"{self.idle_connections} idle, max {self.connection_limit})"
        )


_background: set[asyncio.Task[None]] = set()
