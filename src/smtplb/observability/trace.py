"""Per-message traces for ``smtplb queue show``: why a message went where it went.

Intake notes the route each recipient matched; the dispatcher notes every
decision: the member chosen, and why each other member of the pool was
skipped (paused, down, ejected, busy, failed this attempt). The book keeps
the most recent ``capacity`` messages in memory; older traces (and traces
from before a restart) are gone, the spool and delivery log remain.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any


class TraceBook:
    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._book: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    def add(self, queue_id: str, step: str, **details: Any) -> None:
        entries = self._book.get(queue_id)
        if entries is None:
            entries = self._book[queue_id] = []
            if len(self._book) > self.capacity:
                self._book.popitem(last=False)
        if len(entries) < 100:  # a message retried for days must not grow without bound
            entries.append({"ts": round(time.time(), 3), "step": step, **details})

    def get(self, queue_id: str) -> list[dict[str, Any]]:
        return list(self._book.get(queue_id, ()))

    def __len__(self) -> int:
        return len(self._book)

    def __repr__(self) -> str:
        return f"TraceBook({len(self._book)} messages, capacity {self.capacity})"
