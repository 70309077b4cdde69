"""Prometheus metrics (``GET /metrics``), fed by the delivery-log event stream.

Counters and histograms move with each delivery record; gauges that describe
state (member health, connections, queue depth and age) are read at scrape
time. Every name is prefixed ``smtplb_``; labels are ``pool`` and ``member``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from smtplb.observability.record import DeliveryRecord

OUTCOMES = ("delivered", "deferred", "bounced", "expired", "failover", "suppressed")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HEALTH_STATES = ("up", "half_open", "ejected", "down", "paused")
REPUTATION_STATES = ("ok", "throttled", "quarantined", "probation")
REPUTATION_EVENTS = ("quarantined", "throttled", "probation", "reputation_ok")


class _Link(Protocol):
    @property
    def up(self) -> bool: ...

    @property
    def shared(self) -> bool: ...


class Metrics:
    def __init__(self) -> None:
        self._children: dict[tuple[Any, ...], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "smtplb_messages",
            "Recipient delivery events by outcome",
            ["pool", "member", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "smtplb_delivery_latency_seconds",
            "Upstream transaction time, connect included",
            ["pool", "member"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.variant_messages = Counter(
            "smtplb_experiment_messages",
            "Recipient delivery events of an experiment's messages, by variant and outcome",
            ["pool", "variant", "outcome"],
            registry=r,
        )
        self.received = Counter(
            "smtplb_received_recipients",
            "Recipients accepted into the spool",
            ["pool"],
            registry=r,
        )
        self.intake = Counter(
            "smtplb_intake_messages",
            "Messages offered at intake by listener and reply class",
            ["listener", "reply_class"],
            registry=r,
        )
        self.compliance = Counter(
            "smtplb_compliance_problems",
            "Messages failing a compliance check, by check and action (warn | reject)",
            ["check", "action"],
            registry=r,
        )
        self.member_events = Counter(
            "smtplb_member_state_changes",
            "Member state changes",
            ["pool", "member", "event"],
            registry=r,
        )
        self.health = Gauge(
            "smtplb_member_health",
            "1 for the member's current state",
            ["pool", "member", "state"],
            registry=r,
        )
        self.up = Gauge(
            "smtplb_member_up", "1 if the member takes traffic", ["pool", "member"], registry=r
        )
        self.active = Gauge(
            "smtplb_member_active_connections",
            "Deliveries in progress",
            ["pool", "member"],
            registry=r,
        )
        self.idle = Gauge(
            "smtplb_member_idle_connections",
            "Open idle upstream connections",
            ["pool", "member"],
            registry=r,
        )
        self.weight = Gauge(
            "smtplb_member_effective_weight",
            "Weight × slow-start ramp",
            ["pool", "member"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "smtplb_queue_depth", "Recipients in the spool by state", ["state"], registry=r
        )
        self.queue_age = Gauge(
            "smtplb_queue_oldest_age_seconds",
            "Age of the oldest recipient by state",
            ["state"],
            registry=r,
        )
        self.waiting = Gauge(
            "smtplb_pool_waiting_jobs", "Jobs waiting in a pool's lanes", ["pool"], registry=r
        )
        self.suspensions = Counter(
            "smtplb_provider_suspensions",
            "Response rules fired that suspend or throttle a member for a provider",
            ["provider", "member", "rule"],
            registry=r,
        )
        self.rate_limited = Counter(
            "smtplb_provider_rate_limited",
            "Times a member was passed over for being at its rate for a provider",
            ["provider", "member"],
            registry=r,
        )
        self.concurrency = Gauge(
            "smtplb_provider_concurrency",
            "Connections a member may open to a provider now (adaptive window, limits)",
            ["provider", "member"],
            registry=r,
        )
        self.provider_active = Gauge(
            "smtplb_provider_active_connections",
            "Deliveries in progress from a member to a provider",
            ["provider", "member"],
            registry=r,
        )
        self.suspended = Gauge(
            "smtplb_provider_suspended",
            "1 while a member (or, with member='', every member) is suspended for a provider",
            ["provider", "member"],
            registry=r,
        )
        self._rate_limited_seen: dict[tuple[str, str], int] = {}
        self.reputation_state = Gauge(
            "smtplb_member_reputation_state",
            "1 for the reputation state of a member x provider (provider '*': the member)",
            ["member", "provider", "state"],
            registry=r,
        )
        self.reputation_rate = Gauge(
            "smtplb_member_reputation_rate",
            "Rates over [reputation] window: hard_bounce, policy_block, deferred per attempt, "
            "complaint per delivery",
            ["member", "provider", "kind"],
            registry=r,
        )
        self.complaints = Counter(
            "smtplb_complaints", "Complaints received (ARF or JSON)", ["member"], registry=r
        )

        self.complaint_budget = Gauge(
            "smtplb_complaint_budget",
            "Sender domains' complaint budget: 1 for the state each is in (ok, throttled, stopped)",
            ["domain", "state"],
            registry=r,
        )

        self.warmup_cap = Gauge(
            "smtplb_warmup_cap",
            "Warm-up cap of the day per member and provider (absent: warm)",
            ["pool", "member", "provider"],
            registry=r,
        )
        self.warmup_sent = Gauge(
            "smtplb_warmup_sent",
            "Messages taken today under the warm-up cap per member and provider",
            ["pool", "member", "provider"],
            registry=r,
        )

    def on_record(self, record: DeliveryRecord) -> None:
        event = record.event
        pool = record.pool or ""
        member = record.member or ""
        if event in OUTCOMES:
            self._child(self.messages, pool, member, event).inc()
            variant = record.variant
            if variant is not None:
                self._child(self.variant_messages, pool, variant, event).inc()
            latency = record.latency_ms
            if event != "failover" and member and latency is not None:
                self._child(self.latency, pool, member).observe(latency / 1000)
        elif event == "received":
            self._child(self.received, pool).inc()
        elif event.startswith("member_") or event in REPUTATION_EVENTS:
            self._child(self.member_events, pool, member, event).inc()
        elif event == "suspended":
            self._child(self.suspensions, record.provider or "", member, record.rule or "").inc()
        elif event == "complaint":
            self._child(self.complaints, member).inc()
        elif event == "complaint_budget" and record.sender_domain:
            for s in ("ok", "throttled", "stopped"):
                self.complaint_budget.labels(record.sender_domain, s).set(s == record.state)

    def count_intake(self, listener: str, reply_class: str) -> None:
        """One message offered at intake (``smtp``/``http``) and its reply class."""
        self._child(self.intake, listener, reply_class).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: this runs for every delivery event."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def set_member(
        self, pool: str, member: str, state: str, active: int, idle: int, weight: float
    ) -> None:
        for s in HEALTH_STATES:
            self.health.labels(pool, member, s).set(1 if s == state else 0)
        self.up.labels(pool, member).set(1 if state in ("up", "half_open") else 0)
        self.active.labels(pool, member).set(active)
        self.idle.labels(pool, member).set(idle)
        self.weight.labels(pool, member).set(weight)

    def set_reputation(self, member: str, view: dict[str, Any]) -> None:
        """From a member's ``reputation`` view (:meth:`ReputationBook.view`)."""
        rows = [("*", view), *view.get("providers", {}).items()]
        for provider, p in rows:
            for state in REPUTATION_STATES:
                self.reputation_state.labels(member, provider, state).set(p["state"] == state)
            for kind in ("hard_bounce", "policy_block", "deferred", "complaint"):
                rate = p.get(f"{kind}_rate")
                if rate is not None:
                    self.reputation_rate.labels(member, provider, kind).set(rate)

    def set_cluster(self, link: _Link) -> None:
        """Read ``link`` at scrape time: Redis up or not, and the fallback with it."""
        up = Gauge(
            "smtplb_cluster_redis_up",
            "1 while the cluster's Redis answers (shared limits), 0 while it does not",
            registry=self.registry,
        )
        up.set_function(lambda: 1.0 if link.up else 0.0)
        fallback = Gauge(
            "smtplb_cluster_fallback",
            "1 while shared limits fall back to this node's conservative local share",
            registry=self.registry,
        )
        fallback.set_function(lambda: 0.0 if link.shared else 1.0)

    def set_warmup(self, pool: str, member: str, provider: str, cap: int | None, sent: int) -> None:
        if cap is None:
            with contextlib.suppress(KeyError):
                self.warmup_cap.remove(pool, member, provider)
        else:
            self.warmup_cap.labels(pool, member, provider).set(cap)
        self.warmup_sent.labels(pool, member, provider).set(sent)

    def set_queue(self, depth: dict[str, int], ages: dict[str, float]) -> None:
        for state, count in depth.items():
            self.queue_depth.labels(state).set(count)
        for state, age in ages.items():
            self.queue_age.labels(state).set(age)

    def set_waiting(self, pools: Iterable[tuple[str, int]]) -> None:
        for pool, waiting in pools:
            self.waiting.labels(pool).set(waiting)

    def set_providers(self, providers: Iterable[dict[str, Any]]) -> None:
        """Per provider and member, from the shaping snapshot (``provider_views``)."""
        for p in providers:
            name = p["name"]
            self.suspended.labels(name, "").set(1 if p.get("suspended") else 0)
            for lane in p["members"]:
                member = lane["member"]
                self.concurrency.labels(name, member).set(lane["concurrency"])
                self.provider_active.labels(name, member).set(lane["active"])
                self.suspended.labels(name, member).set(1 if lane["suspended"] else 0)
                total = lane["rate_limited"]
                seen = self._rate_limited_seen.get((name, member), 0)
                if total > seen:
                    self.rate_limited.labels(name, member).inc(total - seen)
                self._rate_limited_seen[(name, member)] = total

    def render(self) -> bytes:
        return generate_latest(self.registry)
