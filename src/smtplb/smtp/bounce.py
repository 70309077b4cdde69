"""What a negative SMTP reply means: a bounce category close to sisimai's reason
set, and what delivery does about it. Pure.

Theory of operation. A reply is read the way sisimai and the large ESPs read it:
the provider's own wording first (a block text says "blocked" even under a 5.1.x
code, a "user unknown" text says so under a bare 550), then the RFC 3463 enhanced
code, then the basic code. Each category belongs to one :class:`Action`:

- ``suppress``: the address is bad (user unknown, host unknown, moved, disabled);
  a permanent reply bounces the recipient and adds it to the suppression list.
- ``elsewhere``: the sending IP or domain is refused (blocked, spam, policy,
  authentication); it counts against the member × provider, never the recipient,
  which is tried at once on another eligible member.
- ``defer``: mailbox full, rate limits, temporary trouble; try again later.
- ``bounce``: a permanent refusal of this message (too big, bad content, no mail
  accepted) that says nothing about the address nor the member.

Temporary replies never suppress: a 4xx "user unknown" defers.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["Action", "BounceCategory", "Classification", "classify_bounce"]


class BounceCategory(enum.Enum):
    USER_UNKNOWN = "userunknown"
    HOST_UNKNOWN = "hostunknown"
    HAS_MOVED = "hasmoved"
    SUSPEND = "suspend"  # mailbox disabled or inactive
    MAILBOX_FULL = "mailboxfull"
    BLOCKED = "blocked"  # the sending IP or host is refused (RBL, reputation, PTR)
    SPAM_DETECTED = "spamdetected"
    POLICY_VIOLATION = "policyviolation"
    SECURITY_ERROR = "securityerror"  # SPF, DKIM, DMARC, TLS, authentication
    REJECTED = "rejected"  # the envelope sender is refused
    RATE_LIMITED = "ratelimited"
    MESSAGE_TOO_BIG = "mesgtoobig"
    CONTENT_ERROR = "contenterror"
    NOT_ACCEPT = "notaccept"  # the domain accepts no mail (null MX)
    NO_RELAYING = "norelaying"  # the host is not a mail exchanger for the domain
    SYNTAX_ERROR = "syntaxerror"  # an SMTP protocol error
    SYSTEM_ERROR = "systemerror"
    EXPIRED = "expired"
    UNDEFINED = "undefined"


class Action(enum.Enum):
    SUPPRESS = "suppress"
    ELSEWHERE = "elsewhere"
    DEFER = "defer"
    BOUNCE = "bounce"


_C = BounceCategory
_HARD: Final = frozenset({_C.USER_UNKNOWN, _C.HOST_UNKNOWN, _C.HAS_MOVED, _C.SUSPEND})
_POLICY: Final = frozenset(
    {_C.BLOCKED, _C.SPAM_DETECTED, _C.POLICY_VIOLATION, _C.SECURITY_ERROR, _C.REJECTED}
)
_DEFER: Final = frozenset({_C.MAILBOX_FULL, _C.RATE_LIMITED})


@dataclass(frozen=True, slots=True)
class Classification:
    category: BounceCategory
    permanent: bool

    @property
    def is_hard(self) -> bool:
        """A permanent reply that says the address is bad: suppress it."""
        return self.permanent and self.category in _HARD

    @property
    def is_policy(self) -> bool:
        """A refusal of the sender (IP, domain, content as spam): counts against the member."""
        return self.category in _POLICY

    @property
    def action(self) -> Action:
        if self.is_policy:
            return Action.ELSEWHERE
        if not self.permanent or self.category in _DEFER:
            return Action.DEFER
        return Action.SUPPRESS if self.category in _HARD else Action.BOUNCE


# Provider and MTA wordings, most specific first. Each pattern is searched in
# "enhanced-code text", lower-cased; the first match decides. The order carries
# the meaning: a sender refusal or a rate limit is read before the words
# "user", "quota" or "blocked" that it may contain.
_TEXT_RULES: Final[tuple[tuple[BounceCategory, re.Pattern[str]], ...]] = tuple(
    (category, re.compile(pattern))
    for category, pattern in (
        (
            _C.NO_RELAYING,
            r"relay(ing)? (access )?(denied|not (allowed|permitted))|we do not relay|"
            r"isn't in my list of allowed rcpthosts",
        ),
        (
            _C.REJECTED,
            r"sender (address )?(rejected|refused|denied|blocked|invalid|not (allowed|"
            r"accepted))|sender verify failed|domain of sender|sending denied|"
            r"mail from (rejected|refused)|bad sender|envelope sender",
        ),
        (_C.SYSTEM_ERROR, r"gr[ae]y-?list"),
        (_C.USER_UNKNOWN, r"recipient address rejected: access denied"),
        (
            _C.RATE_LIMITED,
            r"4\.7\.28|rate.limit|\btss0[14]\b|\bts01\b|deferred due to|receiving mail "
            r"(too quickly|at a rate)|too many (connections|messages|recipients)|"
            r"per transaction exceeded|sending (quota|limit)|email quota|relay limit|throttl|"
            r"\b4\.7\.[56]\d\d\b|excessive volume|too much mail|trop de connexions|"
            r"slow down",
        ),
        (
            _C.MAILBOX_FULL,
            r"over (the allowed )?quota|quota exceeded|mailbox (is )?full|mailbox full|"
            r"insufficient storage|exceeded (its|the) storage|out of storage|disk quota|"
            r"mail ?box has exceeded|would exceed .*quota|full mailbox|mailbox size limit|"
            r"quotaexceeded",
        ),
        (
            _C.MESSAGE_TOO_BIG,
            r"message (size|is too (big|large|long))|too (big|large) for|exceeds (the )?"
            r"(maximum|size|message size)|size limit|message length exceeds|max(imum)? "
            r"(message )?size",
        ),
        (
            _C.SECURITY_ERROR,
            r"dmarc|\bspf\b|sender policy framework|dkim|authenticat|\bauth\b|tls (is )?"
            r"required|starttls command first|credentials|password|identity|send as "
            r"this sender|encryption required|log in with|spoof|(does not|doesn'?t) meet .*auth",
        ),
        (
            _C.BLOCKED,
            r"blocked using|listed (at|in|on|by)|black ?list|block ?list|denylist|"
            r"spamhaus|spamcop|barracuda|\bsorbs\b|\brbl\b|dnsbl|poor reputation|"
            r"reputation|banned|\[bl\d+\]|#bl\d+|\(bl\)|from your ip|sender ip|"
            r"ip you're using|send mail directly|your access to|tss09|\bts03\b|"
            r"permanently deferred|\bptr\b|reverse (dns|hostname)|rdns|cannot find "
            r"your hostname|client host rejected|\bblock (for|due)|traffic not accepted|"
            r"client blocked|mail from [\d.]+ refused|not in whitelist",
        ),
        (
            _C.SPAM_DETECTED,
            r"spam|junk|unsolicited|bulk mail|content (rejected|filter)|phish|malware|"
            r"virus|suspicious|scam|attachment|potential security issue",
        ),
        (
            _C.HAS_MOVED,
            r"has moved|moved (permanently|to)|address (has )?changed|user not local|"
            r"no longer (at|with)",
        ),
        (
            _C.SUSPEND,
            r"disabled|deactivated|inactive|suspended|account (is )?(locked|expired|"
            r"frozen|closed)|mailbox (is )?(locked|not active)|has been (closed|"
            r"terminated|cancell?ed)|not (yet )?activ",
        ),
        (
            _C.HOST_UNKNOWN,
            r"host (or domain name )?not found|(unknown|unrouteable|unroutable|invalid"
            r"|nonexistent|non-existent) (host|domain|address domain|mail domain)|"
            r"domain (does not exist|not found|name not found|is not (served|hosted))|"
            r"no (such|mx|valid mx|mail exchanger) (domain|record|host|for)|"
            r"name or service not known|nxdomain|host unknown|unable to resolve|"
            r"find the recipient domain|(couldn't|could not) find any host|has no mx|"
            r"non-existent hosts|bad destination system",
        ),
        (
            _C.NOT_ACCEPT,
            r"does not accept (e-?)?mail|accepts no mail|null ?mx|no mail (is )?accepted",
        ),
        (
            _C.USER_UNKNOWN,
            r"user unknown|unknown user|no such (user|mailbox|recipient|address|account)"
            r"|(user|mailbox|recipient|address|account|e-?mail account)[^.]{0,40}"
            r"(does ?n[o']t exist|not exist|not found|unknown|invalid|not valid|"
            r"unavailable|rejected)|invalid (recipient|mailbox|address|user)|"
            r"(recipient|mailbox|address|user) (is )?not (known|found|listed|local|valid)"
            r"|unknown (recipient|mailbox|address|local[- ]part)|not a valid (mailbox|"
            r"recipient)|no mailbox|dd this user|doesn'?t have a .* account|"
            r"unrouteable address|undeliverable address|bad destination mailbox|"
            r"mailbox unavailable|mailbox not (available|found)|recip(ient)?notfound|"
            r"not our customer|mailbox name not allowed|no account by that name|"
            r"destinataire invalide",
        ),
        (_C.BLOCKED, r"block|refused by|access denied|not permitted|ip address .*rejected"),
        (
            _C.POLICY_VIOLATION,
            r"policy|not allowed|prohibited|administrative|not authori[sz]ed|"
            r"message rejected|refused to accept|restricted|unacceptable",
        ),
        (
            _C.SYNTAX_ERROR,
            r"syntax|protocol violation|unrecognized command|unimplemented|"
            r"(ehlo|helo|mail|rcpt) first|argument is invalid|cannot decode|bare <?(lf|cr)"
            r"|may not be repeated|command not (recogni[sz]ed|implemented)",
        ),
        (
            _C.RATE_LIMITED,
            r"too many|rate of|exceeded the (maximum|message rate)|message limit|"
            r"connection limit|excessive|limit exceeded|exceeded .*limit",
        ),
        (
            _C.CONTENT_ERROR,
            r"header|mime|8-?bit|line (too long|length)|malformed|corrupt|improper",
        ),
        (
            _C.SYSTEM_ERROR,
            r"temporar|try (again )?later|system (problem|error|full)|local (error|"
            r"problem)|server (busy|error)|timeout|timed out|resources|internal|"
            r"insufficient system|unavailable|closing connection|please retry|deferred|"
            r"lookup fail|configuration problem|cannot connect|dns query|hop count|mail loop",
        ),
        (_C.EXPIRED, r"expired"),
    )
)

# RFC 3463 subject.detail when the text said nothing decisive.
_BY_CODE: Final[dict[str, BounceCategory]] = {
    "1.0": _C.USER_UNKNOWN,
    "1.1": _C.USER_UNKNOWN,
    "1.2": _C.HOST_UNKNOWN,
    "1.3": _C.USER_UNKNOWN,
    "1.4": _C.USER_UNKNOWN,
    "1.6": _C.HAS_MOVED,
    "1.7": _C.REJECTED,
    "1.8": _C.REJECTED,
    "1.10": _C.NOT_ACCEPT,
    "2.0": _C.SUSPEND,
    "2.1": _C.SUSPEND,
    "2.2": _C.MAILBOX_FULL,
    "2.3": _C.MESSAGE_TOO_BIG,
    "2.4": _C.SYSTEM_ERROR,
    "3.0": _C.SYSTEM_ERROR,
    "3.1": _C.SYSTEM_ERROR,
    "3.2": _C.SYSTEM_ERROR,
    "3.4": _C.MESSAGE_TOO_BIG,
    "3.5": _C.SYSTEM_ERROR,
    "4.0": _C.SYSTEM_ERROR,
    "4.1": _C.SYSTEM_ERROR,
    "4.2": _C.SYSTEM_ERROR,
    "4.3": _C.SYSTEM_ERROR,
    "4.4": _C.HOST_UNKNOWN,
    "4.6": _C.SYSTEM_ERROR,
    "4.7": _C.EXPIRED,
    "5.0": _C.SYNTAX_ERROR,
    "5.1": _C.SYNTAX_ERROR,
    "5.2": _C.SYNTAX_ERROR,
    "5.3": _C.RATE_LIMITED,
    "5.4": _C.SYNTAX_ERROR,
    "5.5": _C.SYNTAX_ERROR,
    "6.0": _C.CONTENT_ERROR,
    "6.1": _C.CONTENT_ERROR,
    "6.3": _C.CONTENT_ERROR,
    "6.6": _C.CONTENT_ERROR,
    "7.0": _C.POLICY_VIOLATION,
    "7.1": _C.POLICY_VIOLATION,
    "7.7": _C.SECURITY_ERROR,
    "7.8": _C.SECURITY_ERROR,
    "7.9": _C.SECURITY_ERROR,
    "7.11": _C.SECURITY_ERROR,
    "7.20": _C.SECURITY_ERROR,
    "7.23": _C.SECURITY_ERROR,
    "7.24": _C.SECURITY_ERROR,
    "7.25": _C.BLOCKED,
    "7.26": _C.SECURITY_ERROR,
    "7.27": _C.NOT_ACCEPT,
}

_ENHANCED_IN_TEXT: Final = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def classify_bounce(
    code: int, enhanced: str | None, text: str, provider: str | None = None
) -> Classification:
    """The category of a negative reply (``code`` ≥ 400).

    ``provider`` (e.g. "gmail") is accepted so provider-specific readings can be
    added without changing callers; the built-in rules read the text alone."""
    del provider  # every rule below holds for all providers so far
    permanent = code >= 500
    lowered = text.lower()
    if enhanced is None:
        found = _ENHANCED_IN_TEXT.search(lowered)
        enhanced = found.group(0) if found else None
    else:
        lowered = f"{enhanced} {lowered}"
    for category, pattern in _TEXT_RULES:
        if pattern.search(lowered):
            return Classification(category, permanent)
    if enhanced:
        _, _, subject = enhanced.partition(".")
        by_code = _BY_CODE.get(subject) or _BY_CODE.get(subject.split(".")[0] + ".0")
        return Classification(by_code or _C.UNDEFINED, permanent)
    if code in (550, 551, 553):
        return Classification(_C.USER_UNKNOWN if code != 551 else _C.HAS_MOVED, permanent)
    if code == 552:
        return Classification(_C.MAILBOX_FULL, permanent)
    if code == 554:
        return Classification(_C.POLICY_VIOLATION, permanent)
    return Classification(_C.SYSTEM_ERROR if code < 500 else _C.UNDEFINED, permanent)
