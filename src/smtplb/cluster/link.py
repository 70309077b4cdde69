"""One worker's connection to the cluster's Redis: up or away, who else takes part.

The shared-state backends (:mod:`smtplb.cluster.warmup`, :mod:`smtplb.cluster.rate`)
keep the event loop free: their synchronous methods answer from local leases, and
every Redis call runs in a background task through this link (redis-py's asyncio
client). A call that fails with a connection error or a timeout puts the link
*away*: one warning line, ``smtplb_cluster_redis_up`` 0 and ``smtplb_cluster_fallback``
1, and the backends use their conservative local share. A probe pings every half
second; when Redis answers, each backend reconciles (adds what it used meanwhile),
then the link is *up* again, with one info line.

Participants (``node/worker``) register in a sorted set scored by Redis's clock every
few seconds; their count splits the local share. The last count is kept in
``data_dir/run/cluster-participants`` so a worker that starts while Redis is away
still knows how many there were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("smtplb.cluster")

PREFIX = "smtplb:"
PARTICIPANTS = PREFIX + "participants"
REGISTER_EVERY = 5.0
FORGET_AFTER = 16.0  # a participant not seen for this long is no longer counted
PROBE_EVERY = 0.5
# After Redis returns, the local share holds this long more: every live participant
# (probing every PROBE_EVERY) has put its count back before anyone takes a lease.
GRACE = 2.0
TIMEOUT = 1.0
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

_REGISTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[2]) * 4000))
return redis.call('ZCARD', KEYS[1])
"""

T = TypeVar("T")


class ClusterLink:
    """The Redis client of one worker process, and whether Redis answers."""

    def __init__(self, url: str, node: str, worker: int = 0, run_dir: Path | None = None) -> None:
        self.url = url
        self.participant = f"{node}/{worker}"
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            # No retries inside a call: a call that fails puts the link away at once,
            # and the probe brings it back.
            retry=Retry(NoBackoff(), 0),
        )
        self.up = True  # until a call fails
        self.up_since = -GRACE  # monotonic
        self.fallbacks = 0  # times the link went away
        self._peers_file = None if run_dir is None else run_dir / "cluster-participants"
        self.participants = self._load_participants()
        self.on_down: list[Callable[[], None]] = []
        self.on_up: list[Callable[[], Awaitable[None]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.background: list[asyncio.Task[Any]] = []  # long-running, ended by aclose
        self._probe: asyncio.Task[None] | None = None
        self._registrar: asyncio.Task[None] | None = None
        self._register = self.redis.register_script(_REGISTER)
        # Set by aclose: the loops end at their next turn even when a cancel was lost
        # (a call cancelled inside redis-py may swallow the CancelledError).
        self._closed = False

    @property
    def shared(self) -> bool:
        """Limits are taken from Redis (else from the local share): up, and past the
        grace after a return."""
        return self.up and time.monotonic() - self.up_since >= GRACE

    def __repr__(self) -> str:
        state = "up" if self.up else "away (local share)"
        return f"ClusterLink({self.participant}, {state}, {self.participants} participants)"

    # -- running calls in the background ------------------------------------------

    def start(self) -> bool:
        """Begin registering (once); False when no event loop runs (a CLI command)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._registrar is None:
            self._registrar = loop.create_task(self._register_loop())
        return True

    def spawn(self, coro: Coroutine[Any, Any, None]) -> bool:
        """Run ``coro`` in the background; False (and ``coro`` closed) without a loop."""
        if not self.start():
            coro.close()
            return False
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def call(self, op: Callable[[], Awaitable[T]]) -> T | None:
        """``op()`` against Redis; None (and the link away) when Redis does not answer."""
        if not self.up:
            return None
        try:
            return await op()
        except UNREACHABLE as exc:
            self.went_away(exc)
            return None

    def went_away(self, exc: BaseException) -> None:
        if not self.up:
            return
        self.up = False
        self.fallbacks += 1
        log.warning(
            "cluster: Redis at %s unreachable (%s): shared limits fall back to a local"
            " share (1/%d)",
            _redacted(self.url),
            exc or type(exc).__name__,
            self.participants,
        )
        for hook in self.on_down:
            hook()
        if not self._closed and (self._probe is None or self._probe.done()):
            with contextlib.suppress(RuntimeError):
                self._probe = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(PROBE_EVERY)
            try:
                # The pool's connections date from before: a restarted Redis has
                # closed them, and the first call on each would put the link away again.
                await self.redis.connection_pool.disconnect()
                await self.redis.ping()
            except UNREACHABLE:
                continue
            try:
                for hook in self.on_up:
                    await hook()
                await self._register_once(force=True)
            except UNREACHABLE:
                continue
            self.up, self.up_since = True, time.monotonic()
            log.info("cluster: Redis at %s answers again: limits are shared", _redacted(self.url))
            return

    # -- participants ------------------------------------------------------------------

    async def _register_loop(self) -> None:
        while not self._closed:
            if self.up:
                with contextlib.suppress(*UNREACHABLE):
                    await self._register_once()
            await asyncio.sleep(REGISTER_EVERY)

    async def _register_once(self, force: bool = False) -> None:
        try:
            n = int(
                await self._register(keys=[PARTICIPANTS], args=[self.participant, FORGET_AFTER])
            )
        except UNREACHABLE as exc:
            if not force:
                self.went_away(exc)
            raise
        self.saw_participants(n)

    def saw_participants(self, n: int) -> None:
        """Redis counted ``n`` participants (registering, or in a script's answer)."""
        if n != self.participants and n >= 1:
            self.participants = n
            self._save_participants()

    def _load_participants(self) -> int:
        if self._peers_file is None:
            return 1
        try:
            return max(1, int(self._peers_file.read_text().strip()))
        except (OSError, ValueError):
            return 1

    def _save_participants(self) -> None:
        if self._peers_file is None:
            return
        with contextlib.suppress(OSError):
            self._peers_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._peers_file.with_suffix(".tmp")
            tmp.write_text(f"{self.participants}\n")
            tmp.replace(self._peers_file)

    async def aclose(self) -> None:
        self._closed = True
        tasks = [t for t in (*self._tasks, self._probe, self._registrar) if t is not None]
        tasks += self.background
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, *UNREACHABLE):
                await t
        with contextlib.suppress(*UNREACHABLE):
            await self.redis.aclose()


def _redacted(url: str) -> str:
    """The URL without a password (``redis://:secret@host`` → ``redis://***@host``)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest
