"""The reputation book of a node: per member and member × provider, the rolling
counts and the standing (:mod:`smtplb.reputation.standing`), fed by delivery
outcomes and complaints, read by the balancing filters.

It is also a pool's eligibility filter (:meth:`ReputationBook.skip_reason`:
quarantined members are excluded for the job's provider) and its share
(:meth:`ReputationBook.share`: throttled and probation members get less).
State changes go to ``on_change`` (the dispatcher logs them as events), and
the whole book is saved to and loaded from the reputation
:class:`~smtplb.reputation.state.State` so that a restart keeps it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from smtplb.clock import Clock
from smtplb.config_sections import ReputationConfig
from smtplb.reputation.standing import (
    SHARE,
    Counts,
    Outcome,
    Reputation,
    Standing,
    Thresholds,
    Window,
    after_attempt,
    next_standing,
)

MEMBER_WIDE = "*"
RELEASED = "released by the operator"  # a standing's reason: the counts start again
_OK_STANDING = Standing()  # of a key never judged; frozen, so one serves all (per delivery)

_PROVIDERS = {
    "gmail.com": "gmail",
    "googlemail.com": "gmail",
    "yahoo.com": "yahoo",
    "ymail.com": "yahoo",
    "aol.com": "yahoo",
    "outlook.com": "microsoft",
    "hotmail.com": "microsoft",
    "live.com": "microsoft",
    "msn.com": "microsoft",
    "icloud.com": "apple",
    "me.com": "apple",
    "mac.com": "apple",
}


def provider_of(domain: str) -> str:
    """The provider a recipient domain belongs to, by name only ("other" when
    unknown). The one function to swap for provider recognition by MX."""
    return _PROVIDERS.get(domain.lower(), "other")


class SharedCounts(Protocol):
    """The seam to a cluster's counts and standings (:mod:`smtplb.cluster.reputation`).
    While ``active``, the book judges on the cluster's counts and a change of standing
    is proposed (the backend tells the winner's change to every node and
    calls ``on_change`` once); else the book decides from its own window, as alone."""

    @property
    def active(self) -> bool: ...

    def add(self, key: tuple[str, str], outcome: Outcome, now: float) -> None: ...

    def counts(self, key: tuple[str, str], now: float) -> Counts | None: ...

    def propose(self, change: Change) -> None: ...

    def reset(self, member: str, provider: str | None, since: float) -> None: ...


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _Request(Protocol):
    @property
    def recipient_domain(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Change:
    member: str
    provider: str  # MEMBER_WIDE for the whole member
    old: Reputation
    new: Standing


class ReputationBook:
    def __init__(
        self,
        config: ReputationConfig,
        clock: Clock,
        provider_of: Callable[[str], str] = provider_of,
    ) -> None:
        self.thresholds = Thresholds.from_config(config)
        self.window_length = float(config.window)
        self.clock = clock
        self.provider_of = provider_of
        self.on_change: Callable[[Change], None] | None = None
        # (member, provider) and (member, MEMBER_WIDE): the member's mail to all providers
        self._windows: dict[tuple[str, str], Window] = {}
        self._providers: dict[str, set[str]] = {}
        self._standings: dict[tuple[str, str], Standing] = {}
        self.dirty = False
        self.shared: SharedCounts | None = None

    def reconfigure(self, config: ReputationConfig) -> None:
        self.thresholds = Thresholds.from_config(config)

    # -- outcomes ------------------------------------------------------------------

    def record(self, member: str, domain: str, outcome: Outcome) -> None:
        """One outcome of ``member`` for a recipient at ``domain``."""
        now = self.clock.wall()
        provider = self.provider_of(domain)
        key = (member, provider)
        for k in (key, (member, MEMBER_WIDE)):
            window = self._windows.get(k)
            if window is None:
                window = self._windows[k] = Window(self.window_length)
            window.add(outcome, now)
            if self.shared is not None:
                self.shared.add(k, outcome, now)
        providers = self._providers.setdefault(member, set())
        providers.add(provider)
        self.dirty = True
        if outcome is not Outcome.COMPLAINT:
            for k in (key, (member, MEMBER_WIDE)):
                current = self._standings.get(k)
                if current is not None:
                    self._standings[k] = after_attempt(current)
        self._judge(key, now)
        if len(providers) > 1:  # one provider: its own judgement says it all
            self._judge((member, MEMBER_WIDE), now)

    def counts(self, member: str, provider: str, now: float | None = None) -> Counts:
        """Counts over the window (``MEMBER_WIDE``: to every provider); do not change them."""
        now = self.clock.wall() if now is None else now
        if self.shared is not None and self.shared.active:
            shared = self.shared.counts((member, provider), now)
            if shared is not None:
                return shared
        window = self._windows.get((member, provider))
        if window is None:
            return Counts()
        return window.total(now)

    def judge(self, member: str, provider: str) -> None:
        """Judge (member, provider) again: the cluster's counts changed."""
        if provider != MEMBER_WIDE:
            self._providers.setdefault(member, set()).add(provider)
        elif len(self._providers.get(member, ())) <= 1:
            return  # one provider: its own judgement says it all
        self._judge((member, provider), self.clock.wall())

    def _judge(self, key: tuple[str, str], now: float) -> Standing:
        old = self._standings.get(key, _OK_STANDING)
        new = next_standing(old, self.counts(*key, now), self.thresholds, now)
        if new is not old:
            self._set(key, old, new)
        return new

    def _set(self, key: tuple[str, str], old: Standing, new: Standing) -> None:
        self.adopt(key, new)
        if new.state is old.state:
            return
        change = Change(key[0], key[1], old.state, new)
        if self.shared is not None and self.shared.active:
            self.shared.propose(change)  # the cluster's one winner tells on_change
        elif self.on_change is not None:
            self.on_change(change)

    def adopt(self, key: tuple[str, str], new: Standing) -> None:
        """``key`` stands at ``new`` (decided here, or by another node): no event."""
        old = self._standings.get(key, _OK_STANDING)
        self._standings[key] = new
        self.dirty = True
        if key[1] != MEMBER_WIDE:  # (shown in view() even without traffic here)
            self._providers.setdefault(key[0], set()).add(key[1])
        if new.state is Reputation.PROBATION and old.state is not Reputation.PROBATION:
            # Probation judges what the member does from now on.
            self._start_again(key[0], None if key[1] == MEMBER_WIDE else key[1], new.since)
        elif new.reason == RELEASED and old.state is not Reputation.OK:
            self._start_again(key[0], None, new.since)

    def _start_again(self, member: str, provider: str | None, since: float) -> None:
        """The counts of (member, provider) (``None``: of every provider) start again."""
        for k in self._windows:
            if k[0] == member and provider in (None, k[1]):
                self._windows[k].clear()
        if self.shared is not None:
            self.shared.reset(member, provider, since)

    def standing(self, member: str, provider: str) -> Standing:
        """The standing now (a quarantine whose cool-down is over becomes probation)."""
        key = (member, provider)
        current = self._standings.get(key)
        if current is None:
            return _OK_STANDING
        if current.state is Reputation.QUARANTINED and self.clock.wall() >= current.until:
            return self._judge(key, self.clock.wall())
        return current

    # -- the balancing side ----------------------------------------------------------

    def skip_reason(self, member: _Named, request: _Request, now: float) -> str | None:
        """Eligibility filter: a quarantined member takes no job for that provider."""
        if not self._standings:
            return None
        for provider in (MEMBER_WIDE, self.provider_of(request.recipient_domain)):
            s = self.standing(member.name, provider)
            if s.state is Reputation.QUARANTINED:
                scope = "" if provider == MEMBER_WIDE else f" for {provider}"
                left = max(0.0, s.until - self.clock.wall())
                return f"quarantined{scope} ({s.reason}; {left:.0f}s to probation)"
        return None

    def share(self, member: _Named, request: _Request, now: float) -> float:
        """The share of its weight a member keeps: half when throttled, a tenth on probation."""
        if not self._standings:
            return 1.0
        member_wide = self.standing(member.name, MEMBER_WIDE).state
        provider = self.standing(member.name, self.provider_of(request.recipient_domain)).state
        return min(SHARE[member_wide], SHARE[provider])

    def __repr__(self) -> str:
        bad = {
            f"{m}/{p}": s.state.value
            for (m, p), s in self._standings.items()
            if s.state.value != "ok"
        }
        return f"ReputationBook({len(self._windows)} counters, {bad or 'all ok'})"

    # -- operators -------------------------------------------------------------------

    def quarantine(self, member: str, reason: str = "by the operator") -> Standing:
        now = self.clock.wall()
        key = (member, MEMBER_WIDE)
        old = self._standings.get(key, _OK_STANDING)
        new = Standing(Reputation.QUARANTINED, now, now + self.thresholds.quarantine, 0, reason)
        self._set(key, old, new)
        return new

    def release(self, member: str) -> None:
        """Every standing of ``member`` back to ok, its counts started again."""
        now = self.clock.wall()
        for key in [k for k in self._standings if k[0] == member]:
            old = self._standings[key]
            if old.state is not Reputation.OK:
                self._set(key, old, Standing(Reputation.OK, now, reason=RELEASED))
        self._start_again(member, None, now)

    # -- views -----------------------------------------------------------------------

    def view(self, member: str) -> dict[str, Any]:
        """``reputation`` of a member in /api/v1/members (SPEC §3.4)."""
        now = self.clock.wall()
        member_wide = self.standing(member, MEMBER_WIDE)
        worst = member_wide
        providers: dict[str, Any] = {}
        for provider in sorted(self._providers.get(member, ())):
            s = self.standing(member, provider)
            counts = self.counts(member, provider, now)
            providers[provider] = {
                "state": s.state.value,
                "attempts": counts.attempts,
                **{f"{k}_rate": round(v, 5) for k, v in counts.rates().items()},
                **_reason(s),
            }
            if _ORDER[s.state] > _ORDER[worst.state]:
                worst = s
        return {"state": worst.state.value, **_reason(worst), "providers": providers}

    # -- persistence -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "saved_at": self.clock.wall(),
            "standings": [
                [m, p, s.state.value, s.since, s.until, s.probation_left, s.reason]
                for (m, p), s in self._standings.items()
            ],
            "windows": [
                [m, p, {str(k): _counts_row(c) for k, c in w.slices.items()}]
                for (m, p), w in self._windows.items()
            ],
        }

    def load(self, snapshot: dict[str, Any]) -> None:
        for m, p, state, since, until, left, reason in snapshot.get("standings", []):
            self._standings[(m, p)] = Standing(Reputation(state), since, until, left, reason)
        for m, p, slices in snapshot.get("windows", []):
            window = Window(self.window_length)
            window.load({int(k): Counts(*row) for k, row in slices.items()})
            self._windows[(m, p)] = window
            if p != MEMBER_WIDE:
                self._providers.setdefault(m, set()).add(p)


_ORDER = {
    Reputation.OK: 0,
    Reputation.PROBATION: 1,
    Reputation.THROTTLED: 2,
    Reputation.QUARANTINED: 3,
}


def _reason(s: Standing) -> dict[str, Any]:
    if s.state is Reputation.OK:
        return {}
    out: dict[str, Any] = {"reason": s.reason, "since": s.since}
    if s.state is Reputation.QUARANTINED:
        out["until"] = s.until
    if s.state is Reputation.PROBATION:
        out["probation_left"] = s.probation_left
    return out


def _counts_row(c: Counts) -> list[int]:
    return [c.delivered, c.deferred, c.hard_bounce, c.policy_block, c.bounced, c.complaint]


__all__ = ["MEMBER_WIDE", "Change", "ReputationBook", "SharedCounts", "provider_of"]
