"""SPF (RFC 7208) evaluation for ``smtplb auth check``: does a domain's record authorise
one of our source IPs?

:func:`check_host` follows the record through ``include``, ``redirect``, ``a``, ``mx``,
``ip4``, ``ip6``, ``exists`` and ``all``, counting DNS-querying terms against the limit of
10 (§4.6.4; over it the result is ``permerror``, as receivers will say). Macros (§7) are
not expanded: a term that uses them is reported, not guessed. DNS comes through a
:class:`Dns` (the command gives it dnspython with ``[dns] nameservers``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

LOOKUP_LIMIT = 10
MX_LIMIT = 10
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


class Dns(Protocol):
    """Answers as lists (empty: no such record). Raise :class:`DnsFailure` on
    a server failure or a timeout."""

    def txt(self, name: str) -> list[str]: ...

    def addresses(self, name: str, v6: bool) -> list[str]: ...

    def mx(self, name: str) -> list[str]: ...


class DnsFailure(Exception):
    pass


class _PermError(Exception):
    pass


@dataclass
class SpfResult:
    result: str  # pass | fail | softfail | neutral | none | permerror | temperror
    reason: str
    lookups: int = 0
    trail: list[str] = field(default_factory=list)  # the records followed, for the report


def spf_record(dns: Dns, domain: str) -> str | None:
    """The domain's single ``v=spf1`` record; None when there is none. More than one
    is a permerror (§4.5), raised as such."""
    records = [
        t for t in dns.txt(domain) if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")
    ]
    if len(records) > 1:
        raise _PermError(f"{domain} has {len(records)} SPF records (one is allowed)")
    return records[0] if records else None


class _Evaluation:
    def __init__(self, dns: Dns, ip: str) -> None:
        self.dns = dns
        self.ip = ipaddress.ip_address(ip)
        self.lookups = 0
        self.trail: list[str] = []

    def count(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > LOOKUP_LIMIT:
            raise _PermError(f"more than {LOOKUP_LIMIT} DNS lookups (at {term!r})")

    def check(self, domain: str) -> tuple[str, str]:
        record = spf_record(self.dns, domain)
        if record is None:
            return "none", f"{domain} publishes no SPF record"
        self.trail.append(f"{domain}: {record}")
        redirect: str | None = None
        for term in record.split()[1:]:
            lower = term.lower()
            if lower.startswith("redirect="):
                redirect = term.split("=", 1)[1]
                continue
            if "=" in lower.split(":", 1)[0]:  # another modifier (exp=, unknown ones)
                continue
            written, qualifier = term, "+"
            if term[0] in QUALIFIERS:
                qualifier, term = term[0], term[1:]
            if self.matches(term, domain):
                return QUALIFIERS[qualifier], f"matched {written!r} of {domain}"
        if redirect is not None:
            self.count(f"redirect={redirect}")
            result, reason = self.check(self._target(redirect, domain))
            if result == "none":
                raise _PermError(f"redirect={redirect}: no SPF record there")
            return result, reason
        return "neutral", f"no term of {domain}'s record matches"

    def _target(self, spec: str, domain: str) -> str:
        if "%" in spec:
            raise _PermError(f"{spec!r} uses SPF macros, which this check does not expand")
        return spec or domain

    def _split(self, term: str, domain: str) -> tuple[str, int | None, int | None]:
        """``a``, ``a:host``, ``a/24``, ``mx:host/24//64``, ``a//64`` → (domain, v4, v6)."""
        rest = term[len(term.split(":", 1)[0].split("/", 1)[0]) :]
        spec, cidr = "", rest
        if rest.startswith(":"):
            spec, slash, tail = rest[1:].partition("/")
            cidr = slash + tail
        c4 = c6 = ""
        if cidr.startswith("//"):
            c6 = cidr[2:]
        elif cidr.startswith("/"):
            c4, _, c6 = cidr[1:].partition("//")
        try:
            v4 = int(c4) if c4 else None
            v6 = int(c6) if c6 else None
        except ValueError:
            raise _PermError(f"malformed prefix length in {term!r}") from None
        return self._target(spec, domain), v4, v6

    def _in(self, addresses: list[str], v4: int | None, v6: int | None) -> bool:
        for text in addresses:
            prefix = (v6 if v6 is not None else 128) if ":" in text else (v4 or 32)
            net = ipaddress.ip_network(f"{text}/{prefix}", strict=False)
            if self.ip.version == net.version and self.ip in net:
                return True
        return False

    def matches(self, term: str, domain: str) -> bool:
        mechanism = term.split(":", 1)[0].split("/", 1)[0].lower()
        v6 = self.ip.version == 6
        if mechanism == "all":
            return True
        if mechanism in ("ip4", "ip6"):
            try:
                net = ipaddress.ip_network(term.split(":", 1)[1], strict=False)
            except (IndexError, ValueError):
                raise _PermError(f"malformed {term!r} in {domain}") from None
            return self.ip.version == net.version and self.ip in net
        if mechanism == "include":
            self.count(term)
            target = self._target(term.split(":", 1)[1] if ":" in term else "", domain)
            if not target:
                raise _PermError(f"include without a domain in {domain}")
            result, _ = self.check(target)
            if result == "none":
                raise _PermError(f"{term}: no SPF record there")
            return result == "pass"
        if mechanism == "a":
            self.count(term)
            target, p4, p6 = self._split(term, domain)
            return self._in(self.dns.addresses(target, v6), p4, p6)
        if mechanism == "mx":
            self.count(term)
            target, p4, p6 = self._split(term, domain)
            hosts = self.dns.mx(target)
            if len(hosts) > MX_LIMIT:
                raise _PermError(f"{term}: more than {MX_LIMIT} MX hosts")
            return any(self._in(self.dns.addresses(h, v6), p4, p6) for h in hosts)
        if mechanism == "exists":
            self.count(term)
            target = self._target(term.split(":", 1)[1] if ":" in term else "", domain)
            return bool(self.dns.addresses(target, False))
        if mechanism == "ptr":  # deprecated (§5.5); counts, and we cannot assume a match
            self.count(term)
            return False
        raise _PermError(f"unknown mechanism {term!r} in {domain}")


def check_host(dns: Dns, ip: str, domain: str) -> SpfResult:
    """The SPF result for mail from ``domain`` sent by ``ip``."""
    evaluation = _Evaluation(dns, ip)
    try:
        result, reason = evaluation.check(domain)
    except _PermError as exc:
        return SpfResult("permerror", str(exc), evaluation.lookups, evaluation.trail)
    except DnsFailure as exc:
        return SpfResult("temperror", str(exc), evaluation.lookups, evaluation.trail)
    return SpfResult(result, reason, evaluation.lookups, evaluation.trail)
