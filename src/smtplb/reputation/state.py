"""The one door to shared reputation state (ARCHITECTURE.md): the suppression
list now, counters next. Embedded in the spool database
(:class:`smtplb.reputation.embedded.SqliteState`); a Redis backend can follow
with the same contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec


class Suppression(msgspec.Struct, frozen=True):
    address: str
    reason: str = ""
    source: str = "operator"  # operator | bounce | complaint | import
    created_at: float = 0.0


def normalize(address: str) -> str:
    """The key an address is suppressed under: trimmed, without <>, lower-cased."""
    return address.strip().strip("<>").strip().lower()


class State(Protocol):
    def is_suppressed(self, address: str) -> bool:
        """One indexed lookup; safe on the event loop (asked at every RCPT)."""
        ...

    async def suppress(self, entries: Sequence[Suppression]) -> int:
        """Add or refresh entries; how many were new."""
        ...

    async def unsuppress(self, addresses: Sequence[str]) -> int:
        """Remove addresses; how many were there."""
        ...

    async def suppressions(
        self, *, limit: int = 100, offset: int = 0, address: str | None = None
    ) -> list[Suppression]:
        """Entries by address order (or the one for ``address``)."""
        ...

    async def suppression_count(self) -> int: ...

    async def save_book(self, worker: int, snapshot: bytes) -> None:
        """Keep a worker's reputation book (counts and standings) for its next start."""
        ...

    async def load_book(self, worker: int) -> bytes | None: ...

    def close(self) -> None: ...
