"""Live numbers for the dashboard: per-second outcome counts over the last
minutes, per-member throughput and latency, and the recent errors.

Fed by the delivery-log event stream; memory is bounded by the window.
Recent errors carry member, code and the upstream's reply text, which often
names the recipient (``<victim@example.org>: Recipient address rejected``):
views served without a valid API key pass through :func:`redacted`.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smtplb.observability.record import DeliveryRecord

SERIES = ("received", "delivered", "deferred", "bounced", "failover")

REDACTED = "[address]"
# Anything address-like: a local part (atom-ish or quoted) and/or a domain (name
# or literal) around "@" or its URL escape "%40". Deliberately loose: a lone
# "@word" or "word@" goes too; a reply naming a user without "@" is not caught.
_LOCAL = r'(?:"[^"\r\n]*"|[^\s<>()\[\]{},;:"\'@]+)'
_DOMAIN = r"(?:\[[^\]\s]*\]|[^\s<>()\[\]{},;:\"'@]+)"
_ADDRESS_LIKE = re.compile(rf"{_LOCAL}?(?:@|%40){_DOMAIN}|{_LOCAL}(?:@|%40)", re.IGNORECASE)


def redact_addresses(text: str) -> str:
    """``<victim@leak.test>: rejected`` → ``<[address]>: rejected``."""
    return _ADDRESS_LIKE.sub(REDACTED, text) if ("@" in text or "%" in text) else text


def redacted(value: Any) -> Any:
    """A JSON-like value with every string's addresses redacted (keys are left alone)."""
    if isinstance(value, str):
        return redact_addresses(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


@dataclass(slots=True)
class _Bucket:
    second: int
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class MemberLive:
    delivered: deque[float] = field(default_factory=deque)  # timestamps, last 60 s
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=500))


class LiveStats:
    def __init__(
        self, *, window: int = 600, errors: int = 50, clock: Callable[[], float] = time.time
    ) -> None:
        self.window = window
        self._clock = clock
        self._buckets: deque[_Bucket] = deque()
        self.errors: deque[dict[str, Any]] = deque(maxlen=errors)
        self.members: dict[str, MemberLive] = {}
        self.totals: dict[str, int] = dict.fromkeys(SERIES, 0)

    def on_record(self, record: DeliveryRecord) -> None:
        event = record.event
        now = record.ts or self._clock()
        if event in SERIES:
            self.totals[event] += 1
            bucket = self._bucket(int(now))
            bucket.counts[event] = bucket.counts.get(event, 0) + 1
        member = record.member
        if event == "delivered" and member:
            live = self.members.get(member)
            if live is None:  # (setdefault would build a MemberLive per delivery)
                live = self.members[member] = MemberLive()
            live.delivered.append(now)
            if record.latency_ms is not None:
                live.latencies.append(record.latency_ms)
        if event in ("deferred", "bounced", "failover", "expired") or event.startswith("member_"):
            self.errors.appendleft(
                {
                    "ts": now,
                    "event": event,
                    "pool": record.pool,
                    "member": member,
                    "code": record.code,
                    "enhanced_code": record.enhanced_code,
                    "response": (record.response or "")[:200],
                }
            )

    def _bucket(self, second: int) -> _Bucket:
        buckets = self._buckets
        if buckets and buckets[-1].second == second:  # most events: this second's
            return buckets[-1]
        if not self._buckets or self._buckets[-1].second < second:
            self._buckets.append(_Bucket(second))
        while self._buckets and self._buckets[0].second < second - self.window:
            self._buckets.popleft()
        return self._buckets[-1] if self._buckets[-1].second == second else self._find(second)

    def _find(self, second: int) -> _Bucket:
        for bucket in reversed(self._buckets):
            if bucket.second == second:
                return bucket
        return _Bucket(second)  # older than the window: counted in totals only

    def series(self, step: int = 5, span: int = 300) -> dict[str, Any]:
        """Counts per ``step`` seconds over the last ``span`` seconds, oldest first."""
        now = int(self._clock())
        start = now - span + 1
        slots = span // step
        out = {name: [0] * slots for name in SERIES}
        for bucket in self._buckets:
            if bucket.second < start:
                continue
            i = min((bucket.second - start) // step, slots - 1)
            for name, count in bucket.counts.items():
                out[name][i] += count
        return {"step": step, "end": now, **out}

    def member_rates(self, name: str) -> dict[str, float | None]:
        live = self.members.get(name)
        if live is None:
            return {"per_minute": 0, "latency_p50_ms": None, "latency_p95_ms": None}
        cutoff = self._clock() - 60
        while live.delivered and live.delivered[0] < cutoff:
            live.delivered.popleft()
        lat = sorted(live.latencies)
        return {
            "per_minute": len(live.delivered),
            "latency_p50_ms": lat[len(lat) // 2] if lat else None,
            "latency_p95_ms": lat[min(len(lat) - 1, int(len(lat) * 0.95))] if lat else None,
        }
