"""Sink profiles: how a smart sink answers, per recipient domain and per client IP, read
from TOML (the format is in ``server.py``'s docstring)."""

from __future__ import annotations

import random
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtplb.smtp.reply import Reply

_REPLY_RE = re.compile(r"([245]\d\d)(?: ([245]\.\d{1,3}\.\d{1,3}))?(?: (.*))?", re.DOTALL)
UNKNOWN_USER = Reply(550, "5.1.1", "User unknown")
_DEFAULT_DEFER = Reply(421, "4.7.28", "Rate limited, try again later")
_DEFAULT_REJECT = Reply(550, "5.7.1", "Message rejected")
# The providers' own words (Gmail's 4.7.28, a Postfix-style connection limit,
# Spamhaus-style block), so response rules meet what they would meet live.
_GMAIL_RATE = Reply(
    421,
    "4.7.28",
    "Our system has detected an unusual rate of unsolicited mail originating from your "
    "IP address. To protect our users from spam, mail sent from your IP address has been "
    "temporarily rate limited.",
)
_TOO_MANY = Reply(421, "4.7.0", "Too many concurrent connections from this IP, try again later")
_BLOCKED = Reply(550, "5.7.1", "Service unavailable, client host blocked (poor reputation)")
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h)\s*$")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reply(text: str) -> Reply:
    """``"421 4.7.28 Try later"`` -> ``Reply(421, "4.7.28", "Try later")``."""
    match = _REPLY_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an SMTP reply like '450 4.7.1 Try again later'")
    return Reply(int(match[1]), match[2], match[3] or "")


@dataclass(frozen=True, slots=True)
class DomainRule:
    """How the sink answers mail for one recipient domain.

    ``accept``, ``defer`` and ``reject`` are relative weights (usually
    fractions summing to 1).
    """

    accept: float = 1.0
    defer: float = 0.0
    reject: float = 0.0
    latency: float = 0.0
    stage: str = "data"
    defer_reply: Reply = _DEFAULT_DEFER
    reject_reply: Reply = _DEFAULT_REJECT

    def __post_init__(self) -> None:
        rates = (self.accept, self.defer, self.reject)
        if min(rates) < 0 or sum(rates) <= 0:
            raise ValueError("accept, defer and reject must be >= 0 and not all 0")
        if self.latency < 0:
            raise ValueError("latency must be >= 0 seconds")
        if self.stage not in ("data", "rcpt"):
            raise ValueError(f"stage must be 'data' or 'rcpt', not {self.stage!r}")
        if not self.defer_reply.is_transient:
            raise ValueError(f"defer_reply must be a 4xx reply, not {self.defer_reply}")
        if not self.reject_reply.is_permanent:
            raise ValueError(f"reject_reply must be a 5xx reply, not {self.reject_reply}")

    def draw(self, rng: random.Random) -> Reply | None:
        """None to accept, else the reply that defers or rejects."""
        x = rng.random() * (self.accept + self.defer + self.reject)
        if x < self.reject:
            return self.reject_reply
        if x < self.reject + self.defer:
            return self.defer_reply
        return None


@dataclass(frozen=True, slots=True)
class ClientRule:
    """How the sink treats one client IP: a rate, a connection limit, a block."""

    rate: tuple[int, float] | None = None  # (messages, per seconds)
    throttle: bool = False  # every RCPT gets throttle_reply (a rate of zero)
    throttle_reply: Reply = _GMAIL_RATE
    max_connections: int | None = None
    connection_reply: Reply = _TOO_MANY
    block: bool = False
    block_reply: Reply = _BLOCKED

    def __post_init__(self) -> None:
        if not self.throttle_reply.is_transient:
            raise ValueError(f"throttle_reply must be a 4xx reply, not {self.throttle_reply}")
        if not self.connection_reply.is_transient:
            raise ValueError(f"connection_reply must be a 4xx reply, not {self.connection_reply}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


def _parse_client(table: Mapping[str, Any]) -> ClientRule:
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("throttle_reply", "connection_reply", "block_reply"):
            kwargs[key] = parse_reply(str(value))
        elif key == "rate":
            m = _RATE_RE.match(value) if isinstance(value, str) else None
            if m is None or int(m[1]) < 1:
                raise ValueError(f'rate must be like "20/m" (N/s, N/m or N/h), not {value!r}')
            kwargs[key] = (int(m[1]), _RATE_UNITS[m[2]])
        elif key == "max_connections":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError("max_connections must be an integer")
            kwargs[key] = value
        elif key in ("block", "throttle"):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
            kwargs[key] = value
        else:
            raise ValueError(f"unknown key {key!r}; known: {sorted(_CLIENT_KEYS)}")
    return ClientRule(**kwargs)


_CLIENT_KEYS = {
    "rate",
    "throttle",
    "throttle_reply",
    "max_connections",
    "connection_reply",
    "block",
    "block_reply",
}


@dataclass(frozen=True, slots=True)
class SinkProfile:
    rules: Mapping[str, DomainRule] = field(default_factory=dict)  # domain or "*"
    clients: Mapping[str, ClientRule] = field(default_factory=dict)  # client IP or "*"
    unknown_users: frozenset[str] = frozenset()  # lower-cased addresses, 550 5.1.1
    seed: int = 0
    hostname: str = "sink.smtplb.test"
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 1000

    def rule_for(self, domain: str) -> DomainRule:
        rule = self.rules.get(domain.lower()) or self.rules.get("*")
        return rule if rule is not None else _ACCEPT_ALL

    def client_rule(self, ip: str) -> ClientRule | None:
        return self.clients.get(ip) or self.clients.get("*")


_ACCEPT_ALL = DomainRule()
_RULE_KEYS = {
    "accept",
    "defer",
    "reject",
    "latency",
    "stage",
    "defer_reply",
    "reject_reply",
}
_PROFILE_KEYS = {
    "seed",
    "hostname",
    "max_message_size",
    "max_recipients",
    "unknown_users",
    "domains",
    "clients",
}


def load_profile(path: Path | str) -> SinkProfile:
    """Read a TOML profile; ``ValueError`` names the file, the key and the problem."""
    with open(path, "rb") as f:
        try:
            doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from None
    return profile_from_dict(doc, source=str(path))


def profile_from_dict(doc: Mapping[str, Any], *, source: str = "profile") -> SinkProfile:
    unknown = set(doc) - _PROFILE_KEYS
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {sorted(unknown)}; known: {sorted(_PROFILE_KEYS)}"
        )
    rules: dict[str, DomainRule] = {}
    domains = doc.get("domains", {})
    if not isinstance(domains, Mapping):
        raise ValueError(f'{source}: domains must be a table of [domains."name"] tables')
    for domain, table in domains.items():
        where = f'{source}: domains."{domain}"'
        if not isinstance(table, Mapping):
            raise ValueError(f"{where} must be a table")
        bad = set(table) - _RULE_KEYS
        if bad:
            raise ValueError(f"{where}: unknown key(s) {sorted(bad)}; known: {sorted(_RULE_KEYS)}")
        kwargs: dict[str, Any] = dict(table)
        try:
            for key in ("defer_reply", "reject_reply"):
                if key in kwargs:
                    kwargs[key] = parse_reply(str(kwargs[key]))
            for key in ("accept", "defer", "reject", "latency"):
                if key in kwargs and not isinstance(kwargs[key], int | float):
                    raise ValueError(f"{key} must be a number")
            rules[str(domain).lower()] = DomainRule(**kwargs)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    clients: dict[str, ClientRule] = {}
    client_tables = doc.get("clients", {})
    if not isinstance(client_tables, Mapping):
        raise ValueError(f'{source}: clients must be a table of [clients."IP"] tables')
    for ip, table in client_tables.items():
        where = f'{source}: clients."{ip}"'
        if not isinstance(table, Mapping):
            raise ValueError(f"{where} must be a table")
        try:
            clients[str(ip)] = _parse_client(table)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    users = doc.get("unknown_users", [])
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise ValueError(f"{source}: unknown_users must be a list of addresses")
    kwargs = {
        k: doc[k] for k in ("seed", "hostname", "max_message_size", "max_recipients") if k in doc
    }
    for key in ("seed", "max_message_size", "max_recipients"):
        if key in kwargs and not isinstance(kwargs[key], int):
            raise ValueError(f"{source}: {key} must be an integer")
    if not isinstance(kwargs.get("hostname", ""), str):
        raise ValueError(f"{source}: hostname must be a string")
    return SinkProfile(
        rules=rules,
        clients=clients,
        unknown_users=frozenset(u.lower() for u in users),
        **kwargs,
    )
