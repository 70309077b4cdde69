"""What the HTTP API may do to the node: the narrow interface it is written against.

The routes know nothing of the service's insides (spools, dispatcher, pools,
worker snapshots); they call these operations and turn the answers into JSON.
The running service implements it (``smtplb.service.Service``); a unit test
can give the app a small stand-in.

Views are plain JSON-ready dicts (members, pools, the dashboard overview) or
the spool's own view types (messages). Errors the API must tell apart are
answers, not exceptions: ``None`` for "no such member/message"; the one
exceptions are ``SpoolError`` from :meth:`Operations.inject` (the spool refused
the write: 503, retry later) and ``MessageRefused`` (a compliance check: 422).
"""

from __future__ import annotations

from typing import Any, Protocol

from smtplb.config import Config
from smtplb.model import Envelope, RecipientState
from smtplb.reputation.feedback import Feedback
from smtplb.reputation.state import State
from smtplb.spool.base import MessageView


class Operations(Protocol):
    @property
    def config(self) -> Config:
        """The running configuration (replaced by a reload)."""
        ...

    @property
    def reputation_state(self) -> State:
        """The suppression list (and reputation counters) of the node."""
        ...

    # -- intake ------------------------------------------------------------------

    @property
    def draining(self) -> bool: ...

    def drain(self) -> None:
        """Stop intake on the node (SMTP 421, /readyz 503); keep delivering."""

    def undrain(self) -> None:
        """Take mail again after :meth:`drain`."""

    async def inject(self, envelope: Envelope, content: bytes) -> str:
        """Queue a message; returns its queue id. Raises ``SpoolError``."""
        ...

    # -- views -----------------------------------------------------------------------

    async def metrics_text(self) -> bytes:
        """The Prometheus exposition for the whole node."""
        ...

    async def overview(self) -> dict[str, Any]:
        """The dashboard's aggregates: pools, members, queue, charts, recent errors."""
        ...

    async def cluster(self) -> dict[str, Any]:
        """The nodes of the cluster (their heartbeats), this one marked; this one
        alone without ``[cluster] redis`` or while Redis is away."""
        ...

    def member_views(self) -> list[dict[str, Any]]:
        """Every member of the node with its health, load and counters."""
        ...

    def pool_views(self) -> list[dict[str, Any]]:
        """Every pool: name, strategy, waiting jobs, member names."""
        ...

    def compliance_view(self) -> dict[str, Any]:
        """The complaint budget per sender domain (and the compliance settings)."""
        ...

    def lift_complaint_budget(self, domain: str) -> dict[str, Any] | None:
        """Let a sender domain's held mail go for one window; None: the budget is off,
        or it counted no mail of that domain in the window."""
        ...

    def provider_views(self) -> list[dict[str, Any]]:
        """Every mailbox provider: its limits and rules, and per member that sent to it
        the connections, adaptive window, rate and any suspension."""
        ...

    # -- members -------------------------------------------------------------------

    def pause(self, member: str) -> dict[str, Any] | None:
        """Pause a member (survives restarts); its view, or None if there is none."""
        ...

    def resume(self, member: str) -> dict[str, Any] | None:
        """Resume a paused member; its view, or None if there is none."""
        ...

    def quarantine(self, member: str) -> dict[str, Any] | None:
        """Quarantine a member by hand (no traffic for ``[reputation] quarantine``,
        then probation); its view, or None if there is none."""
        ...

    def release(self, member: str) -> dict[str, Any] | None:
        """Every reputation state of a member back to ok; its view, or None."""
        ...

    async def feedback(self, report: Feedback) -> dict[str, Any]:
        """A complaint: matched to its message and member, logged, counted, suppressed."""
        ...

    # -- queue -----------------------------------------------------------------------

    async def queue_stats(self) -> tuple[dict[str, int], dict[str, float]]:
        """Recipients by state, and the age of the oldest in each state."""
        ...

    async def list_messages(
        self, state: RecipientState | None, limit: int, offset: int
    ) -> list[MessageView]: ...

    async def message(self, queue_id: str) -> MessageView | None: ...

    async def trace(self, queue_id: str) -> list[dict[str, Any]]:
        """The decisions taken for a message (routing, member choice, attempts)."""
        ...

    async def retry(self, queue_id: str | None) -> int | None:
        """Make deferred recipients due now (one message, or all with None): how
        many; None when the message does not exist."""
        ...

    async def delete(self, queue_id: str) -> bool:
        """Remove a message; False when there is none."""
        ...

    # -- experiments -----------------------------------------------------------------

    def experiment_views(self) -> list[dict[str, Any]]:
        """Every configured experiment: pool, split, state, variants."""
        ...

    async def experiment_report(self, name: str) -> dict[str, Any] | None:
        """An experiment's report; None when there is no such experiment."""
        ...

    async def set_experiment_running(self, name: str, running: bool) -> dict[str, Any] | None:
        """Start (restart) or stop an experiment; its report, or None if there is none."""
        ...
