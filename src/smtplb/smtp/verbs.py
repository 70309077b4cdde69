"""The SMTP commands both sides speak: the command triggers of both state tables."""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["VERBS", "Verb"]


class Verb(enum.Enum):
    """A command verb; ``VERBS.get(word.upper())`` reads one off the wire."""

    EHLO = "EHLO"
    HELO = "HELO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    RSET = "RSET"
    NOOP = "NOOP"
    HELP = "HELP"
    VRFY = "VRFY"
    QUIT = "QUIT"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"

    # Members are singletons: identity hashing is correct, and unlike Enum's
    # Python-level __hash__ it costs nothing on the per-command table lookups.
    __hash__ = object.__hash__


VERBS: Final[dict[str, Verb]] = {v.value: v for v in Verb}
