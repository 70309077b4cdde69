"""Member health from real traffic (passive checks): a small state machine.

Theory of operation (Envoy outlier detection + a circuit breaker):

- ``up``: traffic flows. Each local-origin failure (refused, timeout, TLS,
  dropped) adds to a consecutive count; a success resets it. At ``fall``
  consecutive failures the member is *ejected*.
- ``ejected``: no traffic until ``base_ejection × ejections`` (capped at
  ``max_ejection``) has passed; then ``half_open``.
- ``half_open``: at most ``probe_limit`` deliveries at once go through as
  probes. A success closes the circuit (``up``); a failure ejects again, for
  longer. The ejection count decays after a member stays up for a while.

Time is injected: every method takes ``now`` (monotonic seconds).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class HealthState(enum.Enum):
    UP = "up"
    EJECTED = "ejected"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class Transition:
    """A state change worth a log record (``member_down``, ``member_up``, …)."""

    event: str
    reason: str


class PassiveHealth:
    def __init__(
        self,
        *,
        fall: int = 3,
        base_ejection: float = 10.0,
        max_ejection: float = 300.0,
        probe_limit: int = 1,
    ) -> None:
        self.fall = fall
        self.base_ejection = base_ejection
        self.max_ejection = max_ejection
        self.probe_limit = probe_limit
        self.state = HealthState.UP
        self.consecutive_failures = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.up_since = 0.0
        self.probes = 0
        self.last_reason = ""

    def _refresh(self, now: float) -> None:
        if self.state is HealthState.EJECTED and now >= self.ejected_until:
            self.state = HealthState.HALF_OPEN
            self.probes = 0
        elif (
            self.state is HealthState.UP
            and self.ejections
            and now - self.up_since >= self.max_ejection
        ):
            self.ejections = 0  # stayed healthy long enough: forgive earlier ejections

    def state_at(self, now: float) -> HealthState:
        """The state at ``now`` (an ejection that has run out reads as half-open)."""
        if self.state is HealthState.EJECTED and now >= self.ejected_until:
            return HealthState.HALF_OPEN
        return self.state

    def skip_reason(self, now: float) -> str | None:
        """Why no new delivery may start on this member at ``now``; None: it may.

        A query: it changes nothing (the ejection runs out in :meth:`started`)."""
        if self.state is HealthState.EJECTED and now < self.ejected_until:
            return f"ejected for {self.ejected_until - now:.3g}s more ({self.last_reason})"
        if self.state is HealthState.HALF_OPEN and self.probes >= self.probe_limit:
            return "half-open: its probe delivery is under way"
        return None

    def available(self, now: float) -> bool:
        """May a new delivery start on this member now?"""
        return self.skip_reason(now) is None

    @property
    def suspect(self) -> bool:
        """A failure since the last success, or not fully up: one delivery at a time."""
        return bool(self.consecutive_failures) or self.state is not HealthState.UP

    def started(self, now: float) -> None:
        """A delivery starts (counts as a probe while half-open)."""
        self._refresh(now)
        if self.state is HealthState.HALF_OPEN:
            self.probes += 1

    def success(self, now: float) -> Transition | None:
        self.consecutive_failures = 0
        if self.state is not HealthState.UP:
            self.state = HealthState.UP
            self.up_since = now
            self.probes = 0
            return Transition("member_up", "delivery succeeded")
        return None

    @property
    def ejected(self) -> bool:
        return self.state is not HealthState.UP

    def failure(self, now: float, reason: str, *, may_eject: bool = True) -> Transition | None:
        """A local-origin failure. ``may_eject`` False: the pool already has its
        maximum share ejected, so the member stays in (its count starts anew)."""
        self._refresh(now)
        self.last_reason = reason
        self.consecutive_failures += 1
        if self.state is HealthState.HALF_OPEN or (
            self.state is HealthState.UP and self.consecutive_failures >= self.fall
        ):
            if self.state is HealthState.UP and not may_eject:
                self.spare()
                return None
            return self._eject(now, reason)
        return None

    def active_check_passed(self, now: float) -> None:
        """A good active check ends an ejection early: let probes through."""
        if self.state is HealthState.EJECTED:
            self.state = HealthState.HALF_OPEN
            self.probes = 0

    def reset(self, now: float) -> None:
        """The member is really back (active checks rose): forget earlier ejections."""
        self.state = HealthState.UP
        self.consecutive_failures = 0
        self.ejections = 0
        self.probes = 0
        self.up_since = now

    def spare(self) -> None:
        """An ejection was refused (too much of the pool already out): start counting anew."""
        self.consecutive_failures = 0

    def _eject(self, now: float, reason: str) -> Transition:
        self.ejections += 1
        duration = min(self.max_ejection, self.base_ejection * self.ejections)
        self.state = HealthState.EJECTED
        self.ejected_until = now + duration
        self.probes = 0
        return Transition(
            "member_ejected",
            f"{self.consecutive_failures} consecutive failures ({reason}); "
            f"ejected for {duration:g}s",
        )

    def __repr__(self) -> str:
        return (
            f"PassiveHealth({self.state.value}, failures={self.consecutive_failures}, "
            f"ejections={self.ejections})"
        )


def may_eject(ejected: int, members: int, max_percent: int) -> bool:
    """Envoy's max ejection percent: may one more member of a pool of ``members``,
    ``ejected`` of them out already, be ejected? At least one always may."""
    return ejected < max(1, members * max_percent // 100)


class ActiveHealth:
    """Active checks with HAProxy meanings: ``rise`` consecutive good checks bring
    a down member up, ``fall`` consecutive bad ones take an up member down.
    A member starts up. While counting towards a change it is checked faster."""

    def __init__(self, *, rise: int = 2, fall: int = 3) -> None:
        self.rise = rise
        self.fall = fall
        self.up = True
        self.streak = 0  # consecutive results that argue for a change of state
        self.last_reason = ""
        self.last_failure = ""  # why the last failed check failed
        self.checks = 0

    @property
    def changing(self) -> bool:
        return self.streak > 0

    def observe(self, ok: bool, reason: str = "") -> Transition | None:
        self.checks += 1
        self.last_reason = reason
        if not ok:
            self.last_failure = reason
        if ok == self.up:
            self.streak = 0
            return None
        self.streak += 1
        if self.up and self.streak >= self.fall:
            self.up, self.streak = False, 0
            return Transition("member_down", f"{self.fall} failed health checks ({reason})")
        if not self.up and self.streak >= self.rise:
            self.up, self.streak = True, 0
            return Transition("member_up", f"{self.rise} good health checks")
        return None

    def adopt(self, up: bool, reason: str) -> Transition | None:
        """Take the verdict of the node's one checker (another worker runs the checks
        and publishes it): no counting here, the checker already counted."""
        self.last_reason = reason
        self.streak = 0
        if up == self.up:
            return None
        self.up = up
        if up:
            return Transition("member_up", f"the node's health checks ({reason})")
        self.last_failure = reason
        return Transition("member_down", f"the node's health checks ({reason})")

    def __repr__(self) -> str:
        return f"ActiveHealth({'up' if self.up else 'down'}, streak={self.streak})"
