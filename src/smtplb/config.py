"""Configuration: the TOML file of SPEC §3.2, parsed and validated.

Every user error becomes a :class:`ConfigError` whose lines each name the key
path and the problem, e.g. ``pools[0].strategy: unknown strategy 'x'
(expected one of round_robin, weighted, …)``; all of them in one run (the
shape of the data is checked by :mod:`smtplb.config_shape`, which does not
stop at the first mistake). Never a traceback. Keys that SPEC names but that
are not built yet are accepted with a warning, never silently.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import msgspec

from smtplb.config_sections import (
    ClusterConfig,
    ComplianceConfig,
    DkimConfig,
    DnsConfig,
    ExperimentConfig,
    ProviderConfig,
    ReputationConfig,
    Section,
    SuppressionConfig,
    WarmupConfig,
    validate_cluster,
    validate_experiments,
    validate_mail_auth,
    validate_providers,
    validate_reputation,
)
from smtplb.config_shape import Rules, check_shape, key_name, related
from smtplb.units import Duration, Size, parse_hostport

STRATEGIES = ("round_robin", "weighted", "least_connections", "latency", "hash", "failover")
HASH_KEYS = ("recipient_domain", "sender_domain", "client_ip", "sender")
TLS_MODES = ("opportunistic", "required", "none")
PRIORITIES = {"high": 0, "normal": 1, "low": 2}
CONTENT_CLASSES = ("transactional", "marketing", "bulk")
ROUTE_MATCH_KEYS = (
    "sender",
    "sender_domain",
    "recipient",
    "recipient_domain",
    "auth_user",
    "client_ip",
    "header",
    "class",
)
MAX_MESSAGE_SIZE = Size(2 * 1024**3)

# Keys SPEC §3.4 names for features that are not built yet: accepted with a warning
# ("not implemented yet, ignored") rather than refused as unknown. A key leaves this
# table by itself once its struct field exists; delete the entry with the feature.
PLANNED: dict[str, str] = {}
# Keys that parse but whose feature does nothing yet: a warning when set (true or a
# value). Delete the entry when the feature is built.
INERT: dict[str, str] = {}


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class UserConfig(Section):
    name: str
    password_hash: str


class SmtpConfig(Section):
    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:2525"])
    relay_networks: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    max_message_size: Size = Size(25_000_000)
    # Message content held in memory at once on the node (all workers); over it
    # DATA gets 452 4.3.1. Unset: four messages of max_message_size.
    max_pending_bytes: Size | None = None
    max_recipients: int = 100
    max_line_length: int = 1000
    max_errors: int = 10
    max_connections_per_client: int = 50
    max_connections: int = 1000  # node-wide; with workers each takes its share
    idle_timeout: Duration = Duration(300)
    command_deadline: Duration = Duration(30)  # a command line, first byte to CRLF
    data_timeout: Duration = Duration(600)  # the whole of DATA, 354 to the final dot
    tls_cert: str | None = None
    tls_key: str | None = None
    require_auth: bool = False
    auth_without_tls: bool = False
    users: list[UserConfig] = msgspec.field(default_factory=list)
    reuse_port: bool = False
    auth_max_failures: int = 10  # failed AUTH from one IP before its lockout
    auth_lockout: Duration = Duration(900)  # also how long failures are remembered
    auth_delay: Duration = Duration(1)  # wait before answering after one failure; doubles
    auth_max_delay: Duration = Duration(15)

    def pending_bytes_share(self, workers: int) -> int:
        """One worker's share of ``max_pending_bytes`` (room for one largest message at least)."""
        total = self.max_pending_bytes or 4 * self.max_message_size
        return max(self.max_message_size, -(-total // workers))


class HttpConfig(Section):
    listen: str = "127.0.0.1:8025"
    api_keys: list[str] = msgspec.field(default_factory=list)
    public_read: bool = True
    # Host names besides localhost, IP literals, `hostname` and the listen host;
    # "*": any (see smtplb.api.security).
    allowed_hosts: list[str] = msgspec.field(default_factory=list)


class MemberConfig(Section):
    name: str
    relay: str | None = None
    source_ip: str | None = None
    ehlo: str | None = None
    weight: int = 1
    max_connections: int = 10
    max_messages_per_connection: int = 100
    tls: str = "opportunistic"
    implicit_tls: bool = False
    tls_verify: bool = False
    username: str | None = None
    password: str | None = None
    warmup: bool = False
    warmup_start: str | None = None  # "YYYY-MM-DD"; default: the first message sent
    check_target: str | None = None  # egress: host:port to probe from source_ip

    @property
    def kind(self) -> str:
        return "relay" if self.relay is not None else "egress"

    def __repr__(self) -> str:  # never show the password
        target = self.relay if self.relay is not None else f"egress {self.source_ip}"
        return f"MemberConfig({self.name!r}, {target}, weight={self.weight})"


class PoolConfig(Section):
    name: str
    strategy: str = "round_robin"
    hash_key: str = "recipient_domain"
    hash_balance_factor: float = 1.25
    latency_decay: Duration = Duration(10)
    members: list[MemberConfig] = msgspec.field(default_factory=list)


class RouteConfig(Section):
    pool: str
    match: dict[str, str | list[str]] = msgspec.field(default_factory=dict)
    priority: str | None = None
    content_class: str | None = msgspec.field(name="class", default=None)


class HealthConfig(Section):
    interval: Duration = Duration(2)
    timeout: Duration = Duration(5)
    rise: int = 2
    fall: int = 3
    slow_start: Duration = Duration(30)
    checks: bool = True  # active checks of relay members (and egress with check_target)
    base_ejection: Duration = Duration(10)
    max_ejection: Duration = Duration(300)
    max_ejection_percent: int = 50


class DeliveryConfig(Section):
    retry_base: Duration = Duration(60)
    retry_max: Duration = Duration(3600)
    retry_jitter: float = 0.2
    max_lifetime: Duration = Duration(5 * 86400)
    connect_timeout: Duration = Duration(30)
    command_timeout: Duration = Duration(60)
    data_timeout: Duration = Duration(300)
    connection_idle: Duration = Duration(10)
    max_in_flight: int = 2000
    keep_final: Duration = Duration(86400)  # finished messages stay for `queue show`
    mx_port: int = 25  # the port of MX hosts (tests point it at a sink)


class LogConfig(Section):
    delivery_log_max_size: Size = Size(100_000_000)
    delivery_log_keep: int = 5
    level: str = "info"


class WebhookConfig(Section):
    url: str
    events: list[str] = msgspec.field(
        default_factory=lambda: [
            "delivered",
            "bounced",
            "deferred",
            "expired",
            "complaint",
            "member_*",
            "suspended",
            "quarantined",
            "throttled",
            "probation",
            "reputation_ok",
            "experiment_*",
        ]
    )
    secret: str | None = None
    batch: int = 100
    max_queue: int = 10000
    max_attempts: int = 8
    retry_base: Duration = Duration(1)
    timeout: Duration = Duration(10)

    def __repr__(self) -> str:  # never show the secret
        return f"WebhookConfig({self.url!r}, events={self.events})"


class Config(Section):
    data_dir: str = "var"
    # processes on this node, each with its own spool shard; "auto" (the default) is
    # one per core, resolved by parse_config (see resolve_workers)
    workers: int = 1
    hostname: str = msgspec.field(default_factory=socket.getfqdn)
    smtp: SmtpConfig = msgspec.field(default_factory=SmtpConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    pools: list[PoolConfig] = msgspec.field(default_factory=list)
    routes: list[RouteConfig] = msgspec.field(default_factory=list)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    delivery: DeliveryConfig = msgspec.field(default_factory=DeliveryConfig)
    static_routes: dict[str, str] = msgspec.field(default_factory=dict)
    webhooks: list[WebhookConfig] = msgspec.field(default_factory=list)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    warmup: WarmupConfig = msgspec.field(default_factory=WarmupConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    dkim: list[DkimConfig] = msgspec.field(default_factory=list)
    compliance: ComplianceConfig = msgspec.field(default_factory=ComplianceConfig)
    dns: DnsConfig = msgspec.field(default_factory=DnsConfig)
    providers: list[ProviderConfig] = msgspec.field(default_factory=list)

    suppression: SuppressionConfig = msgspec.field(default_factory=SuppressionConfig)
    reputation: ReputationConfig = msgspec.field(default_factory=ReputationConfig)
    experiments: list[ExperimentConfig] = msgspec.field(default_factory=list)

    @property
    def members(self) -> list[MemberConfig]:
        return [m for p in self.pools for m in p.members]


def default_pools() -> list[PoolConfig]:
    """Built-in default: deliver straight to the MX from the default source address."""
    return [
        PoolConfig(
            name="default",
            members=[MemberConfig(name="direct", source_ip="0.0.0.0", max_connections=20)],
        )
    ]


def _dec_hook(tp: type, obj: object) -> object:
    if tp is Duration:
        return Duration.parse(obj)
    if tp is Size:
        return Size.parse(obj)
    raise NotImplementedError


_MSGSPEC_PATH = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)


def _format_msgspec_error(err: msgspec.ValidationError) -> str:
    m = _MSGSPEC_PATH.match(str(err))
    if not m:
        return str(err)
    path = m.group("path").lstrip(".")
    msg = m.group("msg")
    unknown = re.match(r"Object contains unknown field `(.+)`", msg)
    if unknown:
        key = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        return f"{key}: unknown key"
    missing = re.match(r"Object missing required field `(.+)`", msg)
    if missing:
        key = f"{path}.{missing.group(1)}" if path else missing.group(1)
        return f"{key}: required key is missing"
    return f"{path or '(top level)'}: {msg[0].lower()}{msg[1:]}"


def _validate(cfg: Config) -> list[str]:
    problems: list[str] = []

    def check(ok: bool, key: str, message: str) -> None:
        if not ok:
            problems.append(f"{key}: {message}")

    check(1 <= cfg.workers <= MAX_WORKERS, "workers", f"{WORKERS_EXPECTED}, got {cfg.workers}")
    for i, addr in enumerate(cfg.smtp.listen):
        try:
            parse_hostport(addr)
        except ValueError as exc:
            problems.append(f"smtp.listen[{i}]: {exc}")
    for i, net in enumerate(cfg.smtp.relay_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"smtp.relay_networks[{i}]: not an IP network: {net!r}")
    check(cfg.smtp.max_recipients >= 1, "smtp.max_recipients", "must be at least 1")
    check(cfg.smtp.max_line_length >= 512, "smtp.max_line_length", "must be at least 512")
    check(cfg.smtp.max_message_size >= 1024, "smtp.max_message_size", "must be at least 1KB")
    check(cfg.smtp.max_connections >= 1, "smtp.max_connections", "must be at least 1")
    check(
        cfg.smtp.max_connections_per_client >= 1,
        "smtp.max_connections_per_client",
        "must be at least 1",
    )
    for key in ("idle_timeout", "command_deadline", "data_timeout"):
        check(getattr(cfg.smtp, key) > 0, f"smtp.{key}", "must be above 0s")
    check(cfg.smtp.auth_max_failures >= 1, "smtp.auth_max_failures", "must be at least 1")
    check(cfg.smtp.auth_lockout > 0, "smtp.auth_lockout", "must be above 0s")
    check(
        cfg.smtp.auth_max_delay >= cfg.smtp.auth_delay,
        "smtp.auth_max_delay",
        "must be at least auth_delay",
    )
    check(
        cfg.smtp.max_pending_bytes is None
        or cfg.smtp.max_pending_bytes >= cfg.smtp.max_message_size,
        "smtp.max_pending_bytes",
        "must be at least smtp.max_message_size",
    )
    check(
        cfg.smtp.max_message_size <= MAX_MESSAGE_SIZE,
        "smtp.max_message_size",
        "must be at most 2GiB",
    )
    check(
        (cfg.smtp.tls_cert is None) == (cfg.smtp.tls_key is None),
        "smtp.tls_cert",
        "tls_cert and tls_key go together",
    )
    for key in ("tls_cert", "tls_key"):
        path = getattr(cfg.smtp, key)
        check(path is None or Path(path).is_file(), f"smtp.{key}", f"no such file: {path!r}")
    if cfg.smtp.auth_without_tls:
        loopback = all(_is_loopback(a) for a in cfg.smtp.listen)
        check(
            loopback,
            "smtp.auth_without_tls",
            "allowed only when every smtp.listen address is loopback",
        )
    check(
        not cfg.smtp.require_auth or bool(cfg.smtp.users),
        "smtp.require_auth",
        "needs at least one entry in smtp.users",
    )
    try:
        parse_hostport(cfg.http.listen)
    except ValueError as exc:
        problems.append(f"http.listen: {exc}")
    for i, name in enumerate(cfg.http.allowed_hosts):
        check(
            name == "*" or re.fullmatch(r"[A-Za-z0-9._\-]+|\[[0-9A-Fa-f:.]+\]", name) is not None,
            f"http.allowed_hosts[{i}]",
            f'{name!r} is not a host name (e.g. "smtplb.example.com", no scheme or port)',
        )

    pool_names: set[str] = set()
    member_names: set[str] = set()
    check(bool(cfg.pools), "pools", "at least one pool is needed")
    for i, pool in enumerate(cfg.pools):
        at = f"pools[{i}]"
        check(pool.name not in pool_names, f"{at}.name", f"duplicate pool name {pool.name!r}")
        pool_names.add(pool.name)
        check(
            pool.strategy in STRATEGIES,
            f"{at}.strategy",
            f"unknown strategy {pool.strategy!r} (expected one of {', '.join(STRATEGIES)})",
        )
        check(
            pool.hash_key in HASH_KEYS,
            f"{at}.hash_key",
            f"unknown hash key {pool.hash_key!r} (expected one of {', '.join(HASH_KEYS)})",
        )
        check(pool.hash_balance_factor > 1.0, f"{at}.hash_balance_factor", "must be above 1.0")
        check(bool(pool.members), f"{at}.members", "a pool needs at least one member")
        for j, member in enumerate(pool.members):
            problems.extend(_validate_member(member, f"{at}.members[{j}]", member_names))

    for i, route in enumerate(cfg.routes):
        at = f"routes[{i}]"
        check(route.pool in pool_names, f"{at}.pool", f"no pool named {route.pool!r}")
        for key in route.match:
            check(
                key in ROUTE_MATCH_KEYS,
                f"{at}.match.{key_name(key)}",
                f"unknown match key (expected one of {', '.join(ROUTE_MATCH_KEYS)})",
            )
        check(
            route.priority is None or route.priority in PRIORITIES,
            f"{at}.priority",
            f"expected one of {', '.join(PRIORITIES)}",
        )
        check(
            route.content_class is None or route.content_class in CONTENT_CLASSES,
            f"{at}.class",
            f"expected one of {', '.join(CONTENT_CLASSES)}",
        )

    h = cfg.health
    check(h.rise >= 1, "health.rise", "must be at least 1")
    check(h.fall >= 1, "health.fall", "must be at least 1")
    check(h.interval > 0, "health.interval", "must be above 0s")
    check(h.timeout > 0, "health.timeout", "must be above 0s")
    check(0 <= h.max_ejection_percent <= 100, "health.max_ejection_percent", "must be 0 to 100")
    check(h.max_ejection >= h.base_ejection, "health.max_ejection", "must be ≥ base_ejection")
    d = cfg.delivery
    check(d.retry_base > 0, "delivery.retry_base", "must be above 0s")
    check(d.retry_max >= d.retry_base, "delivery.retry_max", "must be at least retry_base")
    check(0 <= d.retry_jitter < 1, "delivery.retry_jitter", "must be from 0 to below 1")
    check(d.max_lifetime > 0, "delivery.max_lifetime", "must be above 0s")
    check(d.max_in_flight >= 1, "delivery.max_in_flight", "must be at least 1")
    for domain, target in cfg.static_routes.items():
        try:
            parse_hostport(target)
        except ValueError as exc:
            problems.append(f"static_routes.{key_name(domain)}: {exc}")
    for i, hook in enumerate(cfg.webhooks):
        check(
            hook.url.startswith(("http://", "https://")),
            f"webhooks[{i}].url",
            "must be an http:// or https:// URL",
        )
        check(hook.batch >= 1, f"webhooks[{i}].batch", "must be at least 1")
        check(hook.max_attempts >= 1, f"webhooks[{i}].max_attempts", "must be at least 1")
    check(
        cfg.log.level in ("debug", "info", "warning", "error"),
        "log.level",
        "expected one of debug, info, warning, error",
    )
    w = cfg.warmup
    check(
        all(c >= 1 for c in w.schedule),
        "warmup.schedule",
        "expected caps of at least 1 message a day, day 1 first (or leave it out)",
    )
    check(0 < w.max_hourly_share <= 1, "warmup.max_hourly_share", "expected a share in (0, 1]")
    for kind in ("deferral", "policy_block", "bounce", "complaint"):
        hold, back = getattr(w, f"{kind}_hold"), getattr(w, f"{kind}_step_back")
        check(
            0 < hold <= back <= 1,
            f"warmup.{kind}_hold",
            f"expected 0 < {kind}_hold <= {kind}_step_back <= 1, got {hold} and {back}",
        )
    check(0 < cfg.delivery.mx_port < 65536, "delivery.mx_port", "must be a port from 1 to 65535")
    problems.extend(validate_mail_auth(cfg.dkim, cfg.compliance, cfg.dns))
    problems.extend(validate_providers(cfg.providers))
    problems.extend(validate_reputation(cfg.suppression, cfg.reputation))
    problems.extend(validate_cluster(cfg.cluster))
    problems.extend(
        validate_experiments(
            cfg.experiments, {p.name: {m.name for m in p.members} for p in cfg.pools}, STRATEGIES
        )
    )
    return problems


def _validate_member(member: MemberConfig, at: str, seen: set[str]) -> list[str]:
    problems: list[str] = []
    if member.name in seen:
        problems.append(f"{at}.name: duplicate member name {member.name!r}")
    seen.add(member.name)
    if (member.relay is None) == (member.source_ip is None):
        problems.append(f"{at}: set exactly one of relay (host:port) or source_ip")
    if member.relay is not None:
        try:
            parse_hostport(member.relay)
        except ValueError as exc:
            problems.append(f"{at}.relay: {exc}")
    if member.check_target is not None:
        try:
            parse_hostport(member.check_target)
        except ValueError as exc:
            problems.append(f"{at}.check_target: {exc}")
    if member.source_ip is not None:
        try:
            ipaddress.ip_address(member.source_ip)
        except ValueError:
            problems.append(f"{at}.source_ip: not an IP address: {member.source_ip!r}")
    if member.weight < 1:
        problems.append(f"{at}.weight: must be at least 1")
    if member.max_connections < 1:
        problems.append(f"{at}.max_connections: must be at least 1")
    if member.max_messages_per_connection < 1:
        problems.append(f"{at}.max_messages_per_connection: must be at least 1")
    if member.tls not in TLS_MODES:
        problems.append(
            f"{at}.tls: unknown mode {member.tls!r} (expected one of {', '.join(TLS_MODES)})"
        )
    if member.warmup_start is not None:
        try:
            date.fromisoformat(member.warmup_start)
        except ValueError:
            problems.append(
                f"{at}.warmup_start: expected a date YYYY-MM-DD, got {member.warmup_start!r}"
            )
    if (member.username is None) != (member.password is None):
        problems.append(f"{at}.username: username and password go together")
    return problems


def _is_loopback(listen: str) -> bool:
    """Whether a listen address is loopback; a malformed one is not (smtp.listen
    reports it)."""
    try:
        host, _ = parse_hostport(listen)
    except ValueError:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


MAX_WORKERS = 64
WORKERS_EXPECTED = f'expected an integer from 1 to {MAX_WORKERS} or "auto"'


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity on this platform
        return os.cpu_count() or 1


def resolve_workers(value: object, cores: int) -> object:
    """``workers`` as written (None when absent) → what the type check gets: absent and
    ``"auto"`` mean one per core (at most 64); other text raises ValueError; any other
    value is passed on (an int, or a type error that names the key)."""
    if value is None or value == "auto":
        return max(1, min(MAX_WORKERS, cores))
    if isinstance(value, str):
        raise ValueError(f"{WORKERS_EXPECTED}, got {value!r}")
    return value


def parse_config(data: dict[str, Any], warnings: list[str] | None = None) -> Config:
    """Build a validated :class:`Config` from TOML data; raise :class:`ConfigError`
    with every problem found. ``warnings`` (when given) receives a ``key: text``
    line per key that is accepted but does nothing yet."""
    early: list[str] = []
    try:
        data = {**data, "workers": resolve_workers(data.get("workers"), usable_cores())}
    except ValueError as exc:
        early.append(f"workers: {exc}")
        data = {k: v for k, v in data.items() if k != "workers"}
    shape = check_shape(data, Config, _dec_hook, Rules(PLANNED, INERT))
    problems = early + shape.problems
    try:
        cfg = msgspec.convert(shape.data, Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:  # the shape check should have caught it
        raise ConfigError([*problems, _format_msgspec_error(exc)]) from None
    if not cfg.pools and "pools" not in data:
        cfg.pools = default_pools()
    problems += [p for p in _validate(cfg) if not related(p.partition(": ")[0], shape.bad)]
    if warnings is not None:
        warnings.extend(shape.warnings)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path | None, warnings: list[str] | None = None) -> Config:
    """Read ``path`` (or built-in defaults when None); raise :class:`ConfigError`.
    ``warnings``: see :func:`parse_config`."""
    if path is None:
        return parse_config({}, warnings)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not UTF-8 text"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: not valid TOML: {exc}"]) from None
    return parse_config(data, warnings)
