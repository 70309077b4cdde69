"""The one door to shared reputation state (ARCHITECTURE.md): the suppression
list now, counters next. Embedded in the spool database
(:class:`smtplb.reputation.embedded.SqliteState`); a Redis backend can follow
with the same contract.

An entry is keyed by (address, domain): ``domain`` "" suppresses the address for
every sender; a domain suppresses it only for mail whose envelope sender (MAIL
FROM) is at that domain (``[suppression] scope = "sender_domain"``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec


class Suppression(msgspec.Struct, frozen=True):
    address: str
    reason: str = ""
    source: str = "operator"  # operator | bounce | complaint | import
    created_at: float = 0.0
    domain: str = ""  # "" every sender | the sender domain it applies to


def normalize(address: str) -> str:
    """The key an address is suppressed under: trimmed, without <>, lower-cased."""
    return address.strip().strip("<>").strip().lower()


def normalize_domain(domain: str) -> str:
    """The scope key: lower-cased, without a leading ``@`` or a trailing dot."""
    return domain.strip().lstrip("@").rstrip(".").lower()


def is_listed(scopes: frozenset[str] | set[str], sender_domain: str) -> bool:
    """The decision, given the scopes an address is listed under: a global entry
    ("") refuses every sender; a domain entry refuses only that sender domain."""
    return "" in scopes or (bool(sender_domain) and normalize_domain(sender_domain) in scopes)


class State(Protocol):
    def is_suppressed(self, address: str, sender_domain: str = "") -> bool:
        """Whether mail from ``sender_domain`` to ``address`` is refused: a global
        entry, or one for (address, sender_domain). Cheap and safe on the event loop
        (asked at every RCPT)."""
        ...

    async def suppress(self, entries: Sequence[Suppression]) -> int:
        """Add entries (an (address, domain) already there keeps its first one);
        how many were new."""
        ...

    async def unsuppress(self, addresses: Sequence[str], domain: str = "") -> int:
        """Remove the entries of ``domain``'s scope ("" the global ones) for
        ``addresses``; how many were there."""
        ...

    async def suppressions(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        address: str | None = None,
        domain: str | None = None,
    ) -> list[Suppression]:
        """Entries by (address, domain) order, or the ones for ``address``; only
        ``domain``'s scope when given ("" the global entries)."""
        ...

    async def suppression_count(self, domain: str | None = None) -> int:
        """Entries in all, or in ``domain``'s scope."""
        ...

    async def save_book(self, worker: int, snapshot: bytes) -> None:
        """Keep a worker's reputation book (counts and standings) for its next start."""
        ...

    async def load_book(self, worker: int) -> bytes | None: ...

    def close(self) -> None: ...
