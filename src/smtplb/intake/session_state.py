"""Where an SMTP server session is, and what may happen there.

Theory of operation
-------------------
The session is always in one :class:`State`. Something happens, a
*trigger*, and the table ``TRANSITIONS`` says where the session goes:
``(state, trigger) -> next state``. There are two kinds of trigger:

* a :class:`~smtplb.smtp.verbs.Verb`: a command the client sent. A command is
  legal in a state exactly when the table has an entry for it; otherwise the
  client gets ``BAD_SEQUENCE`` or the more telling reply in
  ``SEQUENCE_ERRORS`` (``503 5.5.1``) and the state stays;
* an :class:`Outcome`: something decided inside the session or by the
  application (the end of DATA, an answer to a message or to AUTH, the TLS
  upgrade done).

A command handler checks the command's arguments first: a bad one is answered
with an error and moves nothing; a good one moves with its verb. Three states
wait for the application (``WAITING``): input stays buffered until it answers.
Any state may end in ``CLOSED`` (QUIT, EOF, timeout, refusal, too many errors,
a ``421``); only QUIT is in the table, the others are the session closing.
"""

from __future__ import annotations

import enum
from typing import Final, TypeAlias

from smtplb.smtp import replies
from smtplb.smtp.reply import Reply
from smtplb.smtp.verbs import Verb

__all__ = ["SEQUENCE_ERRORS", "TRANSITIONS", "WAITING", "Outcome", "State", "Trigger"]


class State(enum.Enum):
    CONNECTED = "connected"  # before HELO/EHLO
    READY = "ready"  # greeted, no mail transaction
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading message content
    AUTH = "auth"  # reading an AUTH continuation line
    WAIT_MESSAGE = "wait_message"  # MessageReceived out, answer pending
    WAIT_AUTH = "wait_auth"  # AuthRequest out, answer pending
    WAIT_TLS = "wait_tls"  # StartTLS out, upgrade pending
    CLOSED = "closed"

    # Members are singletons: identity hashing is correct, and unlike Enum's
    # Python-level __hash__ it costs nothing on the per-command table lookups.
    __hash__ = object.__hash__


class Outcome(enum.Enum):
    """A trigger from inside the session or from the application's answer."""

    END_OF_DATA = "end of data"  # the final dot of an acceptable message
    DATA_REFUSED = "data refused"  # the final dot of a message refused on the spot
    ANSWER = "answer"  # the application answered a message or credentials
    TLS_STARTED = "tls started"
    CHALLENGE = "challenge"  # AUTH LOGIN asks for the password
    CREDENTIALS = "credentials"  # AUTH has what it needs
    AUTH_ABORTED = "auth aborted"  # "*" or an undecodable response

    __hash__ = object.__hash__


Trigger: TypeAlias = Verb | Outcome

_C, _R, _M, _T = State.CONNECTED, State.READY, State.MAIL, State.RCPT
_COMMAND_STATES: Final = (_C, _R, _M, _T)
WAITING: Final = frozenset({State.WAIT_MESSAGE, State.WAIT_AUTH, State.WAIT_TLS})

TRANSITIONS: Final[dict[tuple[State, Trigger], State]] = {
    **{(s, Verb.EHLO): _R for s in _COMMAND_STATES},
    **{(s, Verb.HELO): _R for s in _COMMAND_STATES},
    **{(s, Verb.RSET): (_C if s is _C else _R) for s in _COMMAND_STATES},
    **{(s, v): s for s in _COMMAND_STATES for v in (Verb.NOOP, Verb.HELP, Verb.VRFY)},
    **{(s, Verb.QUIT): State.CLOSED for s in _COMMAND_STATES},
    (_R, Verb.MAIL): _M,
    (_M, Verb.RCPT): _T,
    (_T, Verb.RCPT): _T,
    (_T, Verb.DATA): State.DATA,
    (State.DATA, Outcome.END_OF_DATA): State.WAIT_MESSAGE,
    (State.DATA, Outcome.DATA_REFUSED): _R,
    (State.WAIT_MESSAGE, Outcome.ANSWER): _R,
    (_C, Verb.STARTTLS): State.WAIT_TLS,
    (_R, Verb.STARTTLS): State.WAIT_TLS,
    (State.WAIT_TLS, Outcome.TLS_STARTED): _C,
    (_R, Verb.AUTH): State.AUTH,
    (State.AUTH, Outcome.CHALLENGE): State.AUTH,
    (State.AUTH, Outcome.CREDENTIALS): State.WAIT_AUTH,
    (State.AUTH, Outcome.AUTH_ABORTED): _R,
    (State.WAIT_AUTH, Outcome.ANSWER): _R,
}

# Bad-sequence replies that say more than the generic one.
SEQUENCE_ERRORS: Final[dict[tuple[State, Verb], Reply]] = {
    (_M, Verb.DATA): replies.NO_RECIPIENTS,
    (_C, Verb.MAIL): replies.NEED_HELO,
    (_C, Verb.AUTH): replies.NEED_HELO,
    (_M, Verb.MAIL): replies.NESTED_MAIL,
    (_T, Verb.MAIL): replies.NESTED_MAIL,
    (_C, Verb.RCPT): replies.NEED_MAIL,
    (_R, Verb.RCPT): replies.NEED_MAIL,
    (_C, Verb.DATA): replies.NEED_RCPT,
    (_R, Verb.DATA): replies.NEED_RCPT,
    **{(s, v): replies.IN_TRANSACTION for s in (_M, _T) for v in (Verb.STARTTLS, Verb.AUTH)},
}

# Every verb appears in the table, and every state can be reached.
assert {t for _, t in TRANSITIONS if isinstance(t, Verb)} == set(Verb)
assert {State.CONNECTED, *TRANSITIONS.values()} == set(State)
