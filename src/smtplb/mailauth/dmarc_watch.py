"""A From domain of marketing or bulk mail that publishes no DMARC record is warned
about once per domain per day (SPEC §2.5): Gmail and Yahoo require DMARC of bulk
senders, and such mail is likely to be junked or refused.

The lookup never holds a message up: intake calls :meth:`DmarcWatch.note`, which at
most starts a background lookup (dnspython's async resolver, ``[dns] nameservers``)
for a domain not looked at for a day. A failed lookup warns nothing and is retried on
the domain's next message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from smtplb.clock import Clock
from smtplb.mailauth.check import organizational_domain
from smtplb.units import parse_hostport

log = logging.getLogger("smtplb")

DAY = 86400.0
MAX_DOMAINS = 10_000

# True: a record exists; False: none at the domain or its organisational domain;
# None: the lookup failed (retried later).
Lookup = Callable[[str], Awaitable[bool | None]]


def dmarc_names(domain: str) -> list[str]:
    """Where a receiver looks (RFC 7489 §6.6.3): the domain, then its organisational one."""
    return [f"_dmarc.{d}" for d in dict.fromkeys([domain, organizational_domain(domain)])]


class DmarcWatch:
    def __init__(
        self, lookup: Lookup, clock: Clock, on_missing: Callable[[str], None] | None = None
    ) -> None:
        self.lookup = lookup
        self.clock = clock
        self.on_missing = on_missing  # counts it (a metric), besides the log line
        self._checked: dict[str, float] = {}  # domain → when its lookup last finished or began
        self._tasks: set[asyncio.Task[None]] = set()

    def due(self, domain: str) -> bool:
        """Whether ``domain`` is to be looked up now (pure: no lookup started)."""
        last = self._checked.get(domain)
        return last is None or self.clock.monotonic() - last >= DAY

    def note(self, domain: str) -> None:
        """Marketing or bulk mail From ``domain`` was accepted: look it up if due."""
        domain = domain.lower().rstrip(".")
        if not domain or not self.due(domain):
            return
        if len(self._checked) >= MAX_DOMAINS:
            self._checked.clear()
        self._checked[domain] = self.clock.monotonic()  # one lookup at a time per domain
        task = asyncio.get_running_loop().create_task(self._check(domain))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, domain: str) -> None:
        found = await self.lookup(domain)
        if found is None:
            self._checked.pop(domain, None)  # try again with its next message
            return
        self._checked[domain] = self.clock.monotonic()
        if not found:
            log.warning(
                "compliance: From domain %s publishes no DMARC record (%s): bulk mail "
                "from it may be refused or junked by Gmail and Yahoo (warned once a day)",
                domain,
                " or ".join(dmarc_names(domain)),
            )
            if self.on_missing is not None:
                self.on_missing(domain)

    async def settle(self) -> None:
        """Until the lookups started so far have finished (for tests and shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Cancel the lookups still running (the service is stopping)."""
        for task in self._tasks:
            task.cancel()
        await self.settle()

    def __repr__(self) -> str:
        return f"DmarcWatch({len(self._checked)} domains, {len(self._tasks)} lookups running)"


def dns_lookup(nameservers: list[str], timeout: float = 5.0) -> Lookup:
    """The :data:`Lookup` over dnspython's async resolver."""
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        servers: list[dns.nameserver.Nameserver | str] = []
        for server in nameservers:
            host, port = parse_hostport(server)
            servers.append(dns.nameserver.Do53Nameserver(host, port))
        resolver.nameservers = servers
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout

    async def lookup(domain: str) -> bool | None:
        for name in dmarc_names(domain):
            try:
                answer = await resolver.resolve(name, "TXT")
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException:
                return None
            texts = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
            if any(t.startswith("v=DMARC1") for t in texts):
                return True
        return False

    return lookup
