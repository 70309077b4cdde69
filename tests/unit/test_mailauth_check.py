"""SPF evaluation, DMARC parsing and alignment, the auth report, and the one-click
unsubscribe guardrail: pure decisions over a DNS of fixed answers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from smtplb.clock import FakeClock
from smtplb.config import Config, parse_config
from smtplb.intake.compliance import refusal, unsubscribe_problem
from smtplb.mailauth.check import aligned, auth_report, organizational_domain, tags
from smtplb.mailauth.dmarc_watch import DAY, DmarcWatch, dmarc_names
from smtplb.mailauth.keys import generate_key, txt_value
from smtplb.mailauth.sign import KeyRing, SigningKey
from smtplb.mailauth.spf import LOOKUP_LIMIT, DnsFailure, check_host


@dataclass
class StaticDns:
    """Fixed answers, as a zone file would give them."""

    txt_records: dict[str, list[str]] = field(default_factory=dict)
    a_records: dict[str, list[str]] = field(default_factory=dict)
    mx_records: dict[str, list[str]] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    queries: list[str] = field(default_factory=list)

    def txt(self, name: str) -> list[str]:
        self.queries.append(name)
        if name in self.failing:
            raise DnsFailure(f"{name}: SERVFAIL")
        return self.txt_records.get(name, [])

    def addresses(self, name: str, v6: bool) -> list[str]:
        return [a for a in self.a_records.get(name, []) if (":" in a) == v6]

    def mx(self, name: str) -> list[str]:
        return self.mx_records.get(name, [])


# -- SPF -------------------------------------------------------------------------------------


def spf(record: str, more: dict[str, list[str]]) -> StaticDns:
    return StaticDns(txt_records={"example.test": [record, "google-site-verification=x"], **more})


@pytest.mark.parametrize(
    ("record", "ip", "result"),
    [
        ("v=spf1 ip4:192.0.2.0/24 -all", "192.0.2.7", "pass"),
        ("v=spf1 ip4:192.0.2.0/24 -all", "198.51.100.1", "fail"),
        ("v=spf1 ip4:192.0.2.1 ~all", "198.51.100.1", "softfail"),
        ("v=spf1 ip4:192.0.2.1 ?all", "198.51.100.1", "neutral"),
        ("v=spf1 ip4:192.0.2.1", "198.51.100.1", "neutral"),
        ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8::25", "pass"),
        ("v=spf1 ip6:2001:db8::/32 -all", "192.0.2.1", "fail"),
        ("v=spf1 -ip4:192.0.2.1 +all", "192.0.2.1", "fail"),
        ("v=spf1 a -all", "192.0.2.10", "pass"),
        ("v=spf1 a:mta.example.test/24 -all", "192.0.2.99", "pass"),
        ("v=spf1 mx -all", "192.0.2.20", "pass"),
        ("v=spf1 mx//64 -all", "192.0.2.21", "fail"),
        ("v=spf1 include:_spf.example.test -all", "203.0.113.5", "pass"),
        ("v=spf1 redirect=_spf.example.test", "203.0.113.5", "pass"),
        ("v=spf1 redirect=_spf.example.test", "192.0.2.1", "softfail"),
        ("v=spf1 exists:%{i}.spf.example.test -all", "192.0.2.1", "permerror"),
        ("v=spf1 bogus:x -all", "192.0.2.1", "permerror"),
        ("v=spf1 include:nothing.example.test -all", "192.0.2.1", "permerror"),
    ],
)
def test_spf_mechanisms(record: str, ip: str, result: str) -> None:
    dns = spf(record, {"_spf.example.test": ["v=spf1 ip4:203.0.113.0/24 ~all"]})
    dns.a_records = {"example.test": ["192.0.2.10"], "mta.example.test": ["192.0.2.1"]}
    dns.a_records["mx1.example.test"] = ["192.0.2.20"]
    dns.mx_records = {"example.test": ["mx1.example.test"]}
    assert check_host(dns, ip, "example.test").result == result


def test_spf_none_two_records_and_dns_failure() -> None:
    assert check_host(StaticDns(), "192.0.2.1", "example.test").result == "none"
    two = StaticDns(txt_records={"example.test": ["v=spf1 -all", "v=spf1 +all"]})
    assert check_host(two, "192.0.2.1", "example.test").result == "permerror"
    broken = StaticDns(failing={"example.test"})
    assert check_host(broken, "192.0.2.1", "example.test").result == "temperror"


def test_spf_stops_at_ten_lookups() -> None:
    # a chain of includes: each costs one lookup; the 11th is a permerror even though
    # the address would match at the end of the chain
    txt = {f"l{i}.example.test": [f"v=spf1 include:l{i + 1}.example.test -all"] for i in range(12)}
    txt["l12.example.test"] = ["v=spf1 ip4:192.0.2.1 -all"]
    txt["example.test"] = ["v=spf1 include:l1.example.test -all"]
    result = check_host(StaticDns(txt_records=txt), "192.0.2.1", "example.test")
    assert result.result == "permerror"
    assert f"more than {LOOKUP_LIMIT} DNS lookups" in result.reason
    txt["example.test"] = ["v=spf1 include:l4.example.test -all"]  # 9 lookups: fine
    assert check_host(StaticDns(txt_records=txt), "192.0.2.1", "example.test").result == "pass"


# -- DMARC ------------------------------------------------------------------------------------


def test_tags_and_alignment() -> None:
    assert tags("v=DMARC1; p=reject; adkim=s; rua=mailto:d@example.test") == {
        "v": "DMARC1",
        "p": "reject",
        "adkim": "s",
        "rua": "mailto:d@example.test",
    }
    assert tags("v=DKIM1; k=rsa; p=MIIB AAAA\t BBBB")["p"] == "MIIBAAAABBBB"
    assert organizational_domain("news.mail.example.test") == "example.test"
    assert aligned("example.test", "news.example.test", "r")
    assert not aligned("example.test", "news.example.test", "s")
    assert aligned("example.test", "EXAMPLE.test.", "s")
    assert not aligned("other.test", "example.test", "r")


def _report_dns(key_record: str) -> StaticDns:
    return StaticDns(
        txt_records={
            "s1._domainkey.good.test": [key_record],
            "good.test": ["v=spf1 ip4:192.0.2.2 a:mta.good.test -all"],
            "_dmarc.good.test": ["v=DMARC1; p=reject; adkim=r"],
            "bad.test": ["v=spf1 ip4:192.0.2.2 -all"],
            "s1._domainkey.bad.test": [key_record.replace("p=", "p=AAAA")],
        },
        a_records={"mta.good.test": ["192.0.2.3"]},
    )


def _config() -> Config:
    return parse_config(
        {
            "pools": [
                {
                    "name": "direct",
                    "members": [
                        {"name": "ip-2", "source_ip": "192.0.2.2"},
                        {"name": "ip-3", "source_ip": "192.0.2.3"},
                    ],
                }
            ]
        }
    )


def test_auth_report_one_domain_good_one_with_problems_named() -> None:
    key = generate_key("ed25519")
    config = _config()
    ring = KeyRing(
        [SigningKey("good.test", "s1", key, "k1.pem"), SigningKey("bad.test", "s1", key, "k2.pem")]
    )
    dns = _report_dns(txt_value(key))
    good = auth_report(config, ring, "good.test", dns)
    assert good.problems == [], good.lines()
    assert good.lines()[-1] == "all good"
    bad = auth_report(config, ring, "bad.test", dns)
    text = "\n".join(bad.lines())
    assert [f.area for f in bad.problems] == ["DKIM", "SPF", "DMARC"], text
    assert "s1._domainkey.bad.test (active): the published key is not ours (k2.pem)" in text
    assert "member ip-3 (192.0.2.3): fail" in text
    assert "no DMARC record at _dmarc.bad.test" in text
    assert text.endswith("3 problems")


def test_auth_report_unaligned_strict_and_unsigned_domain() -> None:
    key = generate_key("rsa")
    config = _config()
    ring = KeyRing([SigningKey("good.test", "s1", key, "k.pem")])
    dns = _report_dns(txt_value(key))
    dns.txt_records["_dmarc.news.good.test"] = ["v=DMARC1; p=quarantine; adkim=s"]
    dns.txt_records["news.good.test"] = ["v=spf1 include:good.test -all"]
    report = auth_report(config, ring, "news.good.test", dns)
    text = "\n".join(report.lines())
    assert "our DKIM d=good.test does not align with From news.good.test (strict)" in text
    unsigned = auth_report(config, KeyRing([]), "good.test", dns)
    assert "no [[dkim]] entry covers good.test" in "\n".join(unsigned.lines())


# -- one-click unsubscribe ---------------------------------------------------------------------

HTTPS = ("list-unsubscribe", "<https://x.test/u/1>, <mailto:u@x.test>")
POST = ("list-unsubscribe-post", "List-Unsubscribe=One-Click")


@pytest.mark.parametrize(
    ("headers", "content_class", "missing"),
    [
        ([], "transactional", None),
        ([HTTPS, POST], "marketing", None),
        ([("list-unsubscribe", "<mailto:u@x.test>")], "bulk", None),
        ([], "bulk", "needs a List-Unsubscribe header"),
        ([HTTPS], "marketing", "no List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        ([HTTPS, ("list-unsubscribe-post", "yes")], "bulk", "no List-Unsubscribe-Post"),
        ([("list-unsubscribe", "<http://x.test/u>")], "marketing", "has neither"),
    ],
)
def test_unsubscribe_problem(
    headers: list[tuple[str, str]], content_class: str, missing: str | None
) -> None:
    problem = unsubscribe_problem(headers, content_class)
    if missing is None:
        assert problem is None
    else:
        assert problem is not None and missing in problem
        reply = refusal(problem)
        assert (reply.code, reply.enhanced_code) == (550, "5.7.1")


# -- DMARC watch: once per domain per day ------------------------------------------------------


def test_dmarc_watch_warns_once_per_domain_per_day(caplog: pytest.LogCaptureFixture) -> None:
    answers: dict[str, bool | None] = {"nodmarc.test": False, "good.test": True, "flaky.test": None}
    asked: list[str] = []
    missing: list[str] = []

    async def lookup(domain: str) -> bool | None:
        asked.append(domain)
        return answers[domain]

    clock = FakeClock()
    watch = DmarcWatch(lookup, clock, on_missing=missing.append)

    async def day() -> None:
        for domain in ["nodmarc.test", "NoDmarc.test", "good.test", "flaky.test", "nodmarc.test"]:
            watch.note(domain)
        await watch.settle()
        watch.note("flaky.test")  # failed lookups are retried with the next message
        await watch.settle()

    asyncio.run(day())
    assert asked == ["nodmarc.test", "good.test", "flaky.test", "flaky.test"]
    assert missing == ["nodmarc.test"]
    warnings = [r.getMessage() for r in caplog.records if "DMARC" in r.getMessage()]
    assert len(warnings) == 1 and "_dmarc.nodmarc.test" in warnings[0]

    clock.advance(DAY - 1)
    assert not watch.due("nodmarc.test")
    clock.advance(1)
    asyncio.run(day())
    assert missing == ["nodmarc.test", "nodmarc.test"]
    assert dmarc_names("a.b.example.test") == ["_dmarc.a.b.example.test", "_dmarc.example.test"]


def test_dmarc_watch_close_cancels_lookups_still_running() -> None:
    started = asyncio.Event()

    async def hanging(domain: str) -> bool | None:
        started.set()
        await asyncio.Event().wait()  # a DNS server that never answers
        return None

    async def run() -> str:
        watch = DmarcWatch(hanging, FakeClock())
        watch.note("slow.test")
        await started.wait()
        await watch.close()
        return repr(watch)

    assert asyncio.run(run()) == "DmarcWatch(1 domains, 0 lookups running)"
