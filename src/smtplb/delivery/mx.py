"""Where mail for a domain goes: ``static_routes`` first (as Postfix transport
maps), else MX records through an async resolver, cached by TTL."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from smtplb.config import parse_hostport


@dataclass(frozen=True, slots=True)
class Destination:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class ResolveError(Exception):
    """No destination. ``permanent`` means the domain cannot take mail (bounce)."""

    def __init__(self, message: str, *, permanent: bool, enhanced_code: str) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.enhanced_code = enhanced_code


class MxResolver:
    def __init__(
        self,
        static_routes: Mapping[str, str],
        *,
        cache_ttl_cap: float = 3600.0,
        negative_ttl: float = 60.0,
    ) -> None:
        self.static = {k.lower(): Destination(*parse_hostport(v)) for k, v in static_routes.items()}
        self.cache_ttl_cap = cache_ttl_cap
        self.negative_ttl = negative_ttl
        self._cache: dict[str, tuple[float, list[Destination] | ResolveError]] = {}
        self._resolver: dns.asyncresolver.Resolver | None = None

    def static_route(self, domain: str) -> Destination | None:
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
        static = self.static_route(domain)
        if static is not None:
            return [static]
        now = time.monotonic()
        cached = self._cache.get(domain)
        if cached and cached[0] > now:
            if isinstance(cached[1], ResolveError):
                raise cached[1]
            return cached[1]
        try:
            hosts, ttl = await self._lookup(domain)
        except ResolveError as exc:
            self._cache[domain] = (now + self.negative_ttl, exc)
            raise
        self._cache[domain] = (now + min(ttl, self.cache_ttl_cap), hosts)
        return hosts

    async def _lookup(self, domain: str) -> tuple[list[Destination], float]:
        if self._resolver is None:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                raise ResolveError(
                    "no DNS resolver configured", permanent=False, enhanced_code="4.4.3"
                ) from exc
        try:
            answer = await self._resolver.resolve(domain, "MX", lifetime=10.0)
        except dns.resolver.NXDOMAIN:
            raise ResolveError(
                f"domain {domain} does not exist", permanent=True, enhanced_code="5.1.2"
            ) from None
        except dns.resolver.NoAnswer:
            return [Destination(domain, 25)], 300.0  # RFC 5321 §5.1: implicit MX
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise ResolveError(
                f"DNS lookup for {domain} failed: {exc}", permanent=False, enhanced_code="4.4.3"
            ) from None
        records = sorted(answer, key=lambda r: r.preference)
        hosts = [str(r.exchange).rstrip(".") for r in records]
        if hosts == [""]:  # RFC 7505 null MX
            raise ResolveError(
                f"domain {domain} accepts no mail (null MX)", permanent=True, enhanced_code="5.1.10"
            )
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else 300.0
        return [Destination(h, 25) for h in hosts if h], ttl
