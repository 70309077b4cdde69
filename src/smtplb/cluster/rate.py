"""A member × provider's rate shared by every node: the
:class:`~smtplb.reputation.shaping.RateLimiter` of a cluster.

Theory of operation. Each member × provider has a GCRA in Redis (the generic cell
rate algorithm, as redis-cell and KumoMTA's throttles): one number, the
*theoretical arrival time* (TAT), on Redis's clock (``TIME``: the nodes' clocks do
not matter). The ``RESERVE`` script hands out tokens as *reservations*: token k may
go at ``max(TAT, now) − τ + k/rate`` (τ lets ``burst(rate)`` go at once), and moves
the TAT past them. A worker asks for its next reservation in the background as soon
as it spends one, and gets one every time (unless the TAT is more than
:data:`AHEAD` seconds ahead: then it is told when to ask again), so a message costs
one round trip whatever the number of nodes competing for the rate, and two nodes
never poll for the same token. The reservation comes back as a delay from Redis's
now; the worker waits that long on its own clock (a late answer only makes it
later). A reservation unspent :data:`HOLD` seconds after it became valid is
dropped, not given back: what leaves the cluster in any interval stays under
``burst + rate × interval``.

While Redis is away each worker keeps a local bucket at its share of the rate
(:func:`smtplb.cluster.lease.fallback_rate`: the rate ÷ the participants), after
spending what it had reserved.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from smtplb.cluster.lease import fallback_rate, rate_lease, wants_refill
from smtplb.cluster.link import PREFIX, ClusterLink
from smtplb.reputation.shaping import LocalRate, burst

HOLD = 1.0  # a reservation unspent this long after it became valid is dropped
AHEAD = 2.0  # no reservation further ahead than this
AGAIN = 0.05  # look again this soon while a reservation is on its way

# KEYS: the TAT. ARGV: rate (a second), burst, want, ahead (seconds). Returns
# {granted, ms until the first may go} or {0, ms until asking again makes sense}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, ahead = tonumber(ARGV[3]), tonumber(ARGV[4])
local interval = 1 / rate
local tau = (burst - 1) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local first = tat - tau - now
if first > ahead then
  return {0, math.ceil((first - ahead) * 1000)}
end
local grant = 1
while grant < want and first + grant * interval <= ahead do
  grant = grant + 1
end
redis.call('SET', KEYS[1], tostring(tat + grant * interval), 'PX',
  math.ceil((tau + (tat - now) + grant * interval + 60) * 1000))
return {grant, math.max(0, math.ceil(first * 1000))}
"""


@dataclass(slots=True)
class _Lease:
    tokens: deque[float] = field(default_factory=deque)  # when each may go (monotonic)
    size: int = 1  # the last reservation's
    pending: bool = False
    next_at: float = 0.0  # monotonic: no point asking before


class RedisRate:
    """Token buckets in Redis, spent from local leases (see the module doc)."""

    def __init__(self, link: ClusterLink, on_ready: Callable[[], None] | None = None) -> None:
        self.link = link
        self.on_ready = on_ready  # tokens arrived: look at the waiting jobs again
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._local = LocalRate()  # while Redis is away
        self._reserve = link.redis.register_script(_RESERVE)
        link.on_down.append(self._local.buckets.clear)

    def __repr__(self) -> str:
        held = sum(len(lease.tokens) for lease in self._leases.values())
        return f"RedisRate({len(self._leases)} buckets, {held} tokens leased, {self.link!r})"

    @staticmethod
    def key(member: str, provider: str) -> str:
        return f"{PREFIX}rate:{member}:{provider}"

    def wait(self, member: str, provider: str, rate: float, now: float) -> float:
        lease = self._lease(member, provider)
        mono = time.monotonic()
        if lease.tokens:
            return max(0.0, lease.tokens[0] - mono)
        if not self.link.shared:
            share = fallback_rate(rate, self.link.participants)
            return self._local.wait(member, provider, share, now)
        if lease.pending:
            return AGAIN
        if mono < lease.next_at:
            return lease.next_at - mono
        self._ask(member, provider, lease, rate)
        return AGAIN

    def spend(self, member: str, provider: str, rate: float, now: float) -> None:
        lease = self._lease(member, provider)
        if lease.tokens:
            lease.tokens.popleft()
            held = len(lease.tokens)
            if self.link.shared and not lease.pending and wants_refill(held, lease.size):
                self._ask(member, provider, lease, rate)  # the next ones, ahead of the pick
        elif not self.link.shared:
            self._local.spend(member, provider, fallback_rate(rate, self.link.participants), now)

    def _lease(self, member: str, provider: str) -> _Lease:
        lease = self._leases.get((member, provider))
        if lease is None:
            lease = self._leases[(member, provider)] = _Lease()
        else:
            stale = time.monotonic() - HOLD
            while lease.tokens and lease.tokens[0] < stale:
                lease.tokens.popleft()  # unspent too long: now it could burst past the rate
        return lease

    def _ask(self, member: str, provider: str, lease: _Lease, rate: float) -> None:
        lease.pending = True
        if not self.link.spawn(self._refill(member, provider, lease, rate)):
            lease.pending = False

    async def _refill(self, member: str, provider: str, lease: _Lease, rate: float) -> None:
        size = burst(rate)
        args: list[str | int | float] = [repr(rate), repr(size), rate_lease(rate, size), AHEAD]
        key = self.key(member, provider)
        try:
            reply = await self.link.call(lambda: self._reserve(keys=[key], args=args))
        finally:
            lease.pending = False
        if reply is None:
            return
        granted, ms = int(reply[0]), int(reply[1])
        mono = time.monotonic()
        if granted:
            first = mono + ms / 1000.0
            lease.tokens.extend(first + k / rate for k in range(granted))
            lease.size = granted
            if self.on_ready is not None:
                self.on_ready()
        # Nothing granted: the over-rate hint tells the dispatcher when to look again.
        lease.next_at = 0.0 if granted else mono + ms / 1000.0
