"""DKIM end to end: keys from `smtplb dkim keygen`, records served by a real DNS server,
messages signed by `smtplb run` and verified at the sink by two independent
implementations, dkimpy and OpenDKIM's `opendkim-testmsg`."""

from __future__ import annotations

import re
import signal
import smtplib
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import dkim
import dns.nameserver
import dns.resolver
import pytest

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config, wait_until
from tests.integration.dnsserver import DnsServer, Zone
from tests.integration.opendkim import opendkim_verify

pytestmark = pytest.mark.integration

LIST_UNSUBSCRIBE = (
    b"List-Unsubscribe: <https://news.example.test/unsubscribe/opaque-token-0123456789>,\r\n"
    b"        <mailto:unsubscribe@news.example.test?subject=opaque-token-0123456789>\r\n"
)


def message(sender: str, subject: str = "This week's offers") -> bytes:
    return (
        f"From: Example Shop <{sender}>\r\n"
        "To: someone@example.org\r\n"
        f"Subject: {subject}\r\n".encode()
        + LIST_UNSUBSCRIBE
        + b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
        b"Hello,  here are   the offers.\t\r\n"
        b"\r\n"
        b".a line starting with a dot\r\n"
    )


def keygen(workdir: Path, domain: str, selector: str, algorithm: str) -> tuple[Path, list[str]]:
    """`smtplb dkim keygen`: the key file and the TXT strings it says to publish."""
    out = subprocess.run(
        [sys.executable, "-m", "smtplb", "dkim", "keygen", domain, selector, "-a", algorithm],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = workdir / "keys" / f"{domain}.{selector}.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, out
    line = next(x for x in out.splitlines() if x.startswith(f"{selector}._domainkey.{domain}."))
    strings = re.findall(r'"([^"]*)"', line)
    assert "".join(strings).startswith(f"v=DKIM1; k={algorithm}; p="), out
    return path, strings


def dkimpy_verify(data: bytes, server: DnsServer, idx: int = 0) -> bool:
    """dkimpy's verdict on signature ``idx``, its key looked up on the test DNS server."""
    resolver = dns.resolver.Resolver(configure=False)
    host, port = server.address.split(":")
    resolver.nameservers = [dns.nameserver.Do53Nameserver(host, int(port))]

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        try:
            answer = resolver.resolve(name.decode(), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return b""
        return b"".join(b"".join(r.strings) for r in answer)

    try:
        return bool(dkim.DKIM(data).verify(idx=idx, dnsfunc=dnsfunc))
    except dkim.DKIMException:  # a mismatch is an exception here, False in dkim.verify
        return False


def dkim_lines(config: str, entries: list[dict[str, str | bool]]) -> str:
    out = [config]
    for e in entries:
        out.append("[[dkim]]")
        out += [
            f"{k} = {'true' if v is True else 'false' if v is False else repr(v)}"
            for k, v in e.items()
        ]
    return "\n".join(out).replace("'", '"') + "\n"


def send(node: Smtplb, data: bytes, sender: str) -> None:
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        client.sendmail(sender, ["someone@example.org"], data)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_signed_at_intake_verified_by_dkimpy_and_opendkim(
    tmp_path: Path,
    algorithm: str,
    sinks: Callable[..., ThreadedSink],
    smtplb: Callable[..., Smtplb],
) -> None:
    key, strings = keygen(tmp_path, "example.test", "s2026", algorithm)
    zone = Zone().txt("s2026._domainkey.example.test", *strings).nxdomain("example.test")
    sink = sinks()
    config, smtp_port, http_port = relay_config(tmp_path / "var", [sink.port])
    config = dkim_lines(
        config, [{"domain": "example.test", "selector": "s2026", "key": str(key.name)}]
    ).replace(f'key = "{key.name}"', f'key = "keys/{key.name}"')
    node = smtplb(config, smtp_port, http_port).start()

    sent = message("news@mail.example.test")  # a subdomain: signed as its parent
    send(node, sent, "bounces@mail.example.test")
    send(node, message("app@unconfigured.test"), "app@unconfigured.test")
    # No line starts with a dot: it goes out unread (plain lines), the signature on top.
    plain = message("news@mail.example.test").replace(b"\r\n.a line", b"\r\na line")
    send(node, plain, "plain@mail.example.test")
    assert sink.wait_for(3, timeout=15)
    by_sender = {m.mail_from: m.data for m in sink.received}
    signed = by_sender["bounces@mail.example.test"]
    unsigned = by_sender["app@unconfigured.test"]
    signed_plain = by_sender["plain@mail.example.test"]
    assert signed_plain.startswith(b"DKIM-Signature: ") and signed_plain.endswith(plain)

    a = "ed25519-sha256" if algorithm == "ed25519" else "rsa-sha256"
    assert signed.startswith(b"DKIM-Signature: v=1; a=" + a.encode())
    assert b"d=example.test;" in signed and b"s=s2026;" in signed
    assert signed.endswith(sent)  # nothing after the signature was changed ...
    assert LIST_UNSUBSCRIBE in signed  # ... the folded List-Unsubscribe least of all
    assert b"DKIM-Signature" not in unsigned

    with DnsServer(zone) as server:
        assert dkimpy_verify(signed, server)
        assert dkimpy_verify(signed_plain, server)
        assert not dkimpy_verify(signed.replace(b"the offers", b"the 0ffers"), server)
    ok = opendkim_verify(signed, zone, tmp_path / "opendkim-ok")
    assert ok.returncode == 0, ok.stderr
    bad = opendkim_verify(signed.replace(b"the offers", b"the 0ffers"), zone, tmp_path / "bad")
    assert bad.returncode != 0 and "Bad signature" in bad.stderr, bad.stderr
    nosig = opendkim_verify(unsigned, zone, tmp_path / "opendkim-unsigned")
    assert "No signature" in nosig.stderr, nosig.stderr


def test_rotation_dual_signs_then_the_old_selector_retires_on_sighup(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    old, old_txt = keygen(tmp_path, "example.test", "s2025", "rsa")
    new, new_txt = keygen(tmp_path, "example.test", "s2026", "ed25519")
    zone = (
        Zone()
        .txt("s2025._domainkey.example.test", *old_txt)
        .txt("s2026._domainkey.example.test", *new_txt)
        .nxdomain("example.test")
    )
    sink = sinks()
    base, smtp_port, http_port = relay_config(tmp_path / "var", [sink.port])
    entries: list[dict[str, str | bool]] = [
        {"domain": "example.test", "selector": "s2025", "key": f"keys/{old.name}"},
        {"domain": "example.test", "selector": "s2026", "key": f"keys/{new.name}"},
    ]
    node = smtplb(dkim_lines(base, entries), smtp_port, http_port).start()
    send(node, message("news@example.test", "during the rotation"), "b@example.test")
    assert sink.wait_for(1, timeout=15)
    dual = sink.received[0].data
    assert dual.count(b"DKIM-Signature:") == 2

    # the old key retires: active = false, then SIGHUP; the running node reloads its keys
    entries[0]["active"] = False
    node.config_path.write_text(dkim_lines(base, entries))
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: any("configuration reloaded" in line for line in node.output), 10, "the reload"
    )
    send(node, message("news@example.test", "after the rotation"), "b@example.test")
    assert sink.wait_for(2, timeout=15)
    after = sink.received[1].data
    assert after.count(b"DKIM-Signature:") == 1 and b"s=s2026;" in after

    # a reload with a key file gone keeps the running keys (and says why)
    entries[1]["key"] = "keys/gone.pem"
    node.config_path.write_text(dkim_lines(base, entries))
    node.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("reload failed" in line for line in node.output), 10, "the refusal")
    assert any("keys/gone.pem: no such key file" in line for line in node.output)
    send(node, message("news@example.test", "after a bad reload"), "b@example.test")
    assert sink.wait_for(3, timeout=15)
    assert b"s=s2026;" in sink.received[2].data

    with DnsServer(zone) as server:
        assert dkimpy_verify(dual, server, idx=0)
        assert dkimpy_verify(dual, server, idx=1)
        assert dkimpy_verify(after, server)
    for name, data in (("dual", dual), ("after", after)):
        result = opendkim_verify(data, zone, tmp_path / f"opendkim-{name}")
        assert result.returncode == 0, (name, result.stderr)


def test_check_names_a_missing_or_malformed_key_file(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("-----BEGIN PRIVATE KEY-----\nnope\n")
    config = tmp_path / "smtplb.toml"
    config.write_text(
        dkim_lines(
            "",
            [
                {"domain": "a.test", "selector": "s1", "key": "missing.pem"},
                {"domain": "b.test", "selector": "s1", "key": "bad.pem"},
            ],
        )
    )
    for verb in ("check", "run"):
        result = subprocess.run(
            [sys.executable, "-m", "smtplb", verb, "-c", str(config)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1, result
        assert "config error: dkim[0].key: missing.pem: no such key file" in result.stderr
        assert "config error: dkim[1].key: bad.pem: not a PEM private key" in result.stderr
