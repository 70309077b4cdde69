"""Response rules: a regex on an upstream's reply and what to do when it matches.

A rule looks at ``"code enhanced text"`` of one reply (``"421 4.7.28 Our system
has detected …"``) and names an action (SPEC §3.4):

- ``suspend``: this member sends nothing to this provider for ``duration``;
- ``throttle``: this member's rate for this provider is halved for ``duration``,
  then restored stepwise;
- ``suspend_provider``: no member sends to this provider for ``duration``;
- ``defer`` / ``bounce``: this recipient's fate, whatever the reply's code said;
- ``reduce_connections``: halve the member's adaptive connection window for
  the provider (the generic "too many connections").

Configured rules of a provider are checked before its built-in ones, then the
generic rules that apply to every provider. The first match wins. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from smtplb.config_sections import ProviderConfig
from smtplb.smtp.reply import Reply


@dataclass(frozen=True, slots=True)
class ResponseRule:
    name: str
    provider: str | None  # None: any provider
    pattern: re.Pattern[str]
    action: str
    duration: float  # seconds

    def matches(self, line: str) -> bool:
        return self.pattern.search(line) is not None


def reply_line(reply: Reply) -> str:
    """What a rule's regex sees: ``"code enhanced text"`` (no enhanced code: ``"code text"``)."""
    parts = [str(reply.code)]
    if reply.enhanced_code:
        parts.append(reply.enhanced_code)
    if reply.text:
        parts.append(" ".join(reply.text.split()))  # a multi-line reply as one line
    return " ".join(parts)


def _r(name: str, provider: str | None, regex: str, action: str, minutes: float) -> ResponseRule:
    return ResponseRule(name, provider, re.compile(regex, re.IGNORECASE), action, minutes * 60)


# The built-in set, from the providers' published reply codes (Google's "SMTP
# errors and codes", Yahoo's "SMTP error codes", Microsoft's NDR reference) and
# the actions KumoMTA's shaping.toml automation takes for them.
BUILTIN_RULES: tuple[ResponseRule, ...] = (
    _r("gmail-4.7.28", "gmail", r"^4\d\d 4\.7\.28\b", "suspend", 60),
    _r("gmail-4.7.0-rate", "gmail", r"^4\d\d 4\.7\.0\b.*\b(unusual rate|rate limit)",
       "throttle", 30),
    _r("gmail-5.7.26", "gmail", r"^5\d\d 5\.7\.26\b", "bounce", 0),
    _r("yahoo-tss04", "yahoo", r"\bTSS04\b", "suspend", 60),
    _r("yahoo-tss09", "yahoo", r"\bTSS09\b", "suspend", 240),
    _r("yahoo-ts01", "yahoo", r"^421 4\.7\.0 \[TS01\]", "throttle", 60),
    _r("microsoft-4.7.650", "outlook", r"\b4\.7\.650\b", "suspend", 60),
    _r("microsoft-blocklist", "outlook", r"\b5\.7\.(6[0-9][0-9]|7[0-4][0-9]|750)\b",
       "suspend", 240),
    _r("microsoft-s3140", "outlook", r"\(S3140\)|\bS3140\b", "suspend", 240),
    _r("microsoft-s3150", "outlook", r"\(S3150\)|\bS3150\b", "suspend", 240),
    _r("office365-4.7.650", "office365", r"\b4\.7\.650\b", "suspend", 60),
    _r("office365-blocklist", "office365", r"\b5\.7\.(6[0-9][0-9]|7[0-4][0-9]|750)\b",
       "suspend", 240),
    _r("too-many-connections", None,
       r"too many (concurrent |simultaneous )?(connections|sessions)", "reduce_connections", 0),
)  # fmt: skip


class RuleBook:
    """Every rule in force, by provider: configured ones first, then the built-in set."""

    def __init__(self, configured: Iterable[ProviderConfig] = ()) -> None:
        self._own: dict[str, list[ResponseRule]] = {}
        for p in configured:
            for i, rc in enumerate(p.rules):
                name = rc.name or f"{p.name}-{i + 1}"
                rule = ResponseRule(name, p.name, re.compile(rc.match), rc.action, rc.duration)
                self._own.setdefault(p.name, []).append(rule)
        self._builtin: dict[str | None, list[ResponseRule]] = {}
        for rule in BUILTIN_RULES:
            self._builtin.setdefault(rule.provider, []).append(rule)

    def rules_for(self, provider: str) -> Sequence[ResponseRule]:
        return [
            *self._own.get(provider, ()),
            *self._builtin.get(provider, ()),
            *self._builtin.get(None, ()),
        ]

    def match(self, provider: str, reply: Reply) -> ResponseRule | None:
        """The first rule for ``provider`` that matches ``reply``; None: no rule applies."""
        if reply.is_positive:
            return None
        line = reply_line(reply)
        for rule in self.rules_for(provider):
            if rule.matches(line):
                return rule
        return None

    def __repr__(self) -> str:
        own = sum(len(v) for v in self._own.values())
        return f"RuleBook({own} configured, {len(BUILTIN_RULES)} built-in)"
