"""Least connections, weight-aware: the lowest (load + 1) / weight wins.

Ties go round the pool in turn, so equal members share evenly at low load.
"""

from __future__ import annotations

from collections.abc import Sequence

from smtplb.balancing.base import C, PickRequest, Strategy, not_full


class LeastConnections(Strategy):
    name = "least_connections"

    def __init__(self, members: Sequence[str]) -> None:
        super().__init__(members)
        self._position = {name: i for i, name in enumerate(self.members)}
        self._last = -1

    def pick(self, candidates: Sequence[C], request: PickRequest) -> C | None:
        ready = not_full(candidates)
        if not ready:
            return None
        n = max(len(self.members), 1)

        def key(c: C) -> tuple[float, int]:
            cost = (c.load + 1) / max(c.weight, 1e-9)
            turn = (self._position.get(c.name, n) - self._last - 1) % n
            return (cost, turn)

        best = min(ready, key=key)
        self._last = self._position.get(best.name, self._last)
        return best
