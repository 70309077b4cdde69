"""``smtplb auth check DOMAIN``: are the published DKIM, SPF and DMARC records right for
the way this node sends the domain's mail?

- DKIM: each configured selector covering the domain has a TXT record whose key is
  ours (a missing or different record of an *active* selector is a problem).
- SPF: the domain's record authorises every egress member's ``source_ip``
  (relay members send through someone else's servers, whose SPF is theirs).
- DMARC: a record at ``_dmarc.DOMAIN`` (or at its organisational domain), its policy,
  and whether the ``d=`` we sign with aligns with the From domain under ``adkim``.

:func:`auth_report` is pure given a :class:`~smtplb.mailauth.spf.Dns`; :class:`Resolver`
is that interface over dnspython with ``[dns] nameservers``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import dns.exception
import dns.nameserver
import dns.resolver

from smtplb.config import Config
from smtplb.mailauth.keys import public_key_b64
from smtplb.mailauth.sign import KeyRing
from smtplb.mailauth.spf import Dns, DnsFailure, check_host
from smtplb.units import parse_hostport

DMARC_POLICIES = ("none", "quarantine", "reject")


@dataclass
class Finding:
    area: str  # DKIM | SPF | DMARC
    ok: bool
    text: str


@dataclass
class Report:
    domain: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, area: str, ok: bool, text: str) -> None:
        self.findings.append(Finding(area, ok, text))

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def lines(self) -> list[str]:
        out = [f"auth check {self.domain}"]
        for f in self.findings:
            out.append(f"  {f.area:<5} {'ok     ' if f.ok else 'PROBLEM'} {f.text}")
        n = len(self.problems)
        out.append(f"{n} problem{'s' if n != 1 else ''}" if n else "all good")
        return out


def tags(record: str) -> dict[str, str]:
    """``k=v; k=v`` (DKIM key records, DMARC) → {k: v}, whitespace removed from values
    (FWS is allowed inside base64)."""
    out: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip().lower()] = "".join(value.split())
    return out


def organizational_domain(domain: str) -> str:
    """The last two labels: an approximation of RFC 7489 §3.2 without the public
    suffix list (wrong for co.uk-style suffixes, where it is one label short)."""
    labels = domain.lower().rstrip(".").split(".")
    return ".".join(labels[-2:])


def aligned(d: str, from_domain: str, mode: str) -> bool:
    """DKIM identifier alignment (RFC 7489 §3.1.1): ``s`` exact, ``r`` same
    organisational domain."""
    d, from_domain = d.lower().rstrip("."), from_domain.lower().rstrip(".")
    if mode == "s":
        return d == from_domain
    return organizational_domain(d) == organizational_domain(from_domain)


def _check_dkim(report: Report, dns_: Dns, keyring: KeyRing, domain: str) -> list[str]:
    """Checks each selector covering ``domain``; returns the d= values that sign."""
    name = domain
    while name and not any(k.domain == name for k in keyring.keys):
        _, _, name = name.partition(".")
    keys = [k for k in keyring.keys if k.domain == name] if name else []
    if not keys:
        report.add("DKIM", False, f"no [[dkim]] entry covers {domain}: its mail goes unsigned")
        return []
    for key in keys:
        where = f"{key.selector}._domainkey.{key.domain}"
        state = "active" if key.active else "inactive"
        try:
            records = [t for t in dns_.txt(where) if "p=" in t]
        except DnsFailure as exc:
            report.add("DKIM", False, f"{where}: lookup failed: {exc}")
            continue
        if not records:
            report.add(
                "DKIM",
                not key.active,
                f"{where} ({state}): no key record published"
                + ("; publish it (`smtplb dkim keygen` prints it)" if key.active else ""),
            )
            continue
        record = tags(records[0])
        want_k = "ed25519" if key.algorithm.startswith("ed25519") else "rsa"
        if record.get("p", "") == "":
            report.add("DKIM", not key.active, f"{where} ({state}): the key is revoked (p=)")
        elif record.get("p") != public_key_b64(key.private_key):
            report.add(
                "DKIM", False, f"{where} ({state}): the published key is not ours ({key.path})"
            )
        elif record.get("k", "rsa") != want_k:
            report.add("DKIM", False, f"{where} ({state}): k={record.get('k')}, expected {want_k}")
        else:
            report.add("DKIM", True, f"{where} ({state}, {key.algorithm}): matches {key.path}")
    return sorted({k.domain for k in keys if k.active})


def _check_spf(report: Report, dns_: Dns, config: Config, domain: str) -> None:
    egress = [
        m
        for m in config.members
        if m.source_ip is not None and not ipaddress.ip_address(m.source_ip).is_unspecified
    ]
    if not egress:
        report.add("SPF", True, "no egress member with a source_ip: the relays' SPF applies")
        return
    for member in egress:
        assert member.source_ip is not None
        result = check_host(dns_, member.source_ip, domain)
        detail = f"member {member.name} ({member.source_ip}): {result.result}, {result.reason}"
        detail += f" ({result.lookups} lookups)"
        if result.result != "pass":
            ip = ipaddress.ip_address(member.source_ip)
            detail += f"; authorise it: add ip{ip.version}:{ip} to the SPF record of {domain}"
        report.add("SPF", result.result == "pass", detail)


def _check_dmarc(report: Report, dns_: Dns, domain: str, signing: list[str]) -> None:
    found: dict[str, str] | None = None
    where = ""
    org = organizational_domain(domain)
    for candidate in dict.fromkeys([domain, org]):
        try:
            records = [t for t in dns_.txt(f"_dmarc.{candidate}") if t.startswith("v=DMARC1")]
        except DnsFailure as exc:
            report.add("DMARC", False, f"_dmarc.{candidate}: lookup failed: {exc}")
            return
        if records:
            found, where = tags(records[0]), f"_dmarc.{candidate}"
            break
    if found is None:
        report.add(
            "DMARC",
            False,
            f"no DMARC record at _dmarc.{domain}"
            + (f" or _dmarc.{org}" if org != domain else "")
            + ": Gmail and Yahoo require one for bulk senders (start with p=none)",
        )
        return
    policy = found.get("p", "")
    if where != f"_dmarc.{domain}" and "sp" in found:
        policy = found["sp"]
    if policy not in DMARC_POLICIES:
        report.add(
            "DMARC", False, f"{where}: policy p={policy!r} is not one of none/quarantine/reject"
        )
        return
    adkim = found.get("adkim", "r")
    report.add("DMARC", True, f"{where}: p={policy}, adkim={adkim}, pct={found.get('pct', '100')}")
    for d in signing:
        ok = aligned(d, domain, adkim)
        mode = "strict" if adkim == "s" else "relaxed"
        report.add(
            "DMARC",
            ok,
            f"our DKIM d={d} {'aligns' if ok else 'does not align'} with From {domain} ({mode})",
        )


def auth_report(config: Config, keyring: KeyRing, domain: str, dns_: Dns) -> Report:
    domain = domain.lower().rstrip(".")
    report = Report(domain)
    signing = _check_dkim(report, dns_, keyring, domain)
    _check_spf(report, dns_, config, domain)
    _check_dmarc(report, dns_, domain, signing)
    return report


class Resolver:
    """:class:`~smtplb.mailauth.spf.Dns` over dnspython: ``[dns] nameservers`` when
    set, else the system resolver."""

    def __init__(self, nameservers: list[str], timeout: float = 5.0) -> None:
        if nameservers:
            self._resolver = dns.resolver.Resolver(configure=False)
            servers: list[dns.nameserver.Nameserver | str] = []
            for server in nameservers:
                host, port = parse_hostport(server)
                servers.append(dns.nameserver.Do53Nameserver(host, port))
            self._resolver.nameservers = servers
        else:
            self._resolver = dns.resolver.Resolver()
        self._resolver.lifetime = timeout

    def _query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        try:
            return list(self._resolver.resolve(name, rdtype))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise DnsFailure(f"{name} {rdtype}: {exc}") from None

    def txt(self, name: str) -> list[str]:
        return [
            b"".join(r.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
            for r in self._query(name, "TXT")
        ]

    def addresses(self, name: str, v6: bool) -> list[str]:
        return [r.to_text() for r in self._query(name, "AAAA" if v6 else "A")]

    def mx(self, name: str) -> list[str]:
        return [str(r.exchange).rstrip(".") for r in self._query(name, "MX")]  # type: ignore[attr-defined]
