"""Mailbox providers: which large receiver a recipient domain belongs to (SPEC §1, §2.4).

A provider is recognised first by the recipient domain (``gmail.com`` is
Gmail without a lookup), else by the suffix of its MX hosts after resolution
(``example.org`` whose MX is ``aspmx.l.google.com`` is Google Workspace, so
Gmail). The built-in table covers the large providers; ``[[providers]]``
entries add to it, or replace an entry of the same name. A domain of no
provider is :data:`OTHER`.

The limits here (connections, messages per connection, rate) are per member
for the provider; ``None`` means no limit of that kind beyond the member's own.
Pure data and lookups, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from smtplb.config_sections import ProviderConfig
from smtplb.units import parse_rate

OTHER = "other"


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    domains: tuple[str, ...] = ()
    mx_suffixes: tuple[str, ...] = ()
    max_connections: int | None = None
    max_messages_per_connection: int | None = None
    rate: float | None = None  # messages per second per member; None: unlimited
    rate_text: str | None = None  # as configured, for operators ("3000/h")


def _p(
    name: str,
    domains: Sequence[str],
    mx: Sequence[str],
    max_connections: int | None = None,
    max_messages: int | None = None,
) -> Provider:
    return Provider(name, tuple(domains), tuple(mx), max_connections, max_messages)


# Domains and MX suffixes as the providers publish them (their MX records, late
# 2026); the connection limits are the conservative defaults that KumoMTA's and
# PowerMTA's shipped shaping use for these receivers.
BUILTIN: tuple[Provider, ...] = (
    _p("gmail", ["gmail.com", "googlemail.com"], ["google.com", "googlemail.com"], 20, 100),
    _p(
        "yahoo",
        ["yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de", "yahoo.co.jp", "ymail.com",
         "rocketmail.com", "aol.com", "aim.com", "verizon.net"],
        ["yahoodns.net"],
        10,
        20,
    ),
    _p(
        "outlook",  # Microsoft consumer mail
        ["outlook.com", "hotmail.com", "live.com", "msn.com", "hotmail.co.uk", "hotmail.fr",
         "live.co.uk", "outlook.fr", "outlook.de"],
        ["olc.protection.outlook.com"],
        10,
        100,
    ),
    _p("office365", [], ["mail.protection.outlook.com"], 10, 100),
    _p("icloud", ["icloud.com", "me.com", "mac.com"], ["mail.icloud.com"], 10, 100),
    _p("gmx", ["gmx.de", "gmx.net", "gmx.com", "gmx.at", "gmx.ch", "web.de"],
       ["gmx.net", "web.de"], 10, 100),
    _p("mailru", ["mail.ru", "bk.ru", "inbox.ru", "list.ru", "internet.ru"], ["mail.ru"], 10, 100),
    _p("yandex", ["yandex.ru", "yandex.com", "ya.ru", "yandex.by", "yandex.kz"],
       ["yandex.net", "yandex.ru"], 10, 100),
    _p("comcast", ["comcast.net"], ["comcast.net"], 5, 100),
    _p("att", ["att.net", "sbcglobal.net", "bellsouth.net"], ["prodigy.net", "att.net"], 5, 100),
    _p("orange", ["orange.fr", "wanadoo.fr"], ["orange.fr"], 5, 100),
    _p("qq", ["qq.com", "foxmail.com"], ["qq.com"], 10, 100),
)  # fmt: skip


@dataclass(slots=True)
class ProviderTable:
    """The providers in force: built-in entries, then ``[[providers]]`` over them."""

    providers: dict[str, Provider] = field(default_factory=dict)
    _by_domain: dict[str, str] = field(default_factory=dict)
    _suffixes: list[tuple[str, str]] = field(default_factory=list)  # longest first

    def __post_init__(self) -> None:
        for p in self.providers.values():
            for d in p.domains:
                self._by_domain[d.lower()] = p.name
            for s in p.mx_suffixes:
                self._suffixes.append((s.lower().strip("."), p.name))
        self._suffixes.sort(key=lambda t: -len(t[0]))

    @classmethod
    def build(cls, configured: Iterable[ProviderConfig] = ()) -> ProviderTable:
        table = {p.name: p for p in BUILTIN}
        for c in configured:
            table[c.name] = Provider(
                c.name,
                tuple(d.lower() for d in c.domains),
                tuple(s.lower().strip(".") for s in c.mx_suffixes),
                c.max_connections,
                c.max_messages_per_connection,
                parse_rate(c.rate) if c.rate else None,
                c.rate,
            )
        return cls(table)

    def by_domain(self, domain: str) -> str | None:
        """The provider a recipient domain names without a lookup, if any."""
        return self._by_domain.get(domain.lower().rstrip("."))

    def by_mx(self, hosts: Iterable[str]) -> str | None:
        """The provider of the first MX host (in preference order) with a known suffix."""
        for host in hosts:
            host = host.lower().rstrip(".")
            for suffix, name in self._suffixes:
                if host == suffix or host.endswith("." + suffix):
                    return name
        return None

    def get(self, name: str) -> Provider | None:
        return self.providers.get(name)

    def __iter__(self) -> Iterator[Provider]:
        return iter(self.providers.values())

    def __repr__(self) -> str:
        return f"ProviderTable({sorted(self.providers)})"
