"""Power of two choices over a peak-EWMA cost (Finagle / Linkerd).

Each member's cost is ``ewma_rtt × (load + 1)``. The EWMA is "peak": a
slower sample replaces it at once, a faster one pulls it down with decay
``exp(-Δt / decay)``. A failure or an error reply counts as a slow sample
(a penalty), so a member that fails fast is not mistaken for a fast one.
Two distinct candidates are drawn at random; the cheaper one wins.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from smtplb.balancing.base import C, Candidate, PickRequest, Strategy, not_full

FAILURE_PENALTY = 5.0  # a failure counts as this many times the current EWMA…
PENALTY_FLOOR = 1.0  # …and at least this many seconds


@dataclass(slots=True)
class PeakEwma:
    decay: float
    value: float = 0.0
    stamp: float = 0.0
    seen: bool = False

    def observe(self, rtt: float, now: float) -> None:
        if not self.seen or rtt > self.value:
            self.value = rtt
        else:
            w = math.exp(-max(now - self.stamp, 0.0) / self.decay)
            self.value = self.value * w + rtt * (1 - w)
        self.seen = True
        self.stamp = now


class Latency(Strategy):
    name = "latency"

    def __init__(
        self, members: Sequence[str], *, decay: float = 10.0, rng: random.Random | None = None
    ) -> None:
        super().__init__(members)
        self.decay = decay
        self.ewma: dict[str, PeakEwma] = {m: PeakEwma(decay) for m in self.members}
        self._rng = rng or random.Random()

    def observe(self, member: str, seconds: float, ok: bool, now: float) -> None:
        ewma = self.ewma.setdefault(member, PeakEwma(self.decay))
        if not ok:
            seconds = max(seconds, ewma.value * FAILURE_PENALTY, PENALTY_FLOOR)
        ewma.observe(seconds, now)

    def cost(self, candidate: Candidate) -> float:
        ewma = self.ewma.get(candidate.name)
        rtt = ewma.value if ewma is not None and ewma.seen else self._unseen_rtt()
        return rtt * (candidate.load + 1) / max(candidate.ramp, 0.05)

    def _unseen_rtt(self) -> float:
        seen = [e.value for e in self.ewma.values() if e.seen]
        return min(seen) if seen else 0.0  # a new member is tried soon, not avoided

    def pick(self, candidates: Sequence[C], request: PickRequest) -> C | None:
        ready = not_full(candidates)
        if len(ready) <= 1:
            return ready[0] if ready else None
        a, b = self._rng.sample(ready, 2)
        return a if self.cost(a) <= self.cost(b) else b
