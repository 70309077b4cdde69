"""Ordered failover: the first available member in pool order takes everything.

Backups take traffic only while every member before them is unavailable
(unhealthy, ejected, paused). A busy primary makes jobs wait, not spill.
"""

from __future__ import annotations

from collections.abc import Sequence

from smtplb.balancing.base import C, PickRequest, Strategy


class Failover(Strategy):
    name = "failover"

    def pick(self, candidates: Sequence[C], request: PickRequest) -> C | None:
        if not candidates:
            return None
        order = {name: i for i, name in enumerate(self.members)}
        return min(candidates, key=lambda c: order.get(c.name, len(order)))
