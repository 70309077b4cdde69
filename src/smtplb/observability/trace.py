"""Per-message traces for ``smtplb queue show``: why a message went where it went.

Intake notes the route each recipient matched; the dispatcher notes every
decision: the member chosen, and why each other member of the pool was
skipped, in the words of the eligibility filter that skipped it
(:mod:`smtplb.balancing.eligibility`: paused, down, ejected, busy, failed this
attempt…), or "not chosen by" the strategy when it could have taken the job (round
robin over more than 16 members names only the members it passed over in rotation
before the chosen one: see ``PoolRuntime.choose``). Steps are kept as
tuples and turned into words only when someone asks (this runs for every
message). The book keeps the most recent ``capacity`` messages in memory and
hands every step to ``persist`` (the spool's ``note_trace``), which writes it
with its next commit; ``get`` adds the stored steps, so traces survive a
restart and the eviction from memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

LANES = ("high", "normal", "low")
# (field names of a step's details, by step): steps are stored as bare tuples.
_FIELDS: dict[str, tuple[str, ...]] = {
    "routed": ("recipient", "route", "pool", "lane", "content_class"),
    "dispatch": ("recipients", "pool", "lane", "member", "strategy", "skipped"),
    "attempt": ("member", "upstream", "outcomes"),
    "failover": ("member", "reason"),
    "deferred": ("pool", "reason"),
    "provider": ("provider", "recognised_by"),
}


Step = tuple[float, str, tuple[Any, ...]]


class TraceBook:
    def __init__(
        self,
        capacity: int = 20_000,
        persist: Callable[[str, float, str, tuple[Any, ...]], None] | None = None,
    ) -> None:
        self.capacity = capacity
        self.persist = persist
        self._book: OrderedDict[str, list[Step]] = OrderedDict()

    def add(self, queue_id: str, step: str, *details: Any) -> None:
        """Record a step; ``details`` in the order of ``_FIELDS[step]``."""
        entries = self._book.get(queue_id)
        if entries is None:
            entries = self._book[queue_id] = []
            if len(self._book) > self.capacity:
                self._book.popitem(last=False)
        if len(entries) < 100:  # a message retried for days must not grow without bound
            ts = time.time()
            entries.append((ts, step, details))
            if self.persist is not None:
                if step == "attempt":  # replies stored as their text: what get() shows
                    member, upstream, outcomes = details
                    details = (member, upstream, tuple((a, str(r)) for a, r in outcomes))
                self.persist(queue_id, ts, step, details)

    def get(self, queue_id: str, stored: Iterable[Step] = ()) -> list[dict[str, Any]]:
        """The steps of ``queue_id`` in words: ``stored`` (read back from the spool)
        and those in memory not stored yet, in time order."""
        steps = list(stored)
        seen = {(ts, step) for ts, step, _ in steps}
        steps += [s for s in self._book.get(queue_id, ()) if (s[0], s[1]) not in seen]
        steps.sort(key=lambda s: s[0])
        return [_render(ts, step, details) for ts, step, details in steps]

    def __len__(self) -> int:
        return len(self._book)

    def __repr__(self) -> str:
        return f"TraceBook({len(self._book)} messages, capacity {self.capacity})"


def _render(ts: float, step: str, details: tuple[Any, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"ts": round(ts, 3), "step": step}
    out.update(zip(_FIELDS[step], details, strict=True))
    if "lane" in out:
        out["lane"] = LANES[out["lane"]]
    if step == "routed":
        index = out["route"]
        out["route"] = f"routes[{index}]" if index is not None else "no route matched: first pool"
    elif step == "dispatch":
        out["recipients"] = list(out["recipients"])
        out["skipped"] = {
            name: f"not chosen by {out['strategy']}" if why is None else why
            for name, why in out["skipped"]
        }
    elif step == "attempt":
        out["outcomes"] = {address: str(reply) for address, reply in out["outcomes"]}
    return out
