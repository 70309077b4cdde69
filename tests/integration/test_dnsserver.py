"""The test DNS server answers what its zone holds, through dnspython's resolver."""

from __future__ import annotations

import dns.resolver
import pytest

from tests.integration.dnsserver import DnsServer, Zone

pytestmark = pytest.mark.integration


def test_dnsmasq_serves_mx_a_txt_null_mx_and_nxdomain() -> None:
    zone = (
        Zone()
        .mx("gmail.test", "mx1.gmail.test", 5)
        .mx("gmail.test", "mx2.gmail.test", 20)
        .a("mx1.gmail.test", "127.0.0.2")
        .txt("s1._domainkey.example.test", "v=DKIM1; k=ed25519; ", "p=abc")
        .null_mx("nomail.test")
        .nxdomain("missing.test")
    )
    with DnsServer(zone) as server:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = server.port
        mx = sorted(
            (r.preference, r.exchange.to_text()) for r in resolver.resolve("gmail.test", "MX")
        )
        assert mx == [(5, "mx1.gmail.test."), (20, "mx2.gmail.test.")]
        assert [r.address for r in resolver.resolve("mx1.gmail.test", "A")] == ["127.0.0.2"]
        txt = resolver.resolve("s1._domainkey.example.test", "TXT")
        assert [b"".join(r.strings) for r in txt] == [b"v=DKIM1; k=ed25519; p=abc"]
        null = [(r.preference, r.exchange.to_text()) for r in resolver.resolve("nomail.test", "MX")]
        assert null == [(0, ".")]
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve("a.missing.test", "A")
