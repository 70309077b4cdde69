"""MX and address resolution through a real DNS server (dnsmasq): `[dns] nameservers`,
the TTL cache, negative caching, NXDOMAIN and null MX bounces, SERVFAIL/timeout defers."""

from __future__ import annotations

import asyncio

import pytest

from smtplb.clock import FakeClock
from smtplb.delivery.mx import Destination, MxResolver, ResolveError
from tests.integration.conftest import free_port
from tests.integration.dnsserver import DnsServer, Zone


def _zone() -> Zone:
    zone = Zone()
    zone.domains.add("plain.test")  # served here (NODATA for MX), not refused
    return (
        zone.mx("workspace.test", "aspmx.l.google.com", 10)
        .mx("workspace.test", "alt1.aspmx.l.google.com", 20)
        .a("aspmx.l.google.com", "127.0.0.10")
        .a("alt1.aspmx.l.google.com", "127.0.0.11")
        .mx("noaddr.test", "mx.noaddr.test")
        .null_mx("nomail.test")
        .nxdomain("gone.test")
        .a("plain.test", "127.0.0.12")
    )


def test_mx_then_addresses_cached_for_their_ttl_and_failures_cached_too() -> None:
    async def main() -> None:
        clock = FakeClock()
        with DnsServer(_zone(), ttl=300) as dns:
            resolver = MxResolver({}, nameservers=[dns.address], mx_port=2525, clock=clock)
            found = await resolver.resolve("workspace.test")
            assert found == [
                Destination("aspmx.l.google.com", 2525, "127.0.0.10"),
                Destination("alt1.aspmx.l.google.com", 2525, "127.0.0.11"),
            ]
            assert await resolver.resolve("plain.test") == [
                Destination("plain.test", 2525, "127.0.0.12")
            ]  # no MX: the domain itself (RFC 5321 §5.1)
            with pytest.raises(ResolveError) as nx:
                await resolver.resolve("a.gone.test")
            assert nx.value.permanent and nx.value.enhanced_code == "5.1.2"
            with pytest.raises(ResolveError) as null:
                await resolver.resolve("nomail.test")
            assert null.value.permanent and null.value.enhanced_code == "5.1.10"
        # The server is gone: answers come from the cache until their TTL runs out.
        assert (await resolver.resolve("workspace.test"))[0].address == "127.0.0.10"
        with pytest.raises(ResolveError) as cached_nx:
            await resolver.resolve("a.gone.test")
        assert cached_nx.value.enhanced_code == "5.1.2"  # negative caching
        assert resolver.cached_mx_hosts("workspace.test") == [
            "aspmx.l.google.com",
            "alt1.aspmx.l.google.com",
        ]
        clock.advance(301)
        assert resolver.cached_mx_hosts("workspace.test") is None
        resolver.timeout = 0.5
        with pytest.raises(ResolveError) as gone:
            await resolver.resolve("workspace.test")
        assert not gone.value.permanent and gone.value.enhanced_code == "4.4.3"  # defer

    asyncio.run(main())


def test_servfail_and_timeouts_defer() -> None:
    async def main() -> None:
        # Nothing listens on this port: every query times out.
        dead = MxResolver({}, nameservers=[f"127.0.0.1:{free_port()}"], timeout=0.3)
        with pytest.raises(ResolveError) as err:
            await dead.resolve("workspace.test")
        assert not err.value.permanent and err.value.enhanced_code == "4.4.3"
        assert "timed out" in str(err.value)
        # A domain the server does not serve and cannot forward: REFUSED/SERVFAIL.
        with DnsServer(_zone()) as dns:
            resolver = MxResolver({}, nameservers=[dns.address], timeout=2)
            with pytest.raises(ResolveError) as servfail:
                await resolver.resolve("example.invalid")
            assert not servfail.value.permanent and servfail.value.enhanced_code == "4.4.3"
            with pytest.raises(ResolveError) as noaddr:
                await resolver.resolve("noaddr.test")
            assert not noaddr.value.permanent

    asyncio.run(main())


def test_static_routes_come_first() -> None:
    resolver = MxResolver({".corp.test": "127.0.0.1:2526"}, nameservers=["127.0.0.1:9"])
    found = asyncio.run(resolver.resolve("a.corp.test"))
    assert found == [Destination("127.0.0.1", 2526)]
