"""The config sections of SPEC §3.4 (warm-up, cluster, DKIM, compliance, DNS, suppression,
reputation) as structs, and the checks of the reputation sections; ``config.py`` puts them
into the whole :class:`~smtplb.config.Config`."""

from __future__ import annotations

import msgspec

from smtplb.units import Duration

SUPPRESSION_ACTIONS = ("reject", "drop")


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


class ClusterConfig(Section):
    redis: str | None = None


class DkimConfig(Section):
    """One selector of one signing domain (several entries per domain for a rotation:
    every ``active`` one signs, so two active selectors dual-sign)."""

    domain: str  # signs mail whose From domain is this or a subdomain of it
    selector: str
    key: str  # PEM: RSA ≥ 1024 bits (2048 advised) or Ed25519
    active: bool = True  # false: loaded and checked (`auth check`), not signing


class ComplianceConfig(Section):
    list_unsubscribe: str = "off"  # off | warn | reject, for marketing and bulk mail
    complaint_budget: bool = True  # needs the reputation counters (not wired yet)


class DnsConfig(Section):
    nameservers: list[str] = msgspec.field(default_factory=list)  # "host:port"; empty: system


class SuppressionConfig(Section):
    on_intake: str = "reject"  # reject: 550 5.7.1 at RCPT | drop: accept, log `suppressed`
    hard_bounces: bool = True  # a hard bounce adds the recipient


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
