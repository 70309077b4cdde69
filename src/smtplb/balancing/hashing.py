"""Consistent hashing with bounded load (Mirrokni, Thorup, Zadimoghaddam 2018).

Every member owns ``VNODES × weight`` points on a 64-bit ring. A key goes to
the first member clockwise from its hash that is available and not
overloaded; overloaded means its load is at or above
``ceil(factor × (total load + 1) / members)``. So a key keeps its member while
that member is healthy and carries no more than ``factor`` times the average,
and when one of N members leaves only the keys it owned (≈ 1/N) move.

``spill_only_when_full`` (the dispatcher's setting) bounds only members whose
connection slots are all busy: at low load the bound is ±1 message and
would scatter keys for nothing, while a member that still has free slots is
by definition not holding anyone up.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence

from smtplb.balancing.base import C, PickRequest, Strategy

VNODES = 160


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class BoundedHash(Strategy):
    name = "hash"

    def __init__(
        self,
        members: Sequence[str],
        *,
        key: str = "recipient_domain",
        factor: float = 1.25,
        weights: dict[str, int] | None = None,
        spill_only_when_full: bool = True,
    ) -> None:
        super().__init__(members)
        self.key = key
        self.factor = factor
        self.spill_only_when_full = spill_only_when_full
        points: list[tuple[int, str]] = []
        for name in self.members:
            for i in range((weights or {}).get(name, 1) * VNODES):
                points.append((hash64(f"{name}#{i}"), name))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [n for _, n in points]

    def key_of(self, request: PickRequest) -> str:
        value: str = getattr(request, self.key)
        return value.lower()

    def walk(self, key: str) -> list[str]:
        """Distinct members in ring order starting at ``key``'s point."""
        if not self._hashes:
            return []
        start = bisect.bisect(self._hashes, hash64(key)) % len(self._hashes)
        seen: list[str] = []
        n = len(self._owners)
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == len(self.members):
                    break
        return seen

    def pick(self, candidates: Sequence[C], request: PickRequest) -> C | None:
        if not candidates:
            return None
        by_name = {c.name: c for c in candidates}
        total = sum(c.load for c in candidates)
        bound = math.ceil(self.factor * (total + 1) / len(candidates))
        fallback: C | None = None
        for name in self.walk(self.key_of(request)):
            c = by_name.get(name)
            if c is None:
                continue
            if fallback is None:
                fallback = c
            overloaded = c.load >= bound and (c.full or not self.spill_only_when_full)
            if not overloaded:
                return c
        return fallback  # everyone is over the bound: stay with the key's own member
