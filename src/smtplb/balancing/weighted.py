"""Smooth weighted round robin (nginx), and plain round robin on top of it.

Each pick adds every candidate's weight to its running score, takes the
highest score and subtracts the total from it. Over any window the picks
follow the weights closely and never bunch (weights 5:1:1 give a a b a c a a,
not a a a a a b c). Round robin is the same with every weight equal to the
member's slow-start ramp, so it rotates exactly when all are fully up.

In a large pool round robin also keeps a ``cursor`` (the pool order's index of the
next member): :meth:`smtplb.delivery.pools.PoolRuntime.choose` then looks at the
members from the cursor on and takes the first that can start the job and whose
turn it is (:meth:`RoundRobin.takes_turn`), instead of filtering and scoring every
member for every pick: the same rotation while all are fully up.
"""

from __future__ import annotations

from collections.abc import Sequence

from smtplb.balancing.base import C, Candidate, PickRequest, Strategy, not_full


class SmoothWeighted(Strategy):
    name = "weighted"

    def __init__(self, members: Sequence[str]) -> None:
        super().__init__(members)
        self._score: dict[str, float] = {}
        self._order = {name: i for i, name in enumerate(self.members)}

    def weight_of(self, candidate: C) -> float:
        return max(candidate.weight, 0.0)

    def pick(self, candidates: Sequence[C], request: PickRequest) -> C | None:
        ready = not_full(candidates)
        if not ready:
            return None
        total = 0.0
        best: C | None = None
        best_score = 0.0
        for c in sorted(ready, key=lambda c: self._order.get(c.name, len(self._order))):
            w = self.weight_of(c)
            score = self._score.get(c.name, 0.0) + w
            self._score[c.name] = score
            total += w
            if best is None or score > best_score:
                best, best_score = c, score
        assert best is not None
        self._score[best.name] = best_score - total
        return best


class RoundRobin(SmoothWeighted):
    name = "round_robin"
    rotates = True

    def __init__(self, members: Sequence[str]) -> None:
        super().__init__(members)
        self.cursor = 0  # index in the pool order of the member whose turn is next
        self._credit: dict[str, float] = {}

    def takes_turn(self, candidate: Candidate) -> bool:
        """Rotation: a member fully up takes its turn; one at ramp r (slow start,
        or throttled by reputation) takes r of its turns, the rest carried over."""
        ramp = candidate.ramp
        if ramp >= 1.0:
            return True
        credit = self._credit.get(candidate.name, 0.0) + max(ramp, 0.0)
        taken = credit >= 1.0
        self._credit[candidate.name] = credit - 1.0 if taken else credit
        return taken

    def weight_of(self, candidate: C) -> float:
        return max(candidate.ramp, 0.0)
