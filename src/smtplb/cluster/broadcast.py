"""State told to every worker of every node: a Redis hash holds what is in force, a
channel carries each change as it happens.

A worker :meth:`Broadcast.tell` s a change (``HSET`` and ``PUBLISH`` in one
pipeline); every worker that :meth:`Broadcast.start` ed applies the others' changes
as they come (its own it has applied already), and reads the whole hash when it
subscribes: at its start, and after Redis was away. That read goes in ``HSCAN``
slices of :data:`SLICE` fields, each applied (with ``apply_slice`` when one is given,
e.g. one transaction for a slice of a large suppression list) before the next is
asked for: a hash of a million entries neither blocks Redis with one ``HGETALL`` nor
sits whole in memory. Nothing is asked at pick time: the receivers keep their local
state, which their filters read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from smtplb.cluster.link import PREFIX, TIMEOUT, UNREACHABLE, ClusterLink

log = logging.getLogger("smtplb.cluster")

Apply = Callable[[str, str], None]  # (field, value)
ApplySlice = Callable[[list[tuple[str, str]]], Awaitable[None]]  # [(field, value), ...]
SLICE = 1000  # fields per HSCAN call when reading the whole hash


class Broadcast:
    def __init__(
        self, link: ClusterLink, name: str, apply: Apply, apply_slice: ApplySlice | None = None
    ) -> None:
        self.link = link
        self.key = PREFIX + name  # the hash and the channel
        self.apply = apply
        self.apply_slice = apply_slice
        self._listener: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Broadcast({self.key!r}, {'listening' if self._listener else 'not started'})"

    def start(self) -> None:
        """Subscribe (once; needs the running loop)."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())
            self.link.background.append(self._listener)

    def tell(self, field: str, value: str) -> None:
        """``field`` holds ``value`` now; an empty value: ``field`` no longer holds."""
        message = f"{self.link.participant}\n{field}\n{value}"

        async def write() -> bool:
            async with self.link.redis.pipeline(transaction=False) as pipe:
                if value:
                    pipe.hset(self.key, field, value)
                else:
                    pipe.hdel(self.key, field)
                pipe.publish(self.key, message)
                await pipe.execute()
            return True

        async def send() -> None:
            await self.link.call(write)

        self.link.spawn(send())

    async def forget(self, fields: list[str]) -> None:
        """Drop entries that no longer hold (e.g. ended suspensions)."""
        if fields:
            await self.link.call(lambda: self.link.redis.hdel(self.key, *fields))

    def _safe_apply(self, field: str, value: str) -> None:
        try:
            self.apply(field, value)
        except ValueError as exc:
            log.warning("cluster: %s: cannot apply %r = %r: %s", self.key, field, value, exc)

    async def _listen(self) -> None:
        while True:
            if not self.link.up:
                await asyncio.sleep(0.5)
                continue
            pubsub = self.link.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.key)
                await self._read_all()
                while self.link.up:
                    # (not listen(): it would read past the client's socket timeout)
                    message = await pubsub.get_message(timeout=TIMEOUT / 2)
                    if message is None or message.get("type") != "message":
                        continue
                    origin, _, rest = _text(message["data"]).partition("\n")
                    field, _, value = rest.partition("\n")
                    if origin != self.link.participant:
                        self._safe_apply(field, value)
            except UNREACHABLE as exc:
                self.link.went_away(exc)
            finally:
                with contextlib.suppress(*UNREACHABLE):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(0.5)

    async def _read_all(self) -> None:
        """Apply every field of the hash, a slice at a time (changes published
        meanwhile wait in the subscription and are applied after)."""
        cursor = 0
        while True:
            answer: Any = await self.link.redis.hscan(self.key, cursor, count=SLICE)
            cursor, found = answer
            pairs = [(_text(k), _text(v)) for k, v in found.items()]
            if self.apply_slice is not None:
                if pairs:
                    await self.apply_slice(pairs)
            else:
                for field, value in pairs:
                    self._safe_apply(field, value)
            if not cursor:
                return


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
