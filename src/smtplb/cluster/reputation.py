"""Reputation counts and standings of a cluster: every node judges a member on the
cluster's traffic, and a change of standing is decided once and told to every node.

Counts. Each worker adds its outcomes to a local buffer (no Redis call per message);
every ``SYNC_EVERY`` seconds when it saw a hard bounce, a policy block or a complaint
(every ``CALM_EVERY`` with other outcomes only), one script call (one command)
adds the buffer to Redis and reads the window back: hashes
``smtplb:rep:counts:SLICE`` (one per slice of the book's window, ``[reputation]
window`` / 24, the slices of :class:`~smtplb.reputation.standing.Window`), fields
``member|provider|outcome``. One hash per slice, not one per (member, provider): the
read is 24 HGETALLs inside the script whatever the number of members, and the hashes
expire with the window. The cluster's counts of a (member, provider) are then the
slices read (those still in the window) plus what this worker added since, and the
book judges on them. A worker without traffic reads nothing: it has nothing to
judge, and the standings reach it by the channel.

Standings. When the book moves a (member, provider) to another state it proposes
the change: a Lua compare-and-set on ``smtplb:rep:standings`` (field
``member|provider``, value ``state|since|until|probation_left|reason``) takes it only
if the state there is still the one the book moved from, and publishes it on the
channel of the same name (the :class:`~smtplb.cluster.broadcast.Broadcast` format).
The winner writes the event (``on_change``); every other worker adopts the state
without one; a loser adopts what Redis holds. Probation attempts are counted per
worker: the first worker done with them proposes ``ok`` for everyone.

Redis away (the link's one warning line): the book judges on its own window, as
alone, and writes its own events; the buffer keeps growing and is added to Redis
when the link comes back (before the link is up again), so the outage's counts are
not lost. Counts that start again (probation, a release) start at the next slice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from smtplb.cluster.broadcast import Broadcast
from smtplb.cluster.link import PREFIX, ClusterLink
from smtplb.reputation.book import MEMBER_WIDE, Change, ReputationBook
from smtplb.reputation.standing import Counts, Outcome, Reputation, Standing

log = logging.getLogger("smtplb.cluster")

SYNC_EVERY = 2.0  # with outcomes that cross thresholds in the buffer
CALM_EVERY = 10.0  # with only deliveries, deferrals and other bounces: rates go down
URGENT = frozenset({Outcome.HARD, Outcome.POLICY, Outcome.COMPLAINT})
COUNTS = PREFIX + "rep:counts:"
STANDINGS = "rep:standings"  # under PREFIX: the hash and the channel

_PROPOSE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local state = 'ok'
if cur then state = string.match(cur, '^[^|]*') end
if state ~= ARGV[2] then return {0, cur or ''} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', KEYS[1], ARGV[4] .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[3])
return {1, ARGV[3]}
"""

# KEYS: the window's slice hashes, oldest first. ARGV: the hashes' time to live, then
# (index in KEYS, field, count) per count to add. Returns each hash's HGETALL.
_SYNC = """
local touched = {}
for i = 2, #ARGV, 3 do
  local k = KEYS[tonumber(ARGV[i])]
  redis.call('HINCRBY', k, ARGV[i + 1], ARGV[i + 2])
  touched[k] = true
end
for k in pairs(touched) do redis.call('EXPIRE', k, tonumber(ARGV[1])) end
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end
return out
"""

Key = tuple[str, str]  # (member, provider)


def encode_standing(s: Standing) -> str:
    return f"{s.state.value}|{s.since!r}|{s.until!r}|{s.probation_left}|{s.reason}"


def decode_standing(value: str) -> Standing:
    """The standing of a hash value ('' : ok); ValueError when it is not one."""
    if not value:
        return Standing()
    state, since, until, left, reason = value.split("|", 4)
    return Standing(Reputation(state), float(since), float(until), int(left), reason)


def key_field(key: Key) -> str:
    return f"{key[0]}|{key[1]}"


def field_key(field: str) -> Key:
    member, sep, provider = field.rpartition("|")
    if not sep or not member or not provider:
        raise ValueError(f"not a member|provider field: {field!r}")
    return member, provider


def by_key(slices: dict[int, dict[str, int]]) -> dict[Key, dict[int, Counts]]:
    """``slices`` (a slice's ``member|provider|outcome`` fields) per (member, provider)."""
    out: dict[Key, dict[int, Counts]] = {}
    for index, fields in slices.items():
        for field, n in fields.items():
            rest, _, outcome = field.rpartition("|")
            try:
                key = field_key(rest)
                kind = Outcome(outcome)
            except ValueError:
                continue
            out.setdefault(key, {}).setdefault(index, Counts()).add(kind, n)
    return out


def total(slices: dict[int, Counts], first: int, into: Counts | None = None) -> Counts:
    """The sum of the slices from ``first`` on."""
    out = Counts() if into is None else into
    for index, counts in slices.items():
        if index >= first:
            out.merge(counts)
    return out


class RedisReputation:
    """A :class:`~smtplb.reputation.book.SharedCounts` in Redis for one worker's book."""

    def __init__(self, link: ClusterLink, book: ReputationBook) -> None:
        self.link = link
        self.book = book
        self.slice = book.window_length / 24
        self.buckets = 24
        self._pending: dict[Key, dict[int, Counts]] = {}  # added here, not yet in Redis
        self._remote: dict[Key, dict[int, Counts]] = {}  # the cluster's, at the last read
        self._totals: dict[Key, tuple[int, Counts]] = {}  # (from slice, sum) of _remote
        self._floors: dict[Key, int] = {}  # counts start again after this slice
        self._member_floors: dict[str, int] = {}  # (of every provider of the member)
        self._fresh = False  # read since the link came (back) up
        self._lock = asyncio.Lock()
        self._propose = link.redis.register_script(_PROPOSE)
        self._sync = link.redis.register_script(_SYNC)
        self.broadcast = Broadcast(link, STANDINGS, self._apply)
        self.on_adopt: Callable[[], None] | None = None  # another node moved a standing
        self.syncs = 0
        self._urgent = False  # an outcome of URGENT in the buffer
        self._synced_at = 0.0  # monotonic
        link.on_down.append(self._down)
        link.on_up.append(self.sync)
        book.shared = self

    def __repr__(self) -> str:
        state = "shared" if self.active else "local (Redis away)"
        return f"RedisReputation({state}, {len(self._remote)} counters)"

    def start(self) -> None:
        """Listen to the standings and sync the counts (needs the running loop)."""
        self.broadcast.start()
        self.link.background.append(asyncio.get_running_loop().create_task(self._loop()))

    # -- SharedCounts --------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.link.up and self._fresh

    def _index(self, now: float) -> int:
        return int(now // self.slice)

    def add(self, key: Key, outcome: Outcome, now: float) -> None:
        by_slice = self._pending.setdefault(key, {})
        index = self._index(now)
        counts = by_slice.get(index)
        if counts is None:
            counts = by_slice[index] = Counts()
        counts.add(outcome)
        if outcome in URGENT:
            self._urgent = True

    def counts(self, key: Key, now: float) -> Counts | None:
        first = max(self._index(now) - self.buckets + 1, self.floor(key) + 1)
        cached = self._totals.get(key)
        if cached is None or cached[0] != first:
            cached = self._totals[key] = (first, total(self._remote.get(key, {}), first))
        out = Counts()
        out.merge(cached[1])
        return total(self._pending.get(key, {}), first, out)

    def reset(self, member: str, provider: str | None, since: float) -> None:
        index = self._index(since)
        if provider is None:
            self._member_floors[member] = max(index, self._member_floors.get(member, -1))
        else:
            self._floors[(member, provider)] = max(index, self._floors.get((member, provider), -1))
        self._totals.clear()

    def floor(self, key: Key) -> int:
        """The last slice not counted for ``key`` (-1: all are)."""
        return max(self._floors.get(key, -1), self._member_floors.get(key[0], -1))

    def propose(self, change: Change) -> None:
        self.link.spawn(self._proposed(change))

    # -- Redis -------------------------------------------------------------------------

    async def _proposed(self, change: Change) -> None:
        key = (change.member, change.provider)
        field = key_field(key)
        async with self._lock:
            answer = await self.link.call(
                lambda: self._propose(
                    keys=[PREFIX + STANDINGS],
                    args=[
                        field,
                        change.old.value,
                        encode_standing(change.new),
                        self.link.participant,
                    ],
                )
            )
        if answer is None:  # Redis away: decided here, as alone
            self._tell(change)
            return
        won, value = int(answer[0]), _text(answer[1])
        if won:
            self._tell(change)
        else:
            try:
                self.book.adopt(key, decode_standing(value))
            except ValueError as exc:
                log.warning("cluster: %s: cannot read %r: %s", field, value, exc)

    def _tell(self, change: Change) -> None:
        if self.book.on_change is not None:
            self.book.on_change(change)

    def _apply(self, field: str, value: str) -> None:
        """Another worker's change (or the hash, read when subscribing)."""
        key = field_key(field)
        self.book.adopt(key, decode_standing(value))
        if self.on_adopt is not None:
            self.on_adopt()

    def _down(self) -> None:
        self._fresh = False

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_EVERY)
            calm = time.monotonic() - self._synced_at >= CALM_EVERY - SYNC_EVERY / 2
            if self.link.up and self._pending and (self._urgent or calm):
                await self.link.call(self.sync)

    async def sync(self) -> None:
        """Add the buffer to Redis and read the window back (one script call); then
        judge every (member, provider) on the cluster's counts."""
        pending, self._pending = self._pending, {}
        urgent, self._urgent = self._urgent, False
        self._synced_at = time.monotonic()
        current = self._index(self.book.clock.wall())
        first = current - self.buckets + 1
        args: list[Any] = [math.ceil(self.slice * (self.buckets + 2))]
        for key, by_slice in pending.items():
            for index, counts in by_slice.items():
                if index < first:
                    continue  # out of the window already
                for outcome in Outcome:
                    n = getattr(counts, outcome.value)
                    if n:
                        args += [index - first + 1, f"{key_field(key)}|{outcome.value}", n]
        keys = [f"{COUNTS}{index}" for index in range(first, current + 1)]
        try:
            read: list[Any] = await self._sync(keys=keys, args=args)
        except BaseException:
            for key, by_slice in pending.items():  # added again at the next sync
                mine = self._pending.setdefault(key, {})
                for index, counts in by_slice.items():
                    mine.setdefault(index, Counts()).merge(counts)
            self._urgent = self._urgent or urgent
            raise
        self._remote = by_key({first + i: _pairs(flat) for i, flat in enumerate(read) if flat})
        self._totals.clear()
        self._fresh = True
        self.syncs += 1
        # the providers first: a member-wide judgement needs them known
        for member, provider in sorted(self._remote, key=lambda k: k[1] == MEMBER_WIDE):
            self.book.judge(member, provider)


def _pairs(flat: list[Any]) -> dict[str, int]:
    """An HGETALL's answer inside a script (a flat list) as a dict."""
    return {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


__all__ = ["RedisReputation", "by_key", "decode_standing", "encode_standing", "total"]
