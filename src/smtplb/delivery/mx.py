"""Where mail for a domain goes: ``static_routes`` first (as Postfix transport
maps), else MX records, then the MX hosts' addresses, through dnspython's async
resolver (the system's, or ``[dns] nameservers``), cached by TTL.

Answers are cached for their TTL (capped); failures are cached too (negative
caching, RFC 2308: NXDOMAIN for the SOA minimum when the answer carries one,
else ``negative_ttl``; SERVFAIL and timeouts for a short while so that a
broken domain does not cost a lookup per message). NXDOMAIN and a null MX
(RFC 7505) are permanent (bounce, 5.1.2 and 5.1.10); SERVFAIL, timeouts and
no resolver are transient (defer, 4.4.3).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from smtplb.clock import Clock, SystemClock
from smtplb.units import parse_hostport

TRANSIENT_TTL = 5.0  # SERVFAIL / timeout: ask again after this long


@dataclass(frozen=True, slots=True)
class Destination:
    host: str  # the name (MX host or relay), for logs and TLS
    port: int
    address: str = ""  # the IP to connect to; "" lets the OS resolve ``host``

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class ResolveError(Exception):
    """No destination. ``permanent`` means the domain cannot take mail (bounce)."""

    def __init__(self, message: str, *, permanent: bool, enhanced_code: str) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.enhanced_code = enhanced_code


_Entry = tuple[float, "list[str] | ResolveError"]
_Lookup = Callable[[str], Awaitable[tuple[list[str], float]]]


class MxResolver:
    def __init__(
        self,
        static_routes: Mapping[str, str],
        *,
        nameservers: Sequence[str] = (),
        mx_port: int = 25,
        cache_ttl_cap: float = 3600.0,
        negative_ttl: float = 60.0,
        timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self.static = {k.lower(): Destination(*parse_hostport(v)) for k, v in static_routes.items()}
        self.nameservers = list(nameservers)
        self.mx_port = mx_port
        self.cache_ttl_cap = cache_ttl_cap
        self.negative_ttl = negative_ttl
        self.timeout = timeout
        self.clock = clock if clock is not None else SystemClock()
        self._mx: dict[str, _Entry] = {}
        self._addr: dict[str, _Entry] = {}
        self._resolver: dns.asyncresolver.Resolver | None = None

    def static_route(self, domain: str) -> Destination | None:
        if not self.static:
            return None
        domain = domain.lower()
        if domain in self.static:
            return self.static[domain]
        # A parent-domain entry written ".example.test" covers its subdomains.
        parts = domain.split(".")
        for i in range(1, len(parts)):
            hit = self.static.get("." + ".".join(parts[i:]))
            if hit:
                return hit
        return self.static.get("*")

    async def resolve(self, domain: str) -> list[Destination]:
        """Where to connect for ``domain``, best first; :class:`ResolveError` if nowhere."""
        static = self.static_route(domain)
        if static is not None:
            return [static]
        hosts = await self.mx_hosts(domain)
        out: list[Destination] = []
        last: ResolveError | None = None
        for host in hosts:
            try:
                addresses = await self.addresses(host)
            except ResolveError as exc:
                last = exc
                continue
            out += [Destination(host, self.mx_port, a) for a in addresses]
        if not out:
            assert last is not None
            raise ResolveError(
                f"no address for the MX hosts of {domain}: {last}",
                permanent=False,
                enhanced_code="4.4.3",
            )
        return out

    async def mx_hosts(self, domain: str) -> list[str]:
        """The MX hosts of ``domain`` in preference order (the domain itself when it
        has no MX, RFC 5321 §5.1)."""
        return await self._cached(self._mx, domain.lower().rstrip("."), self._lookup_mx)

    def cached_mx_hosts(self, domain: str) -> list[str] | None:
        """The MX hosts of ``domain`` if a lookup is cached, without looking up."""
        hit = self._mx.get(domain.lower().rstrip("."))
        if hit is None or hit[0] <= self.clock.monotonic() or isinstance(hit[1], ResolveError):
            return None
        return hit[1]

    async def addresses(self, host: str) -> list[str]:
        """A then AAAA addresses of an MX host (an IP literal stands for itself)."""
        return await self._cached(self._addr, host.lower().rstrip("."), self._lookup_addresses)

    async def _cached(self, cache: dict[str, _Entry], key: str, lookup: _Lookup) -> list[str]:
        now = self.clock.monotonic()
        hit = cache.get(key)
        if hit is not None and hit[0] > now:
            if isinstance(hit[1], ResolveError):
                raise hit[1]
            return hit[1]
        try:
            values, ttl = await lookup(key)
        except _Negative as neg:
            cache[key] = (now + neg.ttl, neg.error)
            raise neg.error from None
        cache[key] = (now + min(ttl, self.cache_ttl_cap), values)
        return values

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            if self.nameservers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                servers: list[str | dns.nameserver.Nameserver] = []
                for server in self.nameservers:
                    host, port = parse_hostport(server)
                    servers.append(dns.nameserver.Do53Nameserver(host, port))
                resolver.nameservers = servers
            else:
                try:
                    resolver = dns.asyncresolver.Resolver()
                except dns.resolver.NoResolverConfiguration as exc:
                    raise _Negative(
                        ResolveError(
                            "no DNS resolver configured", permanent=False, enhanced_code="4.4.3"
                        ),
                        TRANSIENT_TTL,
                    ) from exc
            resolver.cache = None  # this class caches, with negative answers too
            self._resolver = resolver
        return self._resolver

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """The answer, None when the name exists without such records; raises _Negative."""
        resolver = self._get_resolver()
        try:
            return await resolver.resolve(name, rdtype, lifetime=self.timeout, search=False)
        except dns.resolver.NXDOMAIN as exc:
            raise _Negative(
                ResolveError(
                    f"domain {name} does not exist", permanent=True, enhanced_code="5.1.2"
                ),
                _soa_minimum(exc) or self.negative_ttl,
            ) from None
        except dns.resolver.NoAnswer:
            return None
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            kind = "timed out" if isinstance(exc, dns.exception.Timeout) else "failed (SERVFAIL)"
            raise _Negative(
                ResolveError(
                    f"DNS lookup of {name} {rdtype} {kind}", permanent=False, enhanced_code="4.4.3"
                ),
                TRANSIENT_TTL,
            ) from None

    async def _lookup_mx(self, domain: str) -> tuple[list[str], float]:
        answer = await self._query(domain, "MX")
        if answer is None or answer.rrset is None:
            return [domain], 300.0  # RFC 5321 §5.1: implicit MX
        records = sorted(answer, key=lambda r: r.preference)
        hosts = [str(r.exchange).rstrip(".") for r in records]
        if hosts == [""]:  # RFC 7505 null MX
            error = ResolveError(
                f"domain {domain} accepts no mail (null MX)", permanent=True, enhanced_code="5.1.10"
            )
            raise _Negative(error, float(answer.rrset.ttl))
        return [h for h in hosts if h], float(answer.rrset.ttl)

    async def _lookup_addresses(self, host: str) -> tuple[list[str], float]:
        if _is_ip(host):
            return [host], self.cache_ttl_cap
        found: list[str] = []
        ttl = self.cache_ttl_cap
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._query(host, rdtype)
            except _Negative:
                if rdtype == "AAAA" and found:
                    break
                raise
            if answer is not None and answer.rrset is not None:
                found += [r.address for r in answer]
                ttl = min(ttl, float(answer.rrset.ttl))
        if not found:
            error = ResolveError(
                f"MX host {host} has no address", permanent=False, enhanced_code="4.4.3"
            )
            raise _Negative(error, self.negative_ttl)
        return found, ttl

    def __repr__(self) -> str:
        where = ", ".join(self.nameservers) or "system resolver"
        return f"MxResolver({where}, {len(self._mx)} domains cached, {len(self.static)} static)"


class _Negative(Exception):
    def __init__(self, error: ResolveError, ttl: float) -> None:
        self.error = error
        self.ttl = ttl


def _soa_minimum(exc: dns.resolver.NXDOMAIN) -> float | None:
    """RFC 2308 §5: a negative answer is cached for min(SOA TTL, SOA MINIMUM)."""
    try:
        response = exc.response(exc.qnames()[0])  # type: ignore[no-untyped-call]
    except Exception:  # dnspython keeps responses per name; none when it has none
        return None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            return float(min(rrset.ttl, rrset[0].minimum))
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
