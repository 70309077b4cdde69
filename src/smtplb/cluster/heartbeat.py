"""Nodes know each other (SPEC §2.8): a heartbeat per node in Redis.

With ``[cluster] redis``, worker 0 of each node writes one record every
:data:`EVERY` seconds under ``smtplb:node:NAME`` with a TTL of :data:`TTL`: its
name, addresses, queue depth, delivery rate, a health summary of its members,
its version and the time. A node that stops beating drops out by itself when
its key expires. ``GET /api/v1/cluster`` lists the live records
(:func:`cluster_view`); without Redis, or while Redis is away, it lists this
node alone, marked. Building the record and the list are pure functions; the
Redis part is :class:`Heartbeats`, which talks through the worker's
:class:`~smtplb.cluster.link.ClusterLink` (its client, and its verdict on whether
Redis answers: a failed beat puts the link away, and the link's probe brings it
back).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from redis.exceptions import RedisError

from smtplb.clock import Clock, SystemClock
from smtplb.cluster.link import UNREACHABLE, ClusterLink

log = logging.getLogger("smtplb.cluster")

KEY_PREFIX = "smtplb:node:"
EVERY = 2.0  # seconds between heartbeats
TTL = 10  # seconds a heartbeat lives: a node silent for that long is gone
_PENDING = ("queued", "in_flight", "deferred")


def node_name(configured: str | None) -> str:
    """``[cluster] node``, by default the host's name."""
    return configured or socket.gethostname()


def heartbeat(
    *,
    node: str,
    smtp: list[str],
    http: str,
    queue: dict[str, int],
    members: Iterable[dict[str, Any]],
    version: str,
    now: float,
    draining: bool = False,
) -> dict[str, Any]:
    """One node's record: what the cluster view shows of it."""
    views = list(members)
    return {
        "node": node,
        "smtp": smtp,
        "http": http,
        "queue_depth": sum(queue.get(state, 0) for state in _PENDING),
        "rate_per_minute": sum(int(m.get("per_minute") or 0) for m in views),
        "health": dict(sorted(Counter(str(m["health"]) for m in views).items())),
        "members": len(views),
        "draining": draining,
        "version": version,
        "ts": round(now, 3),
    }


def cluster_view(
    me: dict[str, Any], others: Iterable[dict[str, Any]], *, redis_state: str, now: float
) -> dict[str, Any]:
    """The nodes this node knows: the heartbeats read from Redis and its own record
    (fresher than its last heartbeat, and there even when Redis is not), sorted by
    name, each with ``self`` and ``age`` (seconds since its record was made)."""
    nodes = {n["node"]: n for n in others if isinstance(n, dict) and "node" in n}
    nodes[me["node"]] = me
    return {
        "node": me["node"],
        "redis": redis_state,
        "nodes": [
            {**n, "self": name == me["node"], "age": round(max(0.0, now - n["ts"]), 3)}
            for name, n in sorted(nodes.items())
        ],
    }


class Heartbeats:
    """This node's heartbeat in Redis, and the others' read back."""

    def __init__(
        self,
        link: ClusterLink,
        node: str,
        *,
        clock: Clock | None = None,
        every: float = EVERY,
        ttl: int = TTL,
    ) -> None:
        self.link = link
        self.node = node
        self.clock = clock if clock is not None else SystemClock()
        self.every = every
        self.ttl = ttl
        self.up: bool | None = None  # None: not tried yet

    @property
    def state(self) -> str:
        return {None: "unknown", True: "up", False: "down"}[self.up]

    async def beat(self, record: dict[str, Any]) -> None:
        await self.link.redis.set(KEY_PREFIX + self.node, json.dumps(record), ex=self.ttl)

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live heartbeat (an empty list when Redis cannot be read)."""
        client = self.link.redis
        if not self.link.up:
            return []
        try:
            keys = [k async for k in client.scan_iter(match=KEY_PREFIX + "*", count=100)]
            values = await client.mget(keys) if keys else []
        except (*UNREACHABLE, RedisError) as exc:
            self._mark(False, exc)
            return []
        out = []
        for value in values:
            try:
                out.append(json.loads(value or b""))
            except ValueError:
                continue  # expired between SCAN and MGET, or not ours
        return out

    async def run(self, record: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """Beat every ``every`` seconds until cancelled; Redis away is logged once
        (and its return), never fatal. While the link is away nothing is sent: its
        probe finds Redis again, and the next beat follows."""
        while True:
            if self.link.up:
                try:
                    await self.beat(await record())
                except (*UNREACHABLE, RedisError) as exc:
                    self._mark(False, exc)
                else:
                    self._mark(True)
            elif self.up is not False:
                self._mark(False, "the cluster link is away")
            await self.clock.sleep(self.every)

    def _mark(self, up: bool, exc: BaseException | str | None = None) -> None:
        # The outage itself is the cluster link's warning (one line each way, for the
        # operator); these say only what it means for the heartbeats.
        if up and self.up is not True:
            log.info("cluster: heartbeats of node %s reach Redis at %s", self.node, self._where)
        elif not up and self.up is not False:
            log.info(
                "cluster: heartbeats of node %s paused (Redis at %s: %s)",
                self.node,
                self._where,
                exc,
            )
        if not up and isinstance(exc, UNREACHABLE):
            self.link.went_away(exc)  # the link's probe brings it (and the beats) back
        self.up = up

    @property
    def _where(self) -> str:
        # The URL without a password (never logged).
        pool = self.link.redis.connection_pool.connection_kwargs
        return f"{pool.get('host', '?')}:{pool.get('port', '?')}/{pool.get('db', 0)}"

    async def close(self) -> None:
        """Leave: remove this node's heartbeat, if Redis answers (else its TTL removes
        it). The client is the link's, closed with it."""
        if self.link.up:
            with contextlib.suppress(*UNREACHABLE, RedisError):
                await self.link.redis.delete(KEY_PREFIX + self.node)

    def __repr__(self) -> str:
        return f"Heartbeats({self.node}, redis {self.state})"
