"""Leases of shared capacity: how much a worker asks Redis for, how much it may use
alone while Redis is away. Pure arithmetic, no I/O.

Theory of operation. A cap (warm-up: N messages a day) or a rate (N a minute) is
counted in Redis, and every worker process of every node takes from it. Asking
Redis for each message would cost a round trip per message, so a worker takes a
*lease*: a small block of capacity, counted as used in Redis at once, that it then
spends locally without asking. What it has not spent after a short idle time it
gives back. The cap holds exactly (a lease is taken with an atomic check-and-take),
and the Redis cost is one round trip per block.

The block is small while much remains and shrinks as the cap fills
(:func:`lease_request`: at most ``remaining / (2 × participants)``), so the last
messages under a cap are not stranded in one worker's lease while another worker
waits. When Redis cannot be reached a worker falls back to a conservative local
share (:func:`fallback_share`): what remained at its last look, less what the other
participants may still hold in leases, divided by the number of participants.
"""

from __future__ import annotations

import math

BLOCK = 8  # the most a warm-up lease takes at once
RATE_HORIZON = 0.25  # a rate lease covers this many seconds of the rate


def lease_request(remaining: int, participants: int, block: int = BLOCK) -> int:
    """How many messages to ask for: ``min(block, remaining / (2 × participants))``,
    at least one while anything remains; 0 when nothing does."""
    if remaining <= 0:
        return 0
    return max(1, min(block, remaining // (2 * max(1, participants))))


def fallback_share(remaining: int, participants: int, block: int = BLOCK) -> int:
    """What one participant may take alone while Redis is away: the ``remaining``
    capacity it last saw, less a full lease for each of the others (they may hold
    one), split evenly. Never more than the cluster could still have had."""
    if remaining <= 0:
        return 0
    others = max(0, participants - 1)
    return max(0, remaining - others * block) // max(1, participants)


def rate_lease(rate: float, burst: float) -> int:
    """Tokens of a rate (per second) taken at once: a quarter second's worth, at least
    one, never more than the bucket's burst."""
    return max(1, min(int(burst), math.floor(rate * RATE_HORIZON)))


def fallback_rate(rate: float, participants: int) -> float:
    """A participant's share of a shared rate while Redis is away."""
    return rate / max(1, participants)


def wants_refill(held: int, last_lease: int) -> bool:
    """Ask for the next lease when half of the last one is spent (it arrives before
    the rest runs out, at the rates a worker sends)."""
    return held * 2 <= last_lease


def reconcile(local_total: int, counted: int) -> int:
    """What a participant adds to a shared count on Redis's return: its own use of
    the period (``local_total``) that Redis does not hold for it (``counted``: lost
    in a restart without persistence, or used while away). Never negative: giving
    back is done elsewhere, explicitly."""
    return max(0, local_total - counted)
