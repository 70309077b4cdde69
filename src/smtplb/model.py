"""The few value types every layer shares: SMTP replies and envelopes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: ``code``, optional RFC 3463 ``enhanced`` code, ``text``.

    ``text`` may hold several lines separated by ``\\n``; they become a
    multi-line reply on the wire.
    """

    code: int
    enhanced: str | None = None
    text: str = ""

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def to_bytes(self) -> bytes:
        lines = self.text.split("\n") if self.text else [""]
        prefix = f"{self.enhanced} " if self.enhanced else ""
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{self.code}{sep}{prefix}{line}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8", "replace")

    def __str__(self) -> str:
        prefix = f"{self.enhanced} " if self.enhanced else ""
        return f"{self.code} {prefix}{self.text}".strip()


class BounceKind(enum.Enum):
    """RFC 3463-based classes (SPEC §2.4): only ``hard`` suppresses the recipient."""

    HARD = "hard"  # unknown user/domain, moved: the address is bad
    POLICY = "policy"  # 5.7.x: blocked, counts against the member, not the recipient
    SOFT = "soft"  # mailbox full, too big, other permanent but not address-level
    TRANSIENT = "transient"  # 4xx


_HARD_SUBJECTS = {"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1", "5.4.1"}
_HARD_TEXT = ("user unknown", "no such user", "does not exist", "unknown user", "no mailbox")


def classify_reply(reply: Reply) -> BounceKind | None:
    """The bounce class of a negative reply; None for a positive one."""
    if reply.is_positive:
        return None
    if reply.is_transient:
        return BounceKind.TRANSIENT
    enhanced = reply.enhanced or ""
    if enhanced.startswith("5.7"):
        return BounceKind.POLICY
    if enhanced in _HARD_SUBJECTS:
        return BounceKind.HARD
    text = reply.text.lower()
    if not enhanced and reply.code == 550 and any(t in text for t in _HARD_TEXT):
        return BounceKind.HARD
    return BounceKind.SOFT


@dataclass(slots=True)
class Envelope:
    """The SMTP envelope of one message as received.

    ``mail_from`` is ``""`` for the null sender (``MAIL FROM:<>``).
    """

    mail_from: str = ""
    rcpt_to: list[str] = field(default_factory=list)
    helo: str = ""
    client_ip: str = ""
    auth_user: str | None = None
    tls: bool = False
    smtputf8: bool = False
    body_8bit: bool = False
    size_hint: int | None = None


class RecipientState(enum.IntEnum):
    """Delivery state of one recipient in the spool (SPEC §1)."""

    QUEUED = 0
    INFLIGHT = 1
    DEFERRED = 2
    DELIVERED = 3
    BOUNCED = 4
    EXPIRED = 5
    SUPPRESSED = 6

    @property
    def is_final(self) -> bool:
        return self >= RecipientState.DELIVERED

    @property
    def label(self) -> str:
        return "in_flight" if self is RecipientState.INFLIGHT else self.name.lower()


def domain_of(address: str) -> str:
    """The lower-cased domain of ``local@domain`` ('' for the null sender)."""
    return address.rpartition("@")[2].lower()
