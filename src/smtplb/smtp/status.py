"""What a negative reply means for the recipient: RFC 3463 bounce kinds. Pure."""

from __future__ import annotations

import enum

from smtplb.smtp.bounce import classify_bounce
from smtplb.smtp.reply import Reply

__all__ = ["BounceKind", "classify_reply"]


class BounceKind(enum.Enum):
    """RFC 3463-based classes (SPEC §2.4): only ``hard`` suppresses the recipient."""

    HARD = "hard"  # unknown user/domain, moved: the address is bad
    POLICY = "policy"  # 5.7.x: blocked, counts against the member, not the recipient
    SOFT = "soft"  # mailbox full, too big, other permanent but not address-level
    TRANSIENT = "transient"  # 4xx


def classify_reply(reply: Reply) -> BounceKind | None:
    """The bounce class of a negative reply; None for a positive one. The coarse
    reading of :func:`smtplb.smtp.bounce.classify_bounce` (provider texts, then
    RFC 3463 codes), for counting."""
    if reply.is_positive:
        return None
    if reply.is_transient:
        return BounceKind.TRANSIENT
    found = classify_bounce(reply.code, reply.enhanced_code, reply.text)
    if found.is_policy:
        return BounceKind.POLICY
    return BounceKind.HARD if found.is_hard else BounceKind.SOFT
