"""Response-rule suspensions seen by every node: the
:class:`~smtplb.reputation.shaping.SuspensionBus` of a cluster.

Theory of operation. When a rule suspends a member for a provider (Gmail's
``421 4.7.28``), or a provider for every member, the worker that saw the reply
writes the suspension into one Redis hash (``smtplb:suspensions``: field
``member|provider``, value ``until|rule|participant``) and publishes the same value
on a channel. Every worker subscribes to the channel and applies what others
publish to its own :class:`~smtplb.reputation.shaping.Shaping`, so the next pick on
any node skips the member. A worker that starts, or whose link comes back, reads the
hash (suspensions that have not ended yet). Nothing is asked at pick time: the
eligibility filter keeps reading the local state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from smtplb.cluster.link import PREFIX, UNREACHABLE, ClusterLink

log = logging.getLogger("smtplb.cluster")

HASH = PREFIX + "suspensions"
CHANNEL = PREFIX + "suspensions"
EVERYONE = "*"  # the member field of a provider suspended for every member


class _Applies(Protocol):
    def apply(self, member: str | None, provider: str, until: float, rule: str) -> None: ...


def encode(
    member: str | None, provider: str, until: float, rule: str, origin: str
) -> tuple[str, str]:
    """(hash field, value) of one suspension."""
    return f"{member or EVERYONE}|{provider}", f"{until!r}|{rule}|{origin}"


def decode(field: str, value: str) -> tuple[str | None, str, float, str, str]:
    """(member or None, provider, until, rule, origin) of a hash field and value."""
    member, _, provider = field.partition("|")
    until, _, rest = value.partition("|")
    rule, _, origin = rest.rpartition("|")
    return (None if member == EVERYONE else member), provider, float(until), rule, origin


class RedisSuspensions:
    """Announces this worker's suspensions and applies everyone else's."""

    def __init__(self, link: ClusterLink, shaping: _Applies) -> None:
        self.link = link
        self.shaping = shaping
        self._listener: asyncio.Task[None] | None = None
        link.on_up.append(self._load)

    def __repr__(self) -> str:
        return f"RedisSuspensions({self.link!r})"

    def start(self) -> None:
        """Subscribe (once; needs the running loop)."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())
            self.link.background.append(self._listener)

    def announce(self, member: str | None, provider: str, until: float, rule: str) -> None:
        field, value = encode(member, provider, until, rule, self.link.participant)

        async def write() -> bool:
            async with self.link.redis.pipeline(transaction=False) as pipe:
                pipe.hset(HASH, field, value)
                pipe.publish(CHANNEL, f"{field}\n{value}")
                await pipe.execute()
            return True

        async def send() -> None:
            await self.link.call(write)

        self.link.spawn(send())

    def _apply(self, field: str, value: str, *, own_too: bool = False) -> None:
        try:
            member, provider, until, rule, origin = decode(field, value)
        except ValueError:
            log.warning("cluster: a suspension that does not parse: %r = %r", field, value)
            return
        if (own_too or origin != self.link.participant) and until > time.time():
            self.shaping.apply(member, provider, until, rule)

    async def _load(self) -> None:
        """Every suspension in force (at the start, and when Redis returns); raises
        when Redis does not answer (the link's probe tries again)."""
        found: dict[Any, Any] = await self.link.redis.hgetall(HASH)
        now = time.time()
        ended = []
        for k, v in found.items():
            field, value = _text(k), _text(v)
            self._apply(field, value)
            with contextlib.suppress(ValueError):
                if decode(field, value)[2] <= now:
                    ended.append(field)
        if ended:
            await self.link.redis.hdel(HASH, *ended)

    async def _listen(self) -> None:
        while True:
            if not self.link.up:
                await asyncio.sleep(0.5)
                continue
            pubsub = self.link.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                await self._load()
                while self.link.up:
                    # (not listen(): it would read past the client's socket timeout)
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        field, _, value = _text(message["data"]).partition("\n")
                        self._apply(field, value)
            except UNREACHABLE as exc:
                self.link.went_away(exc)
            finally:
                with contextlib.suppress(*UNREACHABLE):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(0.5)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
