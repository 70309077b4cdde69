"""Response-rule suspensions seen by every node: the
:class:`~smtplb.reputation.shaping.SuspensionBus` of a cluster.

When a rule suspends a member for a provider (Gmail's ``421 4.7.28``), or a provider
for every member, the worker that saw the reply tells it through a
:class:`~smtplb.cluster.broadcast.Broadcast` (hash and channel
``smtplb:suspensions``: field ``member|provider``, value ``until|rule``); every other
worker applies it to its own :class:`~smtplb.reputation.shaping.Shaping`, so the next
pick on any node skips the member. Suspensions that have ended are dropped from the
hash when a worker reads it.
"""

from __future__ import annotations

import time
from typing import Protocol

from smtplb.cluster.broadcast import Broadcast
from smtplb.cluster.link import ClusterLink

EVERYONE = "*"  # the member field of a provider suspended for every member


class _Applies(Protocol):
    def apply(self, member: str | None, provider: str, until: float, rule: str) -> None: ...


def encode(member: str | None, provider: str, until: float, rule: str) -> tuple[str, str]:
    """(hash field, value) of one suspension."""
    return f"{member or EVERYONE}|{provider}", f"{until!r}|{rule}"


def decode(field: str, value: str) -> tuple[str | None, str, float, str]:
    """(member or None, provider, until, rule) of a hash field and value."""
    member, _, provider = field.partition("|")
    until, _, rule = value.partition("|")
    return (None if member == EVERYONE else member), provider, float(until), rule


class RedisSuspensions:
    """Tells this worker's suspensions and applies everyone else's."""

    def __init__(self, link: ClusterLink, shaping: _Applies) -> None:
        self.shaping = shaping
        self.broadcast = Broadcast(link, "suspensions", self._apply)
        self._ended: list[str] = []

    def __repr__(self) -> str:
        return f"RedisSuspensions({self.broadcast!r})"

    def start(self) -> None:
        self.broadcast.start()

    def announce(self, member: str | None, provider: str, until: float, rule: str) -> None:
        self.broadcast.tell(*encode(member, provider, until, rule))

    def _apply(self, field: str, value: str) -> None:
        member, provider, until, rule = decode(field, value)
        if until > time.time():
            self.shaping.apply(member, provider, until, rule)
        else:
            self._ended.append(field)
            self.broadcast.link.spawn(self._forget())

    async def _forget(self) -> None:
        ended, self._ended = self._ended, []
        await self.broadcast.forget(ended)
