"""What a negative reply means for the recipient: RFC 3463 bounce kinds. Pure."""

from __future__ import annotations

import enum
from typing import Final

from smtplb.smtp.reply import Reply

__all__ = ["BounceKind", "classify_reply"]


class BounceKind(enum.Enum):
    """RFC 3463-based classes (SPEC §2.4): only ``hard`` suppresses the recipient."""

    HARD = "hard"  # unknown user/domain, moved: the address is bad
    POLICY = "policy"  # 5.7.x: blocked, counts against the member, not the recipient
    SOFT = "soft"  # mailbox full, too big, other permanent but not address-level
    TRANSIENT = "transient"  # 4xx


_HARD_SUBJECTS: Final = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1", "5.4.1"})
_HARD_TEXT: Final = ("user unknown", "no such user", "does not exist", "unknown user", "no mailbox")


def classify_reply(reply: Reply) -> BounceKind | None:
    """The bounce class of a negative reply; None for a positive one."""
    if reply.is_positive:
        return None
    if reply.is_transient:
        return BounceKind.TRANSIENT
    enhanced_code = reply.enhanced_code or ""
    if enhanced_code.startswith("5.7"):
        return BounceKind.POLICY
    if enhanced_code in _HARD_SUBJECTS:
        return BounceKind.HARD
    text = reply.text.lower()
    if not enhanced_code and reply.code == 550 and any(t in text for t in _HARD_TEXT):
        return BounceKind.HARD
    return BounceKind.SOFT
