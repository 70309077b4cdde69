"""The complaint budget per sender domain (SPEC §2.5, ``[compliance] complaint_budget``).

Gmail and Yahoo want a sender's spam-complaint rate under 0.1 % and never at 0.3 %.
Per sender domain (the envelope sender's, as routes' ``sender_domain``), over
``[reputation] window``: complaints about its marketing and bulk mail / its marketing
and bulk recipients delivered. With at least ``[reputation] min_volume`` delivered:

- ``ok`` under ``[compliance] complaint_throttle`` (default 0.1 %);
- ``throttled`` from there: the domain's marketing and bulk mail goes at half share —
  every second such job waits for a retry instead of going now;
- ``stopped`` from ``complaint_stop`` (default 0.25 %): all of it waits (deferred,
  no attempt counted, never bounced) until the rate falls under the stop point as the
  window rolls, or an operator lifts the domain. The stop point sits below 0.3 % because
  complaints come hours or days after delivery: what was already sent keeps adding to
  the rate the providers see after we stop.

Transactional mail is never held. :func:`budget_state` and :func:`holds` are the pure
decisions; :class:`ComplaintBudget` keeps the counts (a :class:`BudgetStore`, shared by
the workers), caches each domain's state for ``refresh`` seconds, and reports a change
once (``on_change``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smtplb.clock import Clock
from smtplb.config import Config
from smtplb.reputation.complaint_store import BudgetStore

OK, THROTTLED, STOPPED = "ok", "throttled", "stopped"
STATES = (OK, THROTTLED, STOPPED)
GUARDED_CLASSES = frozenset({"marketing", "bulk"})
BUCKETS = 24  # a window is counted in this many buckets: it rolls a bucket at a time


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    window: float = 86400.0
    min_volume: int = 50
    throttle: float = 0.001
    stop: float = 0.0025

    @classmethod
    def of(cls, config: Config) -> BudgetPolicy:
        """From ``[compliance]`` (the thresholds) and ``[reputation]`` (window, volume)."""
        return cls(
            window=float(config.reputation.window),
            min_volume=config.reputation.min_volume,
            throttle=config.compliance.complaint_throttle,
            stop=config.compliance.complaint_stop,
        )

    @property
    def bucket(self) -> float:
        """Seconds per bucket (an hour for the default day)."""
        return max(1.0, self.window / BUCKETS)


def budget_state(delivered: int, complaints: int, policy: BudgetPolicy) -> str:
    """ok | throttled | stopped for a domain's counts over the window."""
    if delivered < policy.min_volume or delivered <= 0:
        return OK
    rate = complaints / delivered
    if rate >= policy.stop:
        return STOPPED
    if rate >= policy.throttle:
        return THROTTLED
    return OK


def holds(state: str, content_class: str, turn: int) -> bool:
    """Whether a job of ``content_class`` from a domain in ``state`` waits; ``turn``
    counts the domain's guarded jobs (a throttled domain sends every second one)."""
    if content_class not in GUARDED_CLASSES or state == OK:
        return False
    return state == STOPPED or turn % 2 == 1


def rate_text(delivered: int, complaints: int) -> str:
    rate = complaints / delivered if delivered else 0.0
    return f"{100 * rate:.2f} % complaints ({complaints:,} of {delivered:,} delivered)"


@dataclass(frozen=True, slots=True)
class DomainBudget:
    """One sender domain's standing, for the API, the dashboard and the change event."""

    domain: str
    state: str
    delivered: int
    complaints: int
    lifted_until: float = 0.0

    @property
    def rate(self) -> float:
        return self.complaints / self.delivered if self.delivered else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "domain": self.domain,
            "state": self.state,
            "delivered": self.delivered,
            "complaints": self.complaints,
            "rate": round(self.rate, 6),
            "lifted_until": self.lifted_until or None,
        }


class ComplaintBudget:
    """The counts and states of every sender domain, for one worker."""

    def __init__(
        self,
        store: BudgetStore,
        policy: BudgetPolicy,
        clock: Clock,
        on_change: Callable[[DomainBudget], None] | None = None,
        refresh: float = 2.0,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.on_change = on_change
        self.refresh = refresh
        self._pending: dict[str, int] = {}  # delivered, not yet written
        self._flushed_at = clock.monotonic()
        self._read_at = float("-inf")
        self._standing: dict[str, DomainBudget] = {}
        self._turns: dict[str, int] = {}
        self._pruned = 0  # the first bucket of the window when it was last pruned

    # -- counting ----------------------------------------------------------------------

    def delivered(self, sender_domain: str, content_class: str, n: int = 1) -> None:
        """``n`` recipients of a domain's message were delivered (written within
        ``refresh`` seconds, in one transaction with the others)."""
        if sender_domain and content_class in GUARDED_CLASSES and n > 0:
            self._pending[sender_domain] = self._pending.get(sender_domain, 0) + n
        if self.clock.monotonic() - self._flushed_at >= self.refresh:
            self.flush()

    def complaint(self, sender_domain: str, content_class: str | None) -> None:
        """A complaint about a domain's message; an unmatched one (class unknown) counts."""
        if not sender_domain or (
            content_class is not None and content_class not in GUARDED_CLASSES
        ):
            return
        self.store.add({sender_domain.lower(): (0, 1)}, self._bucket())
        self._read_at = float("-inf")  # decide again at the next look

    def flush(self) -> None:
        self._flushed_at = self.clock.monotonic()
        if self._pending:
            pending, self._pending = self._pending, {}
            self.store.add({d.lower(): (n, 0) for d, n in pending.items()}, self._bucket())

    def _bucket(self) -> int:
        return int(self.clock.wall() // self.policy.bucket)

    # -- deciding ----------------------------------------------------------------------

    def _since(self) -> int:
        return self._bucket() - BUCKETS + 1

    def standing(self) -> dict[str, DomainBudget]:
        """Every domain with counts in the window, read again every ``refresh`` s; a
        changed state is reported once for the node (the store's swap decides who)."""
        now = self.clock.monotonic()
        if now - self._read_at < self.refresh:
            return self._standing
        self._read_at = now
        self.flush()
        since = self._since()
        if since != self._pruned:  # a bucket left the window: forget it
            self._pruned = since
            self.store.prune(since)
        wall = self.clock.wall()
        lifts = {d: u for d, u in self.store.lifts().items() if u > wall}
        standing: dict[str, DomainBudget] = {}
        for domain, (delivered, complaints) in self.store.counts(since).items():
            state = OK if domain in lifts else budget_state(delivered, complaints, self.policy)
            standing[domain] = DomainBudget(
                domain, state, delivered, complaints, lifts.get(domain, 0.0)
            )
        for domain, was in self._standing.items():  # rolled out of the window entirely
            if domain not in standing and was.state != OK:
                standing[domain] = DomainBudget(domain, OK, 0, 0)
        for domain, current in standing.items():
            before = self._standing.get(domain)
            if (OK if before is None else before.state) != current.state:
                self._changed(current)
        self._standing = standing
        return standing

    def _changed(self, current: DomainBudget) -> None:
        """Report a change once for the node: the worker whose swap changes it."""
        swapped = self.store.swap_state(current.domain, current.state) != current.state
        if swapped and self.on_change is not None:
            self.on_change(current)

    def hold(self, sender_domain: str, content_class: str) -> str | None:
        """Why a job of this domain and class waits now, or None: it may go."""
        if content_class not in GUARDED_CLASSES or not sender_domain:
            return None
        current = self.standing().get(sender_domain.lower())
        if current is None or current.state == OK:
            return None
        turn = self._turns.get(current.domain, 0)
        self._turns[current.domain] = turn + 1
        if not holds(current.state, content_class, turn):
            return None
        what = "stopped" if current.state == STOPPED else "throttled to half share"
        return (
            f"complaint budget: {content_class} mail of {current.domain} {what},"
            f" {rate_text(current.delivered, current.complaints)}"
        )

    def retry_after(self) -> float:
        """How long a held job waits at least: until the window may have rolled a
        bucket, at most five minutes (a lift is seen by then)."""
        return min(self.policy.bucket, 300.0)

    def reconfigure(self, policy: BudgetPolicy) -> None:
        """New thresholds (a reload): every domain is decided again at the next look."""
        self.policy = policy
        self._read_at = float("-inf")

    def lift(self, domain: str, until: float) -> None:
        """An operator lets ``domain``'s mail go until ``until`` (wall time); 0 ends it."""
        self.store.lift(domain.lower(), until)
        self._read_at = float("-inf")

    def close(self) -> None:
        self.flush()
        self.store.close()

    def __repr__(self) -> str:
        held = sum(1 for d in self._standing.values() if d.state != OK)
        return f"ComplaintBudget({len(self._standing)} domains, {held} over budget)"


def compliance_view(config: Config, budget: ComplaintBudget | None) -> dict[str, Any]:
    """The complaint budget (``budget``: None when off) for the API: its thresholds
    and every sender domain in the window, the highest complaint rate first."""
    c = config.compliance
    domains = [] if budget is None else sorted(budget.standing().values(), key=lambda d: -d.rate)
    return {
        "complaint_budget": {
            "enabled": budget is not None,
            "throttle": c.complaint_throttle,
            "stop": c.complaint_stop,
            "window": float(config.reputation.window),
            "min_volume": config.reputation.min_volume,
            "domains": [d.to_json() for d in domains],
        },
        "list_unsubscribe": c.list_unsubscribe,
    }
