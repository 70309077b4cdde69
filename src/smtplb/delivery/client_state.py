"""Where an SMTP client session is, and what may happen there.

Theory of operation
-------------------
The session is always in one :class:`State`; most states are "awaiting the
reply to X". A *trigger* moves it, and the table ``TRANSITIONS`` says where:
``(state, trigger) -> next state``. There are two kinds of trigger:

* a :class:`~smtplb.smtp.verbs.Verb`: a command the caller issued (and
  ``Outcome.TLS_ESTABLISHED``, the caller's handshake). A command that has no
  entry in the current state is a caller bug: ``IllegalCommand``;
* an :class:`Outcome`: what a reply meant in that state (accepted, refused, go
  ahead with the message, one more AUTH challenge...). A reply handler picks the
  outcome; a missing entry would be a bug in the session itself.

A ``421`` in any state that awaits a reply means the server is closing the
channel (``CLOSING``): the pending command ends with that reply and the session
is ``CLOSED``. ``ERROR`` (the server sent something that is not SMTP) has no
way out.
"""

from __future__ import annotations

import enum
from typing import Final, TypeAlias

from smtplb.smtp.verbs import Verb

__all__ = ["CLOSABLE", "TRANSITIONS", "Outcome", "State", "Trigger"]


class State(enum.Enum):
    GREETING = "awaiting greeting"
    IDLE = "idle"
    EHLO = "awaiting EHLO reply"
    HELO = "awaiting HELO reply"
    STARTTLS = "awaiting STARTTLS reply"
    TLS_HANDSHAKE = "awaiting TLS handshake"
    AUTH = "awaiting AUTH reply"
    MAIL = "awaiting MAIL reply"
    RCPT = "awaiting RCPT reply"
    DATA = "awaiting DATA reply"
    BODY = "awaiting end-of-data reply"
    RSET = "awaiting RSET reply"
    NOOP = "awaiting NOOP reply"
    QUIT = "awaiting QUIT reply"
    CLOSED = "closed"
    ERROR = "broken by a protocol error"

    __hash__ = object.__hash__  # singletons: identity hashing, cheap table lookups


class Outcome(enum.Enum):
    """A trigger that is not a command: what a reply meant, or the caller's handshake."""

    REPLIED = "replied"  # the only thing that can follow
    ACCEPTED = "accepted"
    REFUSED = "refused"
    FALLBACK = "fallback"  # EHLO refused for good: try HELO
    READY = "ready"  # STARTTLS 220
    TLS_ESTABLISHED = "TLS established"  # the caller did the handshake
    CHALLENGE = "challenge"  # AUTH 334
    NEXT = "next"  # one more RCPT reply to come
    TO_DATA = "to data"
    TO_RSET = "to rset"  # lock-step, no recipient accepted
    GO_AHEAD = "go ahead"  # DATA 354
    CLOSING = "closing"  # 421

    __hash__ = object.__hash__


Trigger: TypeAlias = Verb | Outcome

CLOSABLE: Final = frozenset(
    s for s in State if s not in (State.CLOSED, State.ERROR, State.TLS_HANDSHAKE)
)

TRANSITIONS: Final[dict[tuple[State, Trigger], State]] = {
    (State.GREETING, Outcome.REPLIED): State.IDLE,  # even a 554 banner: the caller QUITs
    (State.IDLE, Verb.EHLO): State.EHLO,
    (State.IDLE, Verb.HELO): State.HELO,
    (State.IDLE, Verb.STARTTLS): State.STARTTLS,
    (State.IDLE, Verb.AUTH): State.AUTH,
    (State.IDLE, Verb.MAIL): State.MAIL,
    (State.IDLE, Verb.RSET): State.RSET,
    (State.IDLE, Verb.NOOP): State.NOOP,
    (State.IDLE, Verb.QUIT): State.QUIT,
    (State.EHLO, Outcome.ACCEPTED): State.IDLE,
    (State.EHLO, Outcome.FALLBACK): State.HELO,  # 5xx: the server may speak only RFC 821
    (State.EHLO, Outcome.REFUSED): State.IDLE,  # 4xx: tell the caller
    (State.HELO, Outcome.REPLIED): State.IDLE,
    (State.STARTTLS, Outcome.READY): State.TLS_HANDSHAKE,
    (State.STARTTLS, Outcome.REFUSED): State.IDLE,
    (State.TLS_HANDSHAKE, Outcome.TLS_ESTABLISHED): State.IDLE,
    (State.AUTH, Outcome.CHALLENGE): State.AUTH,  # 334: one more response
    (State.AUTH, Outcome.REPLIED): State.IDLE,
    (State.MAIL, Outcome.ACCEPTED): State.RCPT,
    (State.MAIL, Outcome.REFUSED): State.IDLE,  # lock-step: nothing else was sent
    (State.MAIL, Outcome.NEXT): State.RCPT,  # pipelined: the RCPT replies follow anyway
    (State.RCPT, Outcome.NEXT): State.RCPT,
    (State.RCPT, Outcome.TO_DATA): State.DATA,
    (State.RCPT, Outcome.TO_RSET): State.RSET,
    (State.DATA, Outcome.GO_AHEAD): State.BODY,
    (State.DATA, Outcome.REFUSED): State.RSET,
    (State.BODY, Outcome.REPLIED): State.IDLE,
    (State.RSET, Outcome.REPLIED): State.IDLE,
    (State.NOOP, Outcome.REPLIED): State.IDLE,
    (State.QUIT, Outcome.REPLIED): State.CLOSED,
    **{(s, Outcome.CLOSING): State.CLOSED for s in CLOSABLE},  # 421 anywhere
}

assert {State.GREETING, *TRANSITIONS.values()} | {State.ERROR} == set(State)
