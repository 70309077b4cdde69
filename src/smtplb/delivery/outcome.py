"""What an SMTP reply means for a recipient, and when to try again. Pure.

A recipient's fate after an attempt is :func:`next_state` of the reply that
decides it (:func:`transaction_outcomes`). A delivery that got no reply at
all (the connection failed: refused, timeout, TLS, dropped) is not a
recipient's fate: the job fails over to another member at once, no attempt
counted (the dispatcher's ``_failover``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from smtplb.model import RecipientState
from smtplb.smtp.reply import Reply


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


def next_state(
    reply: Reply,
    attempt: int,
    now: float,
    expires_at: float,
    schedule: RetrySchedule,
    rng: random.Random,
) -> tuple[RecipientState, float]:
    """A recipient's state after ``reply`` to its ``attempt``-th attempt (1-based) at
    wall time ``now``, and when to try again (0 for a final state).

    2xx/3xx delivered; 5xx bounced; 4xx deferred by the retry schedule, or expired
    when the next try would come at or after ``expires_at``."""
    if reply.is_positive:
        return RecipientState.DELIVERED, 0.0
    if reply.is_permanent:
        return RecipientState.BOUNCED, 0.0
    next_attempt = now + schedule.delay(attempt, rng)
    if next_attempt >= expires_at:
        return RecipientState.EXPIRED, 0.0
    return RecipientState.DEFERRED, next_attempt
