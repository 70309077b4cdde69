"""The config sections of SPEC §3.4 (experiments, warm-up, cluster, DKIM, compliance,
DNS, suppression, reputation) as structs, with their checks (DKIM, compliance and DNS
together: ``validate_mail_auth``); ``config.py`` puts them into the whole
:class:`~smtplb.config.Config`."""

from __future__ import annotations

import ipaddress
import re
import socket

import msgspec

from smtplb.units import Duration, parse_hostport, parse_rate

SUPPRESSION_ACTIONS = ("reject", "drop")
SUPPRESSION_SCOPES = ("global", "sender_domain")
SPLITS = ("recipient", "message")
# Response-rule actions (SPEC §3.4); reduce_connections halves the member's
# adaptive connection window for the provider (the built-in "too many connections").
RULE_ACTIONS = ("suspend", "throttle", "suspend_provider", "defer", "bounce", "reduce_connections")


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A config table: unknown keys are problems, fields are given by name."""


class WarmupConfig(Section):
    # Messages per day per provider, day 1 first; empty: the built-in ×1.4 a day
    # from 50 up to 100 000 (smtplb.reputation.warmup.DEFAULT_SCHEDULE).
    schedule: list[int] = msgspec.field(default_factory=list)
    max_hourly_share: float = 0.2
    # The closed loop: a day's rate at or over *_hold keeps the step, at or
    # over *_step_back moves one step back (defaults: the reputation thresholds).
    deferral_hold: float = 0.02
    deferral_step_back: float = 0.10
    policy_block_hold: float = 0.01
    policy_block_step_back: float = 0.05
    bounce_hold: float = 0.05
    bounce_step_back: float = 0.10
    complaint_hold: float = 0.001
    complaint_step_back: float = 0.003
    idle_restart: Duration = Duration(30 * 86400)


class ExperimentVariantConfig(Section):
    name: str
    share: float = 0.0  # percent; checked with the others (a default keeps one problem per key)
    strategy: str | None = None  # default: the pool's
    members: list[str] | None = None  # default: all of the pool's


class ExperimentConfig(Section):
    name: str
    pool: str
    split: str = "recipient"  # recipient | message
    guardrail_bounce_margin: float = 0.02
    variants: list[ExperimentVariantConfig] = msgspec.field(default_factory=list)


class ProviderRuleConfig(Section):
    match: str  # regex on "code enhanced text" of a reply
    action: str
    duration: Duration = Duration(3600)
    name: str = ""  # default: "<provider>-<index>"


class ProviderConfig(Section):
    """One mailbox provider; an entry with a built-in name replaces that one."""

    name: str
    domains: list[str] = msgspec.field(default_factory=list)
    mx_suffixes: list[str] = msgspec.field(default_factory=list)
    max_connections: int | None = None  # per member, for this provider
    max_messages_per_connection: int | None = None
    rate: str | None = None  # per member: "N/s", "N/m", "N/h", "N/d"
    rules: list[ProviderRuleConfig] = msgspec.field(default_factory=list)


class ClusterConfig(Section):
    """SPEC §2.8: several nodes sharing their limits through one Redis."""

    redis: str | None = None  # redis://, rediss:// or unix:// URL; unset: one node, embedded
    node: str = msgspec.field(default_factory=socket.gethostname)  # this node's name


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
COMPLIANCE_MODES = ("off", "warn", "reject")
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)


def validate_cluster(cluster: ClusterConfig) -> list[str]:
    problems: list[str] = []
    url = cluster.redis
    if url is not None:
        scheme, _, rest = url.partition("://")
        if not url.startswith(REDIS_SCHEMES) or not rest.strip("/"):
            problems.append(
                f"cluster.redis: expected a redis://host:port/db, rediss://… or unix:///path URL,"
                f" got {url!r}"
            )
        elif scheme != "unix" and not rest.rpartition("@")[2].split("/")[0]:
            problems.append(f"cluster.redis: no host in {url!r} (e.g. redis://127.0.0.1:6379/0)")
    if not cluster.node or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", cluster.node):
        problems.append(
            f"cluster.node: expected a name of letters, digits, '.', '_' or '-'"
            f" (at most 64), got {cluster.node!r}"
        )
    return problems


class DkimConfig(Section):
    """One selector of one signing domain (several entries per domain for a rotation:
    every ``active`` one signs, so two active selectors dual-sign)."""

    domain: str  # signs mail whose From domain is this or a subdomain of it
    selector: str
    key: str  # PEM: RSA ≥ 1024 bits (2048 advised) or Ed25519
    active: bool = True  # false: loaded and checked (`auth check`), not signing


class ComplianceConfig(Section):
    list_unsubscribe: str = "off"  # off | warn | reject, for marketing and bulk mail
    # Per sender domain over [reputation] window: marketing and bulk mail at half share
    # from complaint_throttle, held (deferred) from complaint_stop; see
    # smtplb.reputation.complaint_budget.
    complaint_budget: bool = True
    complaint_throttle: float = 0.001
    complaint_stop: float = 0.0025


class DnsConfig(Section):
    nameservers: list[str] = msgspec.field(default_factory=list)  # "host:port"; empty: system


def validate_mail_auth(
    dkim: list[DkimConfig], compliance: ComplianceConfig, dns: DnsConfig
) -> list[str]:
    """[[dkim]], [compliance], [dns]; the key files themselves are loaded (and their
    problems named) by ``smtplb.mailauth.keys.load_keyring``."""
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for i, entry in enumerate(dkim):
        at = f"dkim[{i}]"
        domain = entry.domain.lower().rstrip(".")
        if not _DNS_NAME.match(domain) or "." not in domain:
            problems.append(f"{at}.domain: not a domain name: {entry.domain!r}")
        if not _DNS_NAME.match(entry.selector.lower()):
            problems.append(f"{at}.selector: not a DNS label: {entry.selector!r}")
        if (domain, entry.selector.lower()) in seen:
            problems.append(f"{at}.selector: {entry.selector!r} of {domain} is already configured")
        seen.add((domain, entry.selector.lower()))
        if not entry.key:
            problems.append(f"{at}.key: the path of the PEM private key is required")
    if compliance.list_unsubscribe not in COMPLIANCE_MODES:
        problems.append(
            f"compliance.list_unsubscribe: unknown mode {compliance.list_unsubscribe!r} "
            f"(expected one of {', '.join(COMPLIANCE_MODES)})"
        )
    c = compliance
    if not 0 < c.complaint_throttle <= c.complaint_stop < 1:
        problems.append(
            "compliance.complaint_stop: expected 0 < complaint_throttle <= complaint_stop < 1,"
            f" got {c.complaint_throttle} and {c.complaint_stop}"
        )
    for i, server in enumerate(dns.nameservers):
        try:
            host, _ = parse_hostport(server)
            ipaddress.ip_address(host)
        except ValueError:
            problems.append(f"dns.nameservers[{i}]: expected IP:port, got {server!r}")
    return problems


class SuppressionConfig(Section):
    on_intake: str = "reject"  # reject: 550 5.7.1 at RCPT | drop: accept, log `suppressed`
    hard_bounces: bool = True  # a hard bounce adds the recipient
    # The scope of automatic additions from complaints: every sender, or only the
    # complained-about sender domain. Hard bounces are always global.
    scope: str = "global"  # global | sender_domain


class ReputationConfig(Section):
    window: Duration = Duration(86400)  # rolling window of the rates
    min_volume: int = 50  # no automatic decision on fewer messages
    hard_bounce_throttle: float = 0.05
    hard_bounce_quarantine: float = 0.10
    complaint_throttle: float = 0.001
    complaint_quarantine: float = 0.003
    policy_block_quarantine: float = 0.05
    quarantine: Duration = Duration(6 * 3600)  # cool-down before probation
    probation: int = 100  # messages at a reduced share before "ok"
    # Mail to these addresses is an ARF report to consume (a feedback loop), not to relay.
    feedback_addresses: list[str] = msgspec.field(default_factory=list)


def validate_reputation(suppression: SuppressionConfig, rep: ReputationConfig) -> list[str]:
    """[suppression] and [reputation]."""
    problems: list[str] = []

    def check(ok: bool, key: str, message: str) -> None:
        if not ok:
            problems.append(f"{key}: {message}")

    check(
        suppression.on_intake in SUPPRESSION_ACTIONS,
        "suppression.on_intake",
        f'expected "reject" or "drop", got {suppression.on_intake!r}',
    )
    check(
        suppression.scope in SUPPRESSION_SCOPES,
        "suppression.scope",
        f'expected "global" or "sender_domain", got {suppression.scope!r}',
    )
    check(rep.window > 0, "reputation.window", "must be above 0s")
    check(rep.min_volume >= 1, "reputation.min_volume", "must be at least 1")
    check(rep.probation >= 0, "reputation.probation", "must be 0 or more")
    for i, address in enumerate(rep.feedback_addresses):
        check(
            address.count("@") == 1 and all(address.split("@")),
            f"reputation.feedback_addresses[{i}]",
            f"expected a mail address like fbl@example.test, got {address!r}",
        )
    for key in (
        "hard_bounce_throttle",
        "hard_bounce_quarantine",
        "complaint_throttle",
        "complaint_quarantine",
        "policy_block_quarantine",
    ):
        rate = getattr(rep, key)
        check(
            0 < rate <= 1, f"reputation.{key}", f"must be a rate above 0 and at most 1, got {rate}"
        )
    return problems


def validate_experiments(
    experiments: list[ExperimentConfig],
    pool_members: dict[str, set[str]],
    strategies: tuple[str, ...],
) -> list[str]:
    """[[experiments]]: pools and members named, shares, strategies."""
    problems: list[str] = []
    names: set[str] = set()
    experimented: set[str] = set()
    for i, exp in enumerate(experiments):
        at = f"experiments[{i}]"
        if exp.name in names or not exp.name:
            problems.append(f"{at}.name: duplicate or empty experiment name {exp.name!r}")
        names.add(exp.name)
        pool = pool_members.get(exp.pool)
        if pool is None:
            problems.append(f"{at}.pool: no pool named {exp.pool!r}")
        elif exp.pool in experimented:
            problems.append(f"{at}.pool: pool {exp.pool!r} already has an experiment")
        experimented.add(exp.pool)
        if exp.split not in SPLITS:
            problems.append(f"{at}.split: expected one of {', '.join(SPLITS)}")
        if not 0 <= exp.guardrail_bounce_margin < 1:
            problems.append(f"{at}.guardrail_bounce_margin: must be from 0 to below 1")
        if len(exp.variants) < 2:
            problems.append(f"{at}.variants: an experiment needs at least two variants")
        variant_names: set[str] = set()
        for j, v in enumerate(exp.variants):
            vat = f"{at}.variants[{j}]"
            if v.name in variant_names or not v.name:
                problems.append(f"{vat}.name: duplicate or empty variant name {v.name!r}")
            variant_names.add(v.name)
            if not 0 < v.share <= 100:
                problems.append(f"{vat}.share: must be set, above 0 and at most 100 (percent)")
            if v.strategy is not None and v.strategy not in strategies:
                problems.append(
                    f"{vat}.strategy: unknown strategy {v.strategy!r} "
                    f"(expected one of {', '.join(strategies)})"
                )
            if v.members is not None and pool is not None:
                known = pool
                unknown = [m for m in v.members if m not in known]
                if unknown or not v.members:
                    problems.append(
                        f"{vat}.members: {', '.join(map(repr, unknown)) or 'empty list'}: "
                        f"not members of pool {exp.pool!r}"
                    )
        if exp.variants and abs(sum(v.share for v in exp.variants) - 100) > 1e-6:
            problems.append(f"{at}.variants: shares must add up to 100 (percent)")
    return problems


def validate_providers(providers: list[ProviderConfig]) -> list[str]:
    """[[providers]]: names, limits, rates, and each rule's regex and action."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, p in enumerate(providers):
        at = f"providers[{i}]"
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", p.name):
            problems.append(f"{at}.name: expected a lower-case name like 'gmail', got {p.name!r}")
        if p.name in seen:
            problems.append(f"{at}.name: provider {p.name!r} is defined twice")
        seen.add(p.name)
        for key in ("max_connections", "max_messages_per_connection"):
            value = getattr(p, key)
            if value is not None and value < 1:
                problems.append(f"{at}.{key}: must be at least 1")
        if p.rate is not None:
            try:
                parse_rate(p.rate)
            except ValueError as exc:
                problems.append(f"{at}.rate: {exc}")
        for j, rule in enumerate(p.rules):
            rat = f"{at}.rules[{j}]"
            try:
                re.compile(rule.match)
            except re.error as exc:
                problems.append(f"{rat}.match: not a valid regular expression: {exc}")
            if rule.action not in RULE_ACTIONS:
                problems.append(
                    f"{rat}.action: unknown action {rule.action!r} "
                    f"(expected one of {', '.join(RULE_ACTIONS)})"
                )
    return problems
