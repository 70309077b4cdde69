"""The suppression list shared by every node: the
:class:`~smtplb.reputation.state.State` of a cluster.

Theory of operation. Redis holds the list (hash ``smtplb:suppression``: field
``address|domain``, value the entry as JSON) and a channel carries each addition and
removal (a :class:`~smtplb.cluster.broadcast.Broadcast`). Each node keeps a full
replica in its embedded :class:`~smtplb.reputation.embedded.SqliteState`, so the
check at every RCPT stays one local primary-key lookup; the replica is brought up
to date by the channel, and by reading the whole hash when the worker subscribes
(its start, and Redis's return), in slices of a thousand entries, one replica
transaction each. What a worker adds or removes goes to its replica
and to Redis at once. Worker 0 of each node applies the others' changes to the
node's replica (the workers share the file).

While Redis is away the replica answers and local changes still reach it; the
additions made meanwhile are told again when Redis returns (removals made during
the outage reach the other nodes only with the next change of that entry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence

import msgspec

from smtplb.cluster.broadcast import Broadcast
from smtplb.cluster.link import ClusterLink
from smtplb.reputation.embedded import SqliteState
from smtplb.reputation.state import Suppression, normalize, normalize_domain

log = logging.getLogger("smtplb.cluster")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Suppression).decode


def field_of(address: str, domain: str) -> str:
    return f"{normalize(address)}|{normalize_domain(domain)}"


class RedisSuppressionState:
    """The embedded state as each node's replica, the list itself in Redis."""

    def __init__(self, local: SqliteState, link: ClusterLink, *, follows: bool) -> None:
        self.local = local
        self.link = link
        self.follows = follows  # this worker applies the others' changes (worker 0)
        self.broadcast = Broadcast(link, "suppression", self._apply, self._apply_slice)
        self._unsent: list[Suppression] = []  # added while Redis was away
        self._pending: set[asyncio.Task[None]] = set()
        link.on_up.append(self._resend)

    def __repr__(self) -> str:
        return f"RedisSuppressionState({self.local!r}, {self.link!r})"

    def start(self) -> None:
        if self.follows:
            self.broadcast.start()

    # -- State: reads from the replica ---------------------------------------------

    def is_suppressed(self, address: str, sender_domain: str = "") -> bool:
        return self.local.is_suppressed(address, sender_domain)

    async def suppressions(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        address: str | None = None,
        domain: str | None = None,
    ) -> list[Suppression]:
        return await self.local.suppressions(
            limit=limit, offset=offset, address=address, domain=domain
        )

    async def suppression_count(self, domain: str | None = None) -> int:
        return await self.local.suppression_count(domain)

    # -- State: writes to the replica and to Redis ------------------------------------

    async def suppress(self, entries: Sequence[Suppression]) -> int:
        new = await self.local.suppress(entries)
        for e in entries:
            self._tell(e)
        return new

    async def unsuppress(self, addresses: Sequence[str], domain: str = "") -> int:
        gone = await self.local.unsuppress(addresses, domain)
        for a in addresses:
            self.broadcast.tell(field_of(a, domain), "")
        return gone

    def _tell(self, e: Suppression) -> None:
        if not self.link.up:
            self._unsent.append(e)
        self.broadcast.tell(field_of(e.address, e.domain), _encode(e).decode())

    async def _resend(self) -> None:
        unsent, self._unsent = self._unsent, []
        if unsent:
            async with self.link.redis.pipeline(transaction=False) as pipe:
                for e in unsent:
                    pipe.hsetnx(self.broadcast.key, field_of(e.address, e.domain), _encode(e))
                await pipe.execute()

    # -- the others' changes ------------------------------------------------------------

    def _apply(self, field: str, value: str) -> None:
        if value:
            entry = _decode(value)
            self._run(self.local.suppress([entry]))
        else:
            address, _, domain = field.rpartition("|")
            self._run(self.local.unsuppress([address], domain))

    async def _apply_slice(self, pairs: list[tuple[str, str]]) -> None:
        """A slice of the whole list, read when subscribing: one replica transaction.
        (Entries removed while this worker was away are not in the hash: they stay in
        the replica until their next change, as the module doc says.)"""
        entries = []
        for field, value in pairs:
            try:
                entries.append(_decode(value))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("cluster: suppression entry %r: cannot read %r: %s", field, value, exc)
        if entries:
            await self.local.suppress(entries)

    def _run(self, write: Awaitable[int]) -> None:
        async def go() -> None:
            await write

        task = asyncio.get_running_loop().create_task(go())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settle(self) -> None:
        """Until the others' changes received so far are in the replica."""
        while self._pending:
            await asyncio.gather(*list(self._pending))

    # -- State: the reputation book stays per node ----------------------------------------

    async def save_book(self, worker: int, snapshot: bytes) -> None:
        await self.local.save_book(worker, snapshot)

    async def load_book(self, worker: int) -> bytes | None:
        return await self.local.load_book(worker)

    def close(self) -> None:
        self.local.close()
