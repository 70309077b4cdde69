"""Warm-up counts in Redis: the :class:`~smtplb.reputation.warmup_store.WarmupState`
of a cluster, so that a cap of N holds whatever the number of nodes and workers.

Theory of operation. The gate asks synchronously, at pick time; this backend answers
from a local *lease* (:mod:`smtplb.cluster.lease`) and never waits for Redis:

- ``take(n)`` spends ``n`` of the lease. When half of it is spent a background task
  asks for the next one with the ``TAKE`` script, an atomic check-and-take of the
  day's and the hour's counts against the cap. A member with no lease waits
  (``waiting for a warm-up lease``: the message goes to another member or back to
  the spool) until the lease arrives; a member whose cap Redis says is used gets
  the usual ``warm-up cap`` reason (it frees at the next day or hour).
- What a worker does not spend within :data:`IDLE_RETURN` seconds it gives back.
  A worker that dies holding a lease leaves it counted: under the cap, never over.
- The day's step (:func:`smtplb.reputation.warmup.roll`) is decided in Python and
  written with a compare-and-set (``ROLL``): the one worker whose write wins logs it.
- Outcomes (``record``) are added up locally and written in one pipeline every
  :data:`FLUSH_EVERY` seconds.
- Each participant's own count of the day and the hour is kept beside the totals
  (field ``by:node/worker``), and every ``TAKE`` carries the local one: a count Redis
  lost (a restart without persistence) or never saw (use while Redis was away) is
  added back. That is the reconciliation when Redis returns.

While Redis is away each member × provider gets the conservative local share of
:func:`smtplb.cluster.lease.fallback_share`, from the counts seen last.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smtplb.cluster.lease import BLOCK, fallback_share, lease_request, wants_refill
from smtplb.cluster.link import FORGET_AFTER, PARTICIPANTS, PREFIX, ClusterLink
from smtplb.reputation.warmup import (
    AWAY_SHARE,
    DAY,
    LEASE_WAIT,
    OUTCOME_KINDS,
    DayOutcomes,
    Decision,
    Progress,
    Status,
    WarmupPolicy,
    day_index,
    hour_index,
    initial_step,
    roll,
)

FLUSH_EVERY = 0.5
IDLE_RETURN = 2.0  # an unspent lease goes back after this long without a take
REFRESH = 1.0  # a member × provider in use is looked at again after this long
ACTIVE = 10.0  # … while it took something in the last this many seconds
KEEP_DAYS = 40
WAITING = LEASE_WAIT

# KEYS: progress, day, hour, participants. ARGV: today, step, cap (-1: none), hourly
# cap, want, now, by-field, local day total (-1: unknown), local hour total, carry,
# ttl day, ttl hour, participant, forget after. The participant registers too: the
# answer carries their count, fresh for the lease size and the local share.
_TAKE = """
local t = redis.call('TIME')
local clock = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZADD', KEYS[4], clock, ARGV[13])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', clock - tonumber(ARGV[14]))
local participants = redis.call('ZCARD', KEYS[4])
local p = redis.call('HMGET', KEYS[1], 'step', 'decided_day', 'last_sent')
local by = ARGV[7]
local function settle(key, mine, carry)
  local counted = tonumber(redis.call('HGET', key, by) or '0')
  local add = carry
  if mine >= 0 and mine > counted then add = add + mine - counted end
  if add > 0 then
    redis.call('HINCRBY', key, 'sent', add)
    counted = redis.call('HINCRBY', key, by, add)
  end
  return counted
end
local carry = tonumber(ARGV[10])
local by_day = settle(KEYS[2], tonumber(ARGV[8]), carry)
local by_hour = settle(KEYS[3], tonumber(ARGV[9]), carry)
redis.call('EXPIRE', KEYS[2], ARGV[11])
redis.call('EXPIRE', KEYS[3], ARGV[12])
local sent = tonumber(redis.call('HGET', KEYS[2], 'sent') or '0')
local hour = tonumber(redis.call('HGET', KEYS[3], 'sent') or '0')
if not p[1] or tonumber(p[2]) ~= tonumber(ARGV[1]) or tonumber(p[1]) ~= tonumber(ARGV[2]) then
  return {-1, sent, hour, p[1] or '-1', p[2] or '-1', p[3] or '0', by_day, by_hour,
          participants}
end
local grant = tonumber(ARGV[5])
local cap = tonumber(ARGV[3])
if cap >= 0 then
  grant = math.min(grant, cap - sent, tonumber(ARGV[4]) - hour)
end
if grant > 0 then
  redis.call('HINCRBY', KEYS[2], 'sent', grant)
  by_day = redis.call('HINCRBY', KEYS[2], by, grant)
  redis.call('HINCRBY', KEYS[3], 'sent', grant)
  by_hour = redis.call('HINCRBY', KEYS[3], by, grant)
  redis.call('HSET', KEYS[1], 'last_sent', ARGV[6])
  sent = sent + grant
  hour = hour + grant
else
  grant = 0
end
return {grant, sent, hour, p[1], p[2], p[3], by_day, by_hour, participants}
"""

# KEYS: progress, providers. ARGV: expected decided_day (-1: none yet), step,
# decided_day, last_sent, provider.
_ROLL = """
local d = redis.call('HGET', KEYS[1], 'decided_day')
local current = -1
if d then current = tonumber(d) end
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'step', ARGV[2], 'decided_day', ARGV[3], 'last_sent', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return 1
"""

# KEYS: day, hour. ARGV: by-field, n. Gives back n unspent (never below zero).
_GIVE = """
for i = 1, 2 do
  local sent = tonumber(redis.call('HGET', KEYS[i], 'sent') or '0')
  local mine = tonumber(redis.call('HGET', KEYS[i], ARGV[1]) or '0')
  local n = math.min(tonumber(ARGV[2]), sent, mine)
  if n > 0 then
    redis.call('HINCRBY', KEYS[i], 'sent', -n)
    redis.call('HINCRBY', KEYS[i], ARGV[1], -n)
  end
end
return 1
"""


@dataclass(slots=True)
class _Bucket:
    """One member × provider as this worker knows it."""

    member: str
    provider: str
    day: int = -1
    hour: int = -1
    step: int | None = None  # the step Redis has for ``day``; None: not looked yet
    progress: Progress | None = None
    sent: int = 0  # the cluster's count of the day at the last look (leases included)
    hour_sent: int = 0
    looked: bool = False  # ``sent`` and the totals come from Redis
    day_total: int = 0  # this worker's own count of the day (leases and local share)
    hour_total: int = 0
    carry: int = 0  # used while Redis was away before the first look: add it
    held: int = 0  # leased, not spent
    lease: int = 0  # the size of the last lease asked for
    pending: bool = False
    checked: float = 0.0  # monotonic time of the last look
    last_take: float = 0.0
    budget: int | None = None  # the local share while Redis is away
    used: int = 0  # … spent of it
    outcomes: dict[tuple[int, str], int] = field(default_factory=dict)
    lock: asyncio.Lock | None = None


class RedisWarmupState:
    """Warm-up counts shared by every node through Redis (see the module doc)."""

    def __init__(
        self,
        link: ClusterLink,
        policy: WarmupPolicy,
        starts: Mapping[str, int | None] | None = None,
        on_lease: Callable[[], None] | None = None,
    ) -> None:
        self.link = link
        self.policy = policy
        self.starts: dict[str, int | None] = dict(starts or {})
        self.on_lease = on_lease  # a lease arrived: look at the waiting jobs again
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._decisions: list[Decision] = []
        self._returns: list[tuple[str, str, int, int, int]] = []
        self._providers: dict[str, set[str]] = {}
        self._providers_checked: dict[str, float] = {}
        self._maintainer: asyncio.Task[None] | None = None
        self._wall_offset = 0.0  # wall − monotonic at the last call (for the maintainer)
        r = link.redis
        self._take = r.register_script(_TAKE)
        self._roll = r.register_script(_ROLL)
        self._give = r.register_script(_GIVE)
        link.on_down.append(self._went_away)
        link.on_up.append(self._reconcile)

    def __repr__(self) -> str:
        held = sum(b.held for b in self._buckets.values())
        return (
            f"RedisWarmupState({len(self.starts)} members warming, {len(self._buckets)} buckets,"
            f" {held} leased, {self.link!r})"
        )

    # -- keys -------------------------------------------------------------------------

    @staticmethod
    def _base(member: str, provider: str) -> str:
        return f"{PREFIX}warmup:{member}:{provider}"

    def _keys(self, b: _Bucket, day: int, hour: int) -> tuple[str, str, str, str]:
        base = self._base(b.member, b.provider)
        return f"{base}:progress", f"{base}:day:{day}", f"{base}:hour:{hour}", PARTICIPANTS

    def _providers_key(self, member: str) -> str:
        return f"{PREFIX}warmup:{member}:providers"

    @property
    def _by(self) -> str:
        return f"by:{self.link.participant}"

    # -- the protocol -------------------------------------------------------------------

    def status(self, member: str, provider: str, now: float) -> Status:
        b = self._bucket(member, provider, now)
        status = self._status(b, 1)
        if status.wait == WAITING:
            self._refill(b, now)  # a lease for the next pick
        else:
            self._maybe_look(b)
        return status

    def take(
        self, member: str, provider: str, n: int, now: float
    ) -> tuple[str | None, list[Decision]]:
        b = self._bucket(member, provider, now)
        decisions, self._decisions = self._decisions, []
        b.last_take = time.monotonic()
        if b.held >= n:
            b.held -= n
            if self.link.shared and wants_refill(b.held, b.lease):
                self._refill(b, now)
            return None, decisions
        if self.link.shared:
            b.budget, b.used = None, 0  # (a local share ends with the grace after a return)
            reason = self._status(b, n).skip_reason(n)
            if reason is None or reason == WAITING:
                self._refill(b, now, n)
                reason = WAITING
            return reason, decisions
        budget = self._budget(b)
        if b.held + budget - b.used < n:
            return self._status(b, n).skip_reason(n), decisions
        rest = n - b.held
        b.held = 0
        b.used += rest
        if b.looked:
            b.day_total += rest
            b.hour_total += rest
        else:
            b.carry += rest
        b.sent += rest
        b.hour_sent += rest
        return None, decisions

    def give_back(self, member: str, provider: str, n: int, now: float) -> None:
        # Back into the lease: the next take spends it (the idle return hands it to Redis).
        b = self._bucket(member, provider, now)
        b.held += n

    def record(self, member: str, provider: str, counts: Mapping[str, int], now: float) -> None:
        b = self._bucket(member, provider, now)
        for kind, n in counts.items():
            if kind not in OUTCOME_KINDS:
                raise ValueError(f"unknown warm-up outcome {kind!r}")
            if n:
                key = (b.day, kind)
                b.outcomes[key] = b.outcomes.get(key, 0) + n
        self._start_maintainer()

    def providers(self, member: str) -> list[str]:
        known = self._providers.get(member, set()) | {p for (m, p) in self._buckets if m == member}
        if time.monotonic() - self._providers_checked.get(member, -1e9) > 5.0:
            self._providers_checked[member] = time.monotonic()
            self.link.spawn(self._load_providers(member))
        return sorted(known)

    def close(self) -> None:
        if self._maintainer is not None:
            self._maintainer.cancel()

    async def flush(self) -> None:
        """Write the outcomes and give-backs now (the maintainer does it every
        FLUSH_EVERY seconds)."""
        await self._flush()

    # -- what the gate sees ---------------------------------------------------------

    def _step(self, b: _Bucket) -> int:
        if b.step is not None:
            return b.step
        if b.progress is not None:  # seen on an earlier day (Redis away since)
            return b.progress.step
        return initial_step(self.starts.get(b.member), b.day)

    def _status(self, b: _Bucket, n: int) -> Status:
        step = self._step(b)
        cap = self.policy.cap(step)
        hourly = None if cap is None else self.policy.hourly_cap(cap)
        sent, hour_sent = max(0, b.sent - b.held), max(0, b.hour_sent - b.held)
        status = Status(b.provider, step + 1, cap, sent, hourly, hour_sent)
        if b.held >= n:
            return status
        if not self.link.shared:
            budget = self._budget(b)
            if b.held + budget - b.used >= n:
                return status
            if status.skip_reason(n) is None:
                return Status(
                    b.provider,
                    step + 1,
                    cap,
                    sent,
                    hourly,
                    hour_sent,
                    wait=f"{AWAY_SHARE} for {b.provider} used ({b.used}/{budget})",
                )
            return status
        if not b.looked or status.skip_reason(n) is None:
            return Status(b.provider, step + 1, cap, sent, hourly, hour_sent, wait=WAITING)
        return status

    def _budget(self, b: _Bucket) -> int:
        if b.budget is None:
            cap = self.policy.cap(self._step(b))
            if cap is None:
                b.budget = 1 << 30
            else:
                hourly = self.policy.hourly_cap(cap)
                remaining = min(cap - b.sent, hourly - b.hour_sent)
                b.budget = fallback_share(remaining, self.link.participants)
        return b.budget

    def _went_away(self) -> None:
        for b in self._buckets.values():
            b.budget, b.used = None, 0

    # -- the local buckets ------------------------------------------------------------

    def _bucket(self, member: str, provider: str, now: float) -> _Bucket:
        self._wall_offset = now - time.monotonic()
        b = self._buckets.get((member, provider))
        if b is None:
            b = self._buckets[(member, provider)] = _Bucket(member, provider)
        day, hour = day_index(now), hour_index(now)
        if hour != b.hour:
            if b.held and b.day >= 0:
                self._returns.append((member, provider, b.day, b.hour, b.held))
                self._start_maintainer()
            if day != b.day:
                b.step, b.sent, b.day_total, b.looked = None, 0, 0, False
            b.day, b.hour = day, hour
            b.held, b.hour_sent, b.hour_total, b.budget, b.used = 0, 0, 0, None, 0
            b.checked = 0.0
        return b

    def _maybe_look(self, b: _Bucket) -> None:
        recent = time.monotonic() - b.last_take < ACTIVE
        stale = time.monotonic() - b.checked > (REFRESH if recent else 5 * REFRESH)
        if self.link.up and not b.pending and (not b.looked or stale):
            self._refill(b, self._wall_offset + time.monotonic(), 0)

    def _refill(self, b: _Bucket, now: float, need: int = 1) -> None:
        if b.pending or (need and not self.link.shared):
            return
        cap = self.policy.cap(self._step(b))
        if not need:
            want = 0
        elif cap is None:
            want = BLOCK
        else:
            hourly = self.policy.hourly_cap(cap)
            remaining = min(cap - b.sent, hourly - b.hour_sent)
            want = lease_request(remaining, self.link.participants)
            if b.looked and remaining <= 0 and b.step is not None:
                want = max(need, 1)  # ask anyway: a give-back may have freed some
        want = max(want, need)
        b.pending = True
        if not self.link.spawn(self._lease(b, want, now)):
            b.pending = False

    async def _lease(self, b: _Bucket, want: int, now: float) -> None:
        if b.lock is None:
            b.lock = asyncio.Lock()
        try:
            async with b.lock:
                for _ in range(4):
                    if await self._take_once(b, want, now):
                        break
        finally:
            b.pending = False
        self._start_maintainer()
        if self.on_lease is not None:  # a lease, or the cap's reason: look again either way
            self.on_lease()

    async def _take_once(self, b: _Bucket, want: int, now: float) -> bool:
        """One TAKE; True when done (taken, refused or Redis away), False to retry
        after the day's step was rolled."""
        day, hour = b.day, b.hour
        step = -1 if b.step is None else b.step
        cap = self.policy.cap(step) if step >= 0 else None
        hourly = -1 if cap is None else self.policy.hourly_cap(cap)
        keys = self._keys(b, day, hour)
        carry = b.carry
        args: list[Any] = [
            day,
            step,
            -1 if cap is None else cap,
            hourly,
            want,
            repr(now),
            self._by,
            b.day_total if b.looked else -1,
            b.hour_total if b.looked else -1,
            carry,
            int(KEEP_DAYS * DAY),
            int(2 * DAY),
            self.link.participant,
            FORGET_AFTER,
        ]
        reply = await self.link.call(lambda: self._eval(self._take, keys, args))
        if reply is None:
            return True
        grant, sent, hour_sent = int(reply[0]), int(reply[1]), int(reply[2])
        if (b.day, b.hour) != (day, hour):
            return True  # the period turned meanwhile: this answer is for the last one
        b.carry -= carry
        b.sent, b.hour_sent = sent, hour_sent
        b.day_total, b.hour_total, b.looked = int(reply[6]), int(reply[7]), True
        self.link.saw_participants(int(reply[8]))
        b.checked = time.monotonic()
        if grant < 0:
            stored_step, decided = int(reply[3]), int(reply[4])
            stored = None if stored_step < 0 else Progress(stored_step, decided, float(reply[5]))
            await self._roll_day(b, stored, now)
            return False
        b.held += grant
        if want:
            b.lease = want
        return True

    async def _roll_day(self, b: _Bucket, stored: Progress | None, now: float) -> None:
        today = b.day
        decision: Decision | None = None
        if stored is None:
            expected = -1
            if b.progress is not None:  # Redis lost it: what this worker knew
                new = Progress(b.progress.step, today, b.progress.last_sent)
            else:
                new = Progress(initial_step(self.starts.get(b.member), today), today, 0.0)
        else:
            expected = stored.decided_day
            last = DayOutcomes()
            if stored.decided_day < today:
                base = self._base(b.member, b.provider)
                raw = await self.link.call(
                    lambda: self.link.redis.hgetall(f"{base}:day:{stored.decided_day}")
                )
                last = _outcomes(raw or {})
            new, decision = roll(stored, today, now, last, self.policy, b.member, b.provider)
            if new == stored:
                b.progress, b.step = new, new.step
                return
        keys = [f"{self._base(b.member, b.provider)}:progress", self._providers_key(b.member)]
        args = [expected, new.step, new.decided_day, repr(new.last_sent), b.provider]
        won = await self.link.call(lambda: self._eval(self._roll, keys, args))
        if won:
            b.progress, b.step = new, new.step
            if decision is not None:
                self._decisions.append(decision)

    async def _eval(self, script: Any, keys: list[str] | tuple[str, ...], args: list[Any]) -> Any:
        return await script(keys=list(keys), args=args)

    async def _load_providers(self, member: str) -> None:
        key = self._providers_key(member)
        found = await self.link.call(lambda: self.link.redis.smembers(key))
        if found is not None:
            self._providers[member] = {p.decode() if isinstance(p, bytes) else p for p in found}

    # -- the background upkeep ----------------------------------------------------------

    def _start_maintainer(self) -> None:
        if self._maintainer is None or self._maintainer.done():
            with contextlib.suppress(RuntimeError):
                loop = asyncio.get_running_loop()
                self._maintainer = loop.create_task(self._maintain())

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            if not self.link.up:
                continue
            idle_before = time.monotonic() - IDLE_RETURN
            for b in self._buckets.values():
                if b.held and b.last_take < idle_before and not b.pending:
                    self._returns.append((b.member, b.provider, b.day, b.hour, b.held))
                    b.day_total -= b.held
                    b.hour_total -= b.held
                    b.sent -= b.held
                    b.hour_sent -= b.held
                    b.held = 0
                elif time.monotonic() - b.last_take < ACTIVE:
                    self._maybe_look(b)
            await self._flush()

    async def _flush(self) -> None:
        returns, self._returns = self._returns, []
        outcomes: list[tuple[str, int, str, int]] = []
        for b in self._buckets.values():
            for (day, kind), n in b.outcomes.items():
                outcomes.append((f"{self._base(b.member, b.provider)}:day:{day}", day, kind, n))
            b.outcomes.clear()
        if not returns and not outcomes:
            return

        async def write() -> bool:
            async with self.link.redis.pipeline(transaction=False) as pipe:
                for member, provider, day, hour, n in returns:
                    base = self._base(member, provider)
                    keys = [f"{base}:day:{day}", f"{base}:hour:{hour}"]
                    await self._give(keys=keys, args=[self._by, n], client=pipe)
                for key, _day, kind, n in outcomes:
                    pipe.hincrby(key, kind, n)
                await pipe.execute()
            return True

        if await self.link.call(write) is None:
            # Kept for Redis's return: outcomes only (a lease given back is simply
            # lost with the counts, under the cap).
            for key, day, kind, n in outcomes:
                kept = self._buckets.get(_split(key))
                if kept is not None:
                    kept.outcomes[(day, kind)] = kept.outcomes.get((day, kind), 0) + n

    async def _reconcile(self) -> None:
        """Redis answers again: every bucket's local count goes in (one TAKE each)."""
        for b in list(self._buckets.values()):
            if b.held or b.used or b.carry or b.looked:
                await self._reconcile_one(b)

    async def _reconcile_one(self, b: _Bucket) -> None:
        day, hour = b.day, b.hour
        keys = self._keys(b, day, hour)
        args: list[Any] = [
            day,
            -2,  # never the stored step: a read (and the settling of the counts)
            -1,
            -1,
            0,
            "0",
            self._by,
            b.day_total if b.looked else -1,
            b.hour_total if b.looked else -1,
            b.carry,
            int(KEEP_DAYS * DAY),
            int(2 * DAY),
            self.link.participant,
            FORGET_AFTER,
        ]
        reply = await self._eval(self._take, keys, args)
        b.carry = 0
        b.sent, b.hour_sent = int(reply[1]), int(reply[2])
        b.day_total, b.hour_total, b.looked = int(reply[6]), int(reply[7]), True
        self.link.saw_participants(int(reply[8]))


def _outcomes(raw: Mapping[Any, Any]) -> DayOutcomes:
    def get(name: str) -> int:
        v = raw.get(name.encode(), raw.get(name, 0))
        return int(v or 0)

    return DayOutcomes(*(get(k) for k in ("sent", *OUTCOME_KINDS)))


def _split(key: str) -> tuple[str, str]:
    """(member, provider) of a ``smtplb:warmup:MEMBER:PROVIDER:day:N`` key."""
    parts = key[len(PREFIX) :].split(":")
    return parts[1], parts[2]
