"""The dispatcher's provider desk: which provider a job is for, and what the
provider's replies mean for the member that sent it.

A job's provider is known before a member is chosen: from the recipient domain
at once, else (for pools that deliver by MX) from the suffix of the domain's
MX hosts, looked up once per domain through the resolver's cache. Until then
the job is :data:`~smtplb.routing.providers.OTHER`.

Around each delivery the desk tells :class:`~smtplb.reputation.shaping.Shaping`
that it started (a token, a connection) and ended (the adaptive window), and
runs each reply through the response rules: a rule that suspends or throttles
is written to the delivery log as a ``suspended`` event (with ``rule`` and
``until``; the webhooks and metrics read it there), ``defer`` and ``bounce``
change the recipient's reply, ``reduce_connections`` shrinks the window.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from smtplb.clock import Clock
from smtplb.delivery.connection import ConnectError
from smtplb.delivery.member import Member
from smtplb.delivery.mx import MxResolver, ResolveError
from smtplb.delivery.pools import Job, PoolRuntime
from smtplb.observability.delivery_log import DeliveryLog
from smtplb.observability.record import DeliveryRecord
from smtplb.observability.trace import TraceBook
from smtplb.reputation.shaping import Fired, Shaping, is_overload
from smtplb.routing.providers import OTHER, ProviderTable
from smtplb.smtp.reply import Reply

log = logging.getLogger("smtplb.delivery")

# Connection-level failures that say "fewer connections": the window shrinks.
_OVERLOAD_REASONS = ("refused", "banner", "dropped")


class ProviderDesk:
    def __init__(
        self,
        shaping: Shaping,
        resolver: MxResolver,
        delivery_log: DeliveryLog,
        traces: TraceBook,
        clock: Clock,
    ) -> None:
        self.shaping = shaping
        self.resolver = resolver
        self.log = delivery_log
        self.traces = traces
        self.clock = clock

    @property
    def table(self) -> ProviderTable:
        return self.shaping.providers

    # -- recognition --------------------------------------------------------------

    def recognise_now(self, job: Job, pool: PoolRuntime | None) -> bool:
        """Set the job's provider if the domain says it; False: an MX lookup may tell."""
        by_domain = self.table.by_domain(job.domain)
        if by_domain is not None:
            self._set(job, by_domain, "recipient domain")
            return True
        job.set_provider(OTHER)
        if not self._by_mx(job.domain, pool):
            return True
        hosts = self.resolver.cached_mx_hosts(job.domain)
        if hosts is None:
            return False  # look it up first
        by_mx = self.table.by_mx(hosts)
        if by_mx is not None:
            self._set(job, by_mx, f"MX {hosts[0]}")
        return True

    def provider_hint(self, domain: str, pool: PoolRuntime | None) -> str | None:
        """The provider as known without waiting (intake's `received` record): by the
        domain, else by MX hosts already in the resolver's cache; None while an MX
        lookup that has not happened yet may still tell (delivery will know)."""
        by_domain = self.table.by_domain(domain)
        if by_domain is not None:
            return by_domain
        hosts = self.resolver.cached_mx_hosts(domain)
        if hosts:
            return self.table.by_mx(hosts) or OTHER
        return None if self._by_mx(domain, pool) else OTHER

    def _by_mx(self, domain: str, pool: PoolRuntime | None) -> bool:
        """Whether an MX lookup may name the provider: the pool delivers by MX."""
        if pool is None or not pool.delivers_by_mx:
            return False
        return self.resolver.static_route(domain) is None

    async def recognise(self, job: Job) -> None:
        """By the domain's MX hosts (cached); a failed lookup leaves it ``other``
        (the delivery meets the same cached error and defers or bounces)."""
        try:
            hosts = await self.resolver.mx_hosts(job.domain)
        except ResolveError:
            return
        by_mx = self.table.by_mx(hosts)
        if by_mx is not None:
            self._set(job, by_mx, f"MX {hosts[0]}")

    def _set(self, job: Job, provider: str, how: str) -> None:
        job.set_provider(provider)
        self.traces.add(job.message.queue_id, "provider", provider, how)

    # -- around a delivery --------------------------------------------------------

    def started(self, job: Job, member: Member, now: float) -> None:
        self.shaping.started(member.name, job.provider, now)

    def max_messages(self, job: Job) -> int | None:
        p = self.table.get(job.provider)
        return None if p is None else p.max_messages_per_connection

    def judge(
        self, job: Job, member: Member, replies: Sequence[Reply], now: float
    ) -> tuple[list[Reply], bool]:
        """The recipients' replies after the response rules (``defer``/``bounce``), and
        whether they asked for fewer connections (a 421)."""
        out: list[Reply] = []
        seen: dict[Reply, Fired | None] = {}
        several = len(replies) > 1
        for reply in replies:
            # A reply given to several recipients fires its rule once. (A Reply's
            # hash is computed in Python each time: none for a lone recipient.)
            if seen and reply in seen:
                fired = seen[reply]
            else:
                fired = self._fire(job, member, reply, now)
                if several:
                    seen[reply] = fired
            if fired is not None and fired.rule.action == "defer" and not reply.is_transient:
                reply = Reply(451, "4.7.0", f"{reply} (deferred by rule {fired.rule.name})")
            elif fired is not None and fired.rule.action == "bounce" and not reply.is_permanent:
                reply = Reply(550, "5.7.0", f"{reply} (bounced by rule {fired.rule.name})")
            out.append(reply)
        return out, any(is_overload(r) for r in replies)

    def judge_failure(
        self, job: Job, member: Member, exc: ConnectError, now: float
    ) -> tuple[bool, bool, bool]:
        """A connection-level failure: whether a response rule took it (a provider
        limiting this member is not the member being unhealthy), whether it asks for
        fewer connections, and whether the job should simply wait for this member
        (a connection limit met while others of its connections are busy: the
        window has shrunk, a slot frees soon; failing over would be for nothing)."""
        overloaded = exc.reason in _OVERLOAD_REASONS and (
            exc.reply is None or is_overload(exc.reply)
        )
        if exc.reply is None:
            return False, overloaded, False
        fired = self._fire(job, member, exc.reply, now)
        if fired is None:
            return False, overloaded, False
        busy = self.shaping.lane(member.name, job.provider, now).active > 1
        wait = fired.rule.action == "reduce_connections" and busy
        return True, overloaded, wait

    def finished(self, job: Job, member: Member, now: float, *, overloaded: bool) -> None:
        if self.shaping.finished(member.name, job.provider, now, overloaded=overloaded):
            member.close_idle(0)  # fewer connections from now: the idle ones go first

    def _fire(self, job: Job, member: Member, reply: Reply, now: float) -> Fired | None:
        fired = self.shaping.on_reply(member.name, job.provider, reply, now)
        if fired is None or not fired.new or not fired.until:
            return fired
        action = fired.rule.action
        log.warning(
            "rule %s (%s) fired for %s on %s: %s",
            fired.rule.name,
            action,
            job.provider,
            member.name,
            fired.line,
        )
        self.log.write(
            DeliveryRecord(
                event="suspended",
                queue_id=job.message.queue_id,
                recipient_domain=job.domain,
                provider=job.provider,
                pool=member.pool,
                member=None if action == "suspend_provider" else member.name,
                source_ip=member.source_ip,
                code=reply.code,
                enhanced_code=reply.enhanced_code,
                response=f"{action}: {fired.line}",
                rule=fired.rule.name,
                until=round(self.shaping.wall(fired.until), 3),
            )
        )
        return fired

    def __repr__(self) -> str:
        return f"ProviderDesk({self.table!r}, {self.shaping!r})"
