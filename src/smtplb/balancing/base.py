"""The balancing interface: a strategy picks one member among the eligible ones.

Strategies are pure and I/O-free. Eligibility (health, pause, capacity, warm-up,
shaping) is decided before a strategy is asked; a strategy only chooses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar


class Candidate(Protocol):
    """What a strategy may know of a member."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def load(self) -> int:
        """Deliveries in progress on this member now."""
        ...


@dataclass(frozen=True, slots=True)
class PickRequest:
    """What a strategy may know of the message: the keys a hash strategy uses."""

    recipient_domain: str = ""
    sender_domain: str = ""
    client_ip: str = ""
    sender: str = ""


C = TypeVar("C", bound=Candidate)


class Strategy:
    """Base of every strategy. ``members`` is the pool's configured order."""

    name: ClassVar[str] = ""

    def __init__(self, members: Sequence[str]) -> None:
        self.members = list(members)

    def pick(self, eligible: Sequence[C], request: PickRequest) -> C | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.members)} members)"
