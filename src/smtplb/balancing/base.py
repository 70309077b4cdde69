"""The balancing interface: a strategy picks one member among the eligible ones.

Strategies are pure and I/O-free. Eligibility (health, pause, warm-up,
shaping, members already tried for this job) is decided before a strategy is
asked, by the filters in :mod:`smtplb.balancing.eligibility`; a strategy only
chooses. It may choose a member that is ``full`` (held by a WAIT filter: all
connection slots busy): the job then waits for that member, which is how a
consistent hash keeps a key on its member. Strategies that spread load skip
full members and return None when every member is full.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar


class Candidate(Protocol):
    """What a strategy may know of a member."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float:
        """Configured weight × slow-start ramp."""
        ...

    @property
    def ramp(self) -> float:
        """Slow-start share from 0 to 1 (1 = fully up)."""
        ...

    @property
    def load(self) -> int:
        """Deliveries in progress on this member now."""
        ...

    @property
    def full(self) -> bool:
        """Every connection slot is busy."""
        ...


@dataclass(frozen=True, slots=True)
class PickRequest:
    """What eligibility filters and strategies may know of the job: the keys a
    hash strategy uses, and the members that already failed it (``tried``, the
    job's own set, so one request serves every pick of the job)."""

    recipient_domain: str = ""
    sender_domain: str = ""
    client_ip: str = ""
    sender: str = ""
    tried: AbstractSet[str] = frozenset()
    provider: str = ""  # the recipient domain's mailbox provider ("" before it is known)


C = TypeVar("C", bound=Candidate)


class Strategy:
    """Base of every strategy. ``members`` is the pool's configured order."""

    name: ClassVar[str] = ""
    # Round robin: picks may go by ``cursor`` (see smtplb.balancing.weighted).
    rotates: ClassVar[bool] = False
    cursor: int = 0

    def __init__(self, members: Sequence[str]) -> None:
        self.members = list(members)

    def pick(self, candidates: Sequence[C], request: PickRequest) -> C | None:
        raise NotImplementedError

    def takes_turn(self, candidate: Candidate) -> bool:
        """A rotation's candidate: does it take this turn (see ``rotates``)?"""
        return True

    def observe(self, member: str, seconds: float, ok: bool, now: float) -> None:
        """One finished delivery on ``member`` (latency-aware strategies learn from it)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.members)} members)"


def not_full(candidates: Sequence[C]) -> list[C]:
    return [c for c in candidates if not c.full]
