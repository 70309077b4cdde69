"""What the SMTP server session hands to the application: one event per need.

See ``session.py``: ``MessageReceived``, ``AuthRequest`` and ``StartTLS`` wait
for the application's answer; ``Close`` ends the conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smtplb.model import Envelope

__all__ = ["AuthRequest", "Close", "Event", "MessageReceived", "StartTLS"]


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete message: CRLF lines, dot-unstuffed, without the final ``.``."""

    envelope: Envelope
    data: bytes = field(repr=False)

    def __repr__(self) -> str:
        env = self.envelope
        return (
            f"MessageReceived(mail_from={env.mail_from!r}, rcpt_to={env.rcpt_to!r}, "
            f"size={len(self.data)})"
        )


@dataclass(frozen=True, slots=True)
class StartTLS:
    """The ``220`` is queued; flush it, upgrade, then call ``tls_started()``."""


@dataclass(frozen=True, slots=True)
class AuthRequest:
    mechanism: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


Event = MessageReceived | StartTLS | AuthRequest | Close
