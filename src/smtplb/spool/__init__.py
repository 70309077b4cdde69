"""The durable store of accepted messages (SPEC §1): the interface and its backends."""

from __future__ import annotations

from smtplb.spool.base import (
    ClaimedMessage,
    ClaimedRecipient,
    ExpiredRecipient,
    MessageView,
    NewMessage,
    NewRecipient,
    RecipientResult,
    RecipientView,
    Spool,
    SpoolAdmin,
    SpoolEngine,
    SpoolError,
    TraceStep,
)
from smtplb.spool.sqlite import SqliteSpool

__all__ = [
    "ClaimedMessage",
    "ClaimedRecipient",
    "ExpiredRecipient",
    "MessageView",
    "NewMessage",
    "NewRecipient",
    "RecipientResult",
    "RecipientView",
    "Spool",
    "SpoolAdmin",
    "SpoolEngine",
    "SpoolError",
    "SqliteSpool",
    "TraceStep",
]
