"""Balancing: which member of a pool takes a message (SPEC §2.2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from smtplb.balancing.base import Candidate, PickRequest, Strategy
from smtplb.balancing.round_robin import RoundRobin

STRATEGY_TYPES: dict[str, Callable[[Sequence[str]], Strategy]] = {
    RoundRobin.name: RoundRobin,
}


def make_strategy(name: str, members: Sequence[str]) -> Strategy:
    """The strategy called ``name`` (a config value already validated)."""
    try:
        factory = STRATEGY_TYPES[name]
    except KeyError:
        raise NotImplementedError(f"strategy {name!r} is not available yet") from None
    return factory(members)


__all__ = ["STRATEGY_TYPES", "Candidate", "PickRequest", "Strategy", "make_strategy"]
