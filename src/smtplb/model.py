"""The few value types every layer shares: envelopes and recipient states.

The SMTP reply type lives in ``smtplb.smtp.reply``."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(slots=True)
class Envelope:
    """The SMTP envelope of one message as received.

    ``mail_from`` is ``""`` for the null sender (``MAIL FROM:<>``).
    """

    mail_from: str = ""
    rcpt_to: list[str] = field(default_factory=list)
    helo: str = ""
    client_ip: str = ""
    auth_user: str | None = None
    tls: bool = False
    smtputf8: bool = False
    body_8bit: bool = False
    size_hint: int | None = None
    # Every recipient passed the listener's check_recipient at RCPT (smtplb's is the
    # suppression list): intake need not look them up again.
    recipients_checked: bool = False
    # The content came through the listener's DATA reader, which found no line
    # starting with a dot: CRLF lines that go out without dot-stuffing (and need no
    # second check for bare CR or LF). False (check and stuff) for any other source.
    plain_lines: bool = False


class RecipientState(enum.IntEnum):
    """Delivery state of one recipient in the spool (SPEC §1)."""

    QUEUED = 0
    INFLIGHT = 1
    DEFERRED = 2
    DELIVERED = 3
    BOUNCED = 4
    EXPIRED = 5
    SUPPRESSED = 6

    @property
    def is_final(self) -> bool:
        return self >= RecipientState.DELIVERED

    @property
    def label(self) -> str:
        return "in_flight" if self is RecipientState.INFLIGHT else self.name.lower()


def domain_of(address: str) -> str:
    """The lower-cased domain of ``local@domain`` ('' for the null sender)."""
    return address.rpartition("@")[2].lower()
