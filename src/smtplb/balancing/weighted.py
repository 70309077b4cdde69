"""Smooth weighted round robin (nginx), and plain round robin on top of it.

Each pick adds every candidate's weight to its running score, takes the
highest score and subtracts the total from it. Over any window the picks
follow the weights closely and never bunch (weights 5:1:1 give a a b a c a a,
not a a a a a b c). Round robin is the same with every weight equal to the
member's slow-start ramp, so it rotates exactly when all are fully up.
"""

from __future__ import annotations

from collections.abc import Sequence

from smtplb.balancing.base import C, PickRequest, Strategy, not_full


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

    def weight_of(self, candidate: C) -> float:
        return max(candidate.ramp, 0.0)
