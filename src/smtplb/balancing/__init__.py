"""Balancing: which member of a pool takes a message (SPEC §2.2)."""

from __future__ import annotations

from smtplb.balancing.base import Candidate, PickRequest, Strategy
from smtplb.balancing.failover import Failover
from smtplb.balancing.hashing import BoundedHash
from smtplb.balancing.latency import Latency
from smtplb.balancing.least_connections import LeastConnections
from smtplb.balancing.weighted import RoundRobin, SmoothWeighted
from smtplb.config import PoolConfig


def make_strategy(pool: PoolConfig) -> Strategy:
    """The strategy a pool's config names (already validated)."""
    names = [m.name for m in pool.members]
    match pool.strategy:
        case "round_robin":
            return RoundRobin(names)
        case "weighted":
            return SmoothWeighted(names)
        case "least_connections":
            return LeastConnections(names)
        case "latency":
            return Latency(names, decay=pool.latency_decay)
        case "hash":
            return BoundedHash(
                names,
                key=pool.hash_key,
                factor=pool.hash_balance_factor,
                weights={m.name: m.weight for m in pool.members},
            )
        case "failover":
            return Failover(names)
    raise ValueError(f"unknown strategy {pool.strategy!r}")


__all__ = ["Candidate", "PickRequest", "Strategy", "make_strategy"]
