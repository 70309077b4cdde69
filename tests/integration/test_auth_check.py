"""`smtplb auth check` against records served by a real DNS server (dnsmasq)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smtplb.mailauth.keys import generate_key, txt_strings, txt_value, write_private_key
from tests.integration.dnsserver import DnsServer, Zone

pytestmark = pytest.mark.integration


def auth_check(config: Path, *domains: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtplb", "auth", "check", *domains, "-c", str(config)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_one_domain_all_good_one_with_spf_missing_a_member_and_no_dmarc(tmp_path: Path) -> None:
    good_key, bad_key = generate_key("rsa"), generate_key("ed25519")
    write_private_key(good_key, tmp_path / "good.pem")
    write_private_key(bad_key, tmp_path / "bad.pem")
    zone = (
        Zone()
        .txt("s1._domainkey.good.test", *txt_strings(txt_value(good_key)))
        .txt("good.test", "v=spf1 ip4:127.0.0.2 include:_spf.good.test -all")
        .txt("_spf.good.test", "v=spf1 a:mta3.good.test mx ~all")
        .a("mta3.good.test", "127.0.0.3")
        .txt("_dmarc.good.test", "v=DMARC1; p=reject; adkim=r; rua=mailto:dmarc@good.test")
        .txt("s1._domainkey.bad.test", *txt_strings(txt_value(bad_key)))
        .txt("bad.test", "v=spf1 ip4:127.0.0.2 -all")
        .nxdomain("good.test")
        .nxdomain("bad.test")
    )
    with DnsServer(zone) as dns:
        config = tmp_path / "smtplb.toml"
        config.write_text(
            f"""
[dns]
nameservers = ["{dns.address}"]
[[pools]]
name = "direct"
  [[pools.members]]
  name = "ip-2"
  source_ip = "127.0.0.2"
  [[pools.members]]
  name = "ip-3"
  source_ip = "127.0.0.3"
[[dkim]]
domain = "good.test"
selector = "s1"
key = "good.pem"
[[dkim]]
domain = "bad.test"
selector = "s1"
key = "bad.pem"
"""
        )
        good = auth_check(config, "good.test")
        bad = auth_check(config, "bad.test")
        both = auth_check(config, "--json")  # no DOMAIN: every [[dkim]] domain
    assert good.returncode == 0, good.stdout + good.stderr
    assert "s1._domainkey.good.test (active, rsa-sha256): matches good.pem" in good.stdout
    assert "member ip-3 (127.0.0.3): pass" in good.stdout
    assert "_dmarc.good.test: p=reject" in good.stdout
    assert "our DKIM d=good.test aligns with From good.test (relaxed)" in good.stdout
    assert good.stdout.rstrip().endswith("all good")

    assert bad.returncode == 1, bad.stdout + bad.stderr
    problems = [line for line in bad.stdout.splitlines() if "PROBLEM" in line]
    assert len(problems) == 2, bad.stdout
    assert "SPF" in problems[0] and "member ip-3 (127.0.0.3): fail" in problems[0]
    assert "DMARC" in problems[1] and "no DMARC record at _dmarc.bad.test" in problems[1]
    assert "s1._domainkey.bad.test (active, ed25519-sha256): matches bad.pem" in bad.stdout

    assert both.returncode == 1
    reports = {r["domain"]: r for r in json.loads(both.stdout)}
    assert reports["good.test"]["ok"] and not reports["bad.test"]["ok"]
    assert [f["area"] for f in reports["bad.test"]["findings"] if not f["ok"]] == ["SPF", "DMARC"]
