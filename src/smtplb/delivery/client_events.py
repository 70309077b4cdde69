"""What the SMTP client session hands to its caller: one event per command.

See ``client.py``. Each command the caller issues ends with exactly one of
these once its reply (or replies) arrived; ``ServerClosing`` is the one event
nobody asked for (a ``421`` while idle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from smtplb.smtp.reply import Reply

__all__ = [
    "AuthDone",
    "EhloDone",
    "Event",
    "Greeting",
    "NoopDone",
    "QuitDone",
    "ResetDone",
    "ServerClosing",
    "StartTlsReady",
    "StartTlsRefused",
    "TransactionDone",
]


@dataclass(frozen=True, slots=True)
class _ReplyEvent:
    reply: Reply


class Greeting(_ReplyEvent):
    __slots__ = ()


class StartTlsReady(_ReplyEvent):
    __slots__ = ()


class StartTlsRefused(_ReplyEvent):
    __slots__ = ()


class AuthDone(_ReplyEvent):
    __slots__ = ()


class ResetDone(_ReplyEvent):
    __slots__ = ()


class NoopDone(_ReplyEvent):
    __slots__ = ()


class QuitDone(_ReplyEvent):
    __slots__ = ()


class ServerClosing(_ReplyEvent):
    """An unsolicited ``421`` while idle: the server is closing the connection."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class EhloDone:
    """The EHLO reply, or the HELO reply after a refused EHLO (``extensions`` empty)."""

    reply: Reply
    extensions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TransactionDone:
    """The replies of one transaction.

    ``rcpts`` has one reply per recipient, in order. When the server never
    answered a recipient (MAIL refused, or a ``421`` cut the transaction short)
    the reply that ended the transaction stands in for it. ``data`` is the
    reply to DATA or to the end of data when at least one recipient was
    accepted, else ``None`` (the message was not sent).
    """

    mail: Reply
    rcpts: list[Reply]
    data: Reply | None

    def outcome(self, index: int) -> Reply:
        """The reply that decides the fate of recipient ``index``."""
        rcpt = self.rcpts[index]
        if not self.mail.is_success:
            return self.mail
        if not rcpt.is_success or self.data is None:
            return rcpt
        return self.data


Event: TypeAlias = (
    Greeting
    | EhloDone
    | StartTlsReady
    | StartTlsRefused
    | AuthDone
    | TransactionDone
    | ResetDone
    | NoopDone
    | QuitDone
    | ServerClosing
)
