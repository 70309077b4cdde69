"""The SMTP commands both sides speak: the command triggers of both state tables."""

from __future__ import annotations

import enum

__all__ = ["Verb"]


class Verb(enum.Enum):
    """A command verb; ``Verb.get(text)`` reads one off the wire (any case)."""

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

    @classmethod
    def get(cls, text: str) -> Verb | None:
        return _BY_NAME.get(text.upper())


_BY_NAME: dict[str, Verb] = {v.value: v for v in Verb}
