"""Round robin over the pool's configured order, skipping ineligible members."""

from __future__ import annotations

from collections.abc import Sequence

from smtplb.balancing.base import C, PickRequest, Strategy


class RoundRobin(Strategy):
    name = "round_robin"

    def __init__(self, members: Sequence[str]) -> None:
        super().__init__(members)
        self._position = {name: i for i, name in enumerate(self.members)}
        self._last = -1

    def pick(self, eligible: Sequence[C], request: PickRequest) -> C | None:
        if not eligible:
            return None
        n = len(self.members)
        # The eligible member that comes first after the last one picked, in pool order.
        best = min(eligible, key=lambda c: (self._position.get(c.name, n) - self._last - 1) % n)
        self._last = self._position.get(best.name, self._last)
        return best
