"""The spool's interface, in two parts: the engine (what intake and delivery
use: store, claim, record, expire) and the admin view (what ``smtplb queue``
and the HTTP API use: list, show, retry, delete, stats, purge).

Every backend passes the contract suite in ``tests/unit/test_spool_contract.py``
(the admin part also runs against :class:`~smtplb.spool.shards.ShardedQueue`).
A message is durable (fsynced) when :meth:`SpoolEngine.store` returns; only then
may intake answer ``250``/``202``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from smtplb.model import RecipientState


@dataclass(frozen=True, slots=True)
class NewRecipient:
    address: str
    pool: str
    priority: int = 1  # 0 = high, 1 = normal, 2 = low


@dataclass(frozen=True, slots=True)
class NewMessage:
    queue_id: str
    sender: str  # "" = null sender
    recipients: tuple[NewRecipient, ...]
    content: bytes
    message_id: str
    received_at: float  # wall-clock seconds
    expires_at: float  # wall-clock seconds; every state expires then
    client_ip: str = ""
    auth_user: str | None = None
    content_class: str = "transactional"
    is_dsn: bool = False
    # ``content`` is known to be CRLF lines, none starting with a dot (intake read it
    # so): delivery sends it as it is. False: not known, delivery checks and stuffs.
    plain_lines: bool = False


@dataclass(slots=True)
class ClaimedRecipient:
    rid: int  # spool-wide recipient id
    address: str
    pool: str
    priority: int
    attempts: int  # attempts already made (counted ones)


@dataclass(slots=True)
class ClaimedMessage:
    """A message with the recipients just claimed for delivery (now in flight)."""

    msg_pk: int
    queue_id: str
    sender: str
    message_id: str
    content: bytes
    received_at: float
    expires_at: float
    content_class: str
    is_dsn: bool
    recipients: list[ClaimedRecipient] = field(default_factory=list)
    client_ip: str = ""  # the client that sent it (for hash_key = "client_ip")
    plain_lines: bool = False  # as NewMessage.plain_lines


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The outcome of one attempt for one recipient."""

    rid: int
    state: RecipientState  # DELIVERED, DEFERRED, BOUNCED, EXPIRED, QUEUED (give back)
    next_attempt: float = 0.0  # wall clock, for DEFERRED / QUEUED
    count_attempt: bool = True
    code: int | None = None
    enhanced_code: str | None = None
    response: str = ""
    member: str = ""


@dataclass(slots=True)
class RecipientView:
    rid: int
    address: str
    state: RecipientState
    pool: str
    priority: int
    attempts: int
    next_attempt: float
    last_code: int | None
    last_enhanced_code: str | None
    last_response: str
    member: str
    updated_at: float


@dataclass(slots=True)
class MessageView:
    msg_pk: int
    queue_id: str
    sender: str
    message_id: str
    size: int
    received_at: float
    expires_at: float
    content_class: str
    is_dsn: bool
    recipients: list[RecipientView] = field(default_factory=list)


@dataclass(slots=True)
class ExpiredRecipient:
    rid: int
    msg_pk: int
    queue_id: str
    sender: str
    address: str
    message_id: str
    last_code: int | None
    last_enhanced_code: str | None
    last_response: str
    received_at: float = 0.0
    is_dsn: bool = False


# One step of a message's trace: (wall-clock time, step name, details); see
# smtplb.observability.trace for the steps and their details.
TraceStep = tuple[float, str, tuple[Any, ...]]


class SpoolError(Exception):
    """The spool could not do what was asked (disk full, I/O error...).

    Intake maps it to ``451 4.3.0``: fail closed.
    """


class SpoolEngine(Protocol):
    """What intake and delivery use."""

    async def open(self) -> None:
        """Create/open the store. Runs crash recovery: INFLIGHT → QUEUED (next_attempt=now).

        A full disk is no reason not to start: the spool then refuses writes with
        :class:`SpoolError` (intake answers ``451 4.3.0``) until space returns."""

    async def close(self) -> None:
        """Flush pending writes and close."""

    async def store(self, message: NewMessage, *, inflight: bool = False) -> ClaimedMessage:
        """Durably store ``message`` (fsync'd, group-committed); return it as delivery
        takes it: the message with its recipient ids, in order.

        With ``inflight=True`` the recipients start INFLIGHT (the caller delivers
        them straight from memory); else QUEUED with next_attempt = received_at.
        Raises :class:`SpoolError` when the write fails.
        """

    async def claim_ready(self, now: float, limit: int) -> list[ClaimedMessage]:
        """Claim up to ``limit`` recipients that are QUEUED or DEFERRED with
        next_attempt <= now, highest priority (lowest number) first, then oldest
        next_attempt; mark them INFLIGHT; return them grouped by message, with content."""

    async def record(self, results: list[RecipientResult]) -> None:
        """Apply attempt outcomes (batched; durable when it returns). Results that
        cannot be committed for want of space are kept and applied again once
        there is room: a recipient never stays INFLIGHT because of a full disk."""

    async def expire_due(self, now: float, limit: int = 1000) -> list[ExpiredRecipient]:
        """Mark EXPIRED every non-final, non-INFLIGHT recipient whose message has
        expires_at <= now; return them (for DSNs and logs). The message content
        stays readable with :meth:`SpoolAdmin.get_content` (for the DSN) until purge."""

    async def next_due(self) -> float | None:
        """Smallest next_attempt among QUEUED/DEFERRED recipients, or None."""

    def note_trace(self, queue_id: str, ts: float, step: str, details: tuple[Any, ...]) -> None:
        """Keep one step of a message's trace. Written with the next commit (never
        a commit of its own); read back with :meth:`SpoolAdmin.trace`."""


class SpoolAdmin(Protocol):
    """What operators see and do: ``smtplb queue`` and the HTTP API."""

    async def stats(self) -> dict[str, int]:
        """Recipient counts by state label (RecipientState.label), all states present."""

    async def oldest_age(self, now: float) -> dict[str, float]:
        """Age in seconds of the oldest non-final recipient per state label."""

    async def list_messages(
        self, *, state: RecipientState | None = None, limit: int = 100, offset: int = 0
    ) -> list[MessageView]:
        """Messages that have at least one recipient (in ``state`` if given), newest first."""

    async def get(self, queue_id: str) -> MessageView | None: ...

    async def get_content(self, queue_id: str) -> bytes | None: ...

    async def trace(self, queue_id: str) -> list[TraceStep]:
        """The steps noted with :meth:`SpoolEngine.note_trace` and committed, oldest first."""

    async def retry(self, queue_id: str | None = None) -> int:
        """Make DEFERRED (and QUEUED) recipients of one message, or of all when None,
        due now. Return how many."""

    async def delete(self, queue_id: str) -> bool:
        """Remove a message, its recipients and its trace; False if unknown."""

    async def purge(self, older_than: float) -> int:
        """Delete messages whose recipients all became final before ``older_than``
        (wall clock); return how many. Their content was released when they
        became final; this drops the rows kept for ``queue show``."""


class Spool(SpoolEngine, SpoolAdmin, Protocol):
    """A whole spool backend: engine and admin view over one store."""
