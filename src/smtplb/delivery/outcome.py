"""What an SMTP reply means for a recipient, and when to try again. Pure."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from smtplb.model import Reply


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


def outcome_of(reply: Reply) -> Outcome:
    if reply.is_positive:
        return Outcome.DELIVERED
    return Outcome.DEFERRED if reply.is_transient else Outcome.BOUNCED


def transaction_outcomes(mail: Reply, rcpts: list[Reply], data: Reply | None) -> list[Reply]:
    """The reply that decides each recipient's fate, in recipient order."""
    if not mail.is_positive:
        return [mail] * len(rcpts)
    decided: list[Reply] = []
    for rcpt in rcpts:
        if not rcpt.is_positive or data is None:
            decided.append(rcpt if not rcpt.is_positive else Reply(451, "4.3.0", "no data reply"))
        else:
            decided.append(data)
    return decided


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Exponential backoff with jitter: base × 2^(n-1), capped, ± jitter."""

    base: float = 60.0
    maximum: float = 3600.0
    jitter: float = 0.2

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
        exponent = max(0, attempts - 1)
        raw = self.maximum if exponent >= 63 else min(self.maximum, self.base * 2**exponent)
        if self.jitter:
            r = (rng or random).uniform(-self.jitter, self.jitter)
            raw *= 1 + r
        return max(0.0, raw)
