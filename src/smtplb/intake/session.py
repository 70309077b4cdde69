"""A sans-IO SMTP server session: bytes in, events out; replies out as bytes.

Theory of operation
-------------------
The application feeds whatever the socket produced to ``receive_data()`` and
then calls ``next_event()`` until it returns ``NEED_DATA``. Every complete
command line in the buffer is answered on the spot, so a pipelined batch
(RFC 2920) is answered in one go; the application sends ``data_to_send()``
once the batch is done. Four things need the application, and each is an
event:

* ``MessageReceived`` — a complete message; answer with ``answer_message()``.
* ``AuthRequest`` — credentials to check; answer with ``answer_auth()``.
* ``StartTLS`` — flush the ``220``, upgrade the transport, ``tls_started()``.
* ``Close`` — flush, then close the connection (and call ``close()``).

While one of the first three is unanswered the session is *waiting*: input
stays buffered and ``next_event()`` returns ``NEED_DATA``.

Where the session is, and what may happen there, is the table in
``session_state.py``; the replies are named in ``smtplb.smtp.replies``.

Message content is read by a :class:`~smtplb.smtp.framing.BodyReader`: only
``CRLF.CRLF`` ends DATA, so the bytes after a fake terminator such as
``LF.LF`` are content, never commands, and bare CR or LF in the content (the
SMTP smuggling vector) refuses the message with ``550 5.6.0``. A NUL byte is
refused with ``554 5.6.0`` (no BINARYMIME), content over the size limit with
``552 5.3.4``. The content is kept in pieces joined once; with a
``body_budget`` in the policy, the bytes of all messages being received and
not yet answered stay under a node-wide limit: ``DATA`` with no room left, or a
body that outgrows the room, gets ``452 4.3.1``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from smtplb.intake.address import parse_path, valid_address
from smtplb.intake.arguments import MailParameters, decode_sasl, mail_parameters, plain_credentials
from smtplb.intake.session_events import AuthRequest, Close, Event, MessageReceived, StartTLS
from smtplb.intake.session_state import SEQUENCE_ERRORS, TRANSITIONS, WAITING, State, Trigger
from smtplb.intake.session_state import Outcome as O
from smtplb.model import Envelope
from smtplb.smtp import replies
from smtplb.smtp.framing import (
    NEED_DATA,
    TOO_LONG,
    BodyBudget,
    BodyProblem,
    BodyReader,
    LineBuffer,
    NeedData,
    TooLong,
)
from smtplb.smtp.reply import Reply
from smtplb.smtp.verbs import VERBS, Verb

__all__ = ["ServerSession", "SessionPolicy", "SessionStateError"]


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """What one client may do; the listener builds one per connection."""

    hostname: str
    max_message_size: int  # bytes; advertised in EHLO SIZE
    max_recipients: int
    max_line_length: int = 1000  # command lines incl CRLF
    max_errors: int = 10  # bad commands before 421 + close
    starttls_available: bool = False
    auth_enabled: bool = False  # users configured
    auth_without_tls: bool = False  # AUTH allowed before TLS (loopback-only listeners)
    require_auth: bool = False  # MAIL needs AUTH first -> 530 5.7.0
    relay_allowed: bool = False  # client address is in relay_networks
    # Called with (recipient, envelope sender) for a recipient that passed syntax,
    # relay and count checks; a Reply refuses it (e.g. 550 5.1.1 from a sink, or a
    # suppression list, which may hold an address for one sender domain only).
    check_recipient: Callable[[str, str], Reply | None] | None = None
    # Shared by every session of the process: message bytes held at once.
    body_budget: BodyBudget | None = None


@functools.lru_cache(maxsize=16)
def _greeting(hostname: str) -> bytes:
    """The 220 of every connection: the same bytes for a hostname, encoded once."""
    return Reply(220, None, f"{hostname} ESMTP smtplb").to_bytes()


@functools.lru_cache(maxsize=64)
def _hello_reply(text: str) -> bytes:
    """The 250 to HELO (the hostname) or EHLO (it and the extensions), encoded once:
    its text varies only with the policy and TLS."""
    return Reply(250, None, text).to_bytes()


class SessionStateError(RuntimeError):
    """The application called the session at the wrong moment (a bug)."""


# Hot-path aliases: an Enum class attribute goes through the metaclass's
# __getattr__ hook, several times slower than reading a module global.
_IN_DATA: Final = State.DATA
_IN_AUTH: Final = State.AUTH
_CLOSED: Final = State.CLOSED
_MAIL: Final = Verb.MAIL
_RCPT: Final = Verb.RCPT
_DATA: Final = Verb.DATA
_END_OF_DATA: Final = O.END_OF_DATA
_ANSWER: Final = O.ANSWER

_NO_PARAMETERS: Final = MailParameters()

_W_OK: Final = replies.OK.to_bytes()
_W_MAIL_OK: Final = replies.MAIL_OK.to_bytes()
_W_RCPT_OK: Final = replies.RCPT_OK.to_bytes()
_W_DATA_GO: Final = replies.DATA_GO.to_bytes()
_W_BYE: Final = replies.BYE.to_bytes()
_W_AUTH_EMPTY: Final = b"334 \r\n"
_W_AUTH_USERNAME: Final = b"334 VXNlcm5hbWU6\r\n"  # "Username:"
_W_AUTH_PASSWORD: Final = b"334 UGFzc3dvcmQ6\r\n"  # "Password:"

_BODY_REFUSALS: Final[dict[BodyProblem, Reply]] = {
    BodyProblem.TOO_BIG: replies.MESSAGE_TOO_BIG,
    BodyProblem.BARE_NEWLINE: replies.BARE_NEWLINE_IN_DATA,
    BodyProblem.NUL: replies.NUL_IN_DATA,
    BodyProblem.NO_ROOM: replies.NO_STORAGE,
}


class ServerSession:
    """One SMTP server conversation, without I/O. See the module docstring."""

    __slots__ = (
        "_auth_mechanism",
        "_auth_user",
        "_auth_username",
        "_body",
        "_client_ip",
        "_closing",
        "_envelope",
        "_eof",
        "_errors",
        "_esmtp",
        "_helo",
        "_lines",
        "_out",
        "_policy",
        "_state",
        "_tls",
    )

    def __init__(self, policy: SessionPolicy, client_ip: str, *, tls: bool = False) -> None:
        self._policy = policy
        self._client_ip = client_ip
        self._tls = tls
        self._state = State.CONNECTED
        self._lines = LineBuffer(policy.max_line_length)
        self._body = BodyReader(policy.max_message_size, policy.body_budget)
        self._out: list[bytes] = []
        self._eof = False
        self._closing: Close | None = None
        self._errors = 0
        self._helo = ""
        self._esmtp = False
        self._auth_user: str | None = None
        self._auth_mechanism = ""
        self._auth_username: str | None = None
        self._envelope: Envelope | None = None

    # -- public surface ---------------------------------------------------

    @property
    def tls(self) -> bool:
        return self._tls

    @property
    def authenticated_user(self) -> str | None:
        return self._auth_user

    @property
    def awaiting_answer(self) -> bool:
        return self._state in WAITING

    @property
    def state(self) -> State:
        return self._state

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed (bounded unless waiting)."""
        return len(self._lines)

    def greeting(self) -> None:
        self._out.append(_greeting(self._policy.hostname))

    def refuse(self, reply: Reply) -> None:
        """Answer ``reply`` (e.g. 421 4.3.2) and close; used instead of ``greeting()``."""
        if self._closing is None:
            self._out.append(reply.to_bytes())
            self._closing = Close(f"refused: {reply}")

    def timeout(self) -> None:
        if self._closing is None:
            text = f"{self._policy.hostname} Error: timeout exceeded"
            self._out.append(Reply(421, "4.4.2", text).to_bytes())
            self._closing = Close("timeout")

    def close(self) -> None:
        """The connection is gone: give back the memory budget of a message in hand."""
        self._body.release()
        self._state = State.CLOSED

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` means the client closed its side."""
        if not data:
            self._eof = True
        elif self._state is not _CLOSED:
            self._lines.feed(data)

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data

    def next_event(self) -> Event | NeedData:
        while True:
            if self._closing is not None:
                self._state = _CLOSED
                self._body.release()
                return self._closing
            state = self._state
            if state in WAITING:
                return NEED_DATA
            if state is _IN_DATA:
                event = self._read_data()
            elif not self._lines.buf:  # (what read_line would say, without the call)
                event = NEED_DATA
            else:
                line = self._lines.read_line()
                event = NEED_DATA if line is None else self._handle_line(line)
            if event is NEED_DATA:
                if not self._eof:
                    return NEED_DATA
                self._closing = Close("client closed the connection")
            elif event is not None:
                return event

    def answer_message(self, reply: Reply) -> None:
        self._expect(State.WAIT_MESSAGE)
        self._envelope = None
        self._body.release()
        self._goto(_ANSWER)
        self._reply(reply)

    def answer_auth(self, ok: bool, refusal: Reply | None = None) -> None:
        """``refusal`` (e.g. a lockout's 454 4.7.0) replaces the usual 535."""
        self._expect(State.WAIT_AUTH)
        self._goto(O.ANSWER)
        if ok:
            self._auth_user = self._auth_username
            self._out.append(replies.AUTH_OK.to_bytes())
        else:
            self._error(refusal or replies.AUTH_FAILED)
        self._auth_username = None

    def tls_started(self) -> None:
        """RFC 3207: forget everything learnt before TLS, and drop any
        plaintext the client pipelined after STARTTLS (command injection)."""
        self._expect(State.WAIT_TLS)
        self._goto(O.TLS_STARTED)
        self._tls = True
        self._lines.clear()
        self._helo = ""
        self._esmtp = False
        self._auth_user = None
        self._envelope = None

    def __repr__(self) -> str:
        env = self._envelope
        rcpts = len(env.rcpt_to) if env else 0
        return (
            f"ServerSession(client={self._client_ip!r}, state={self._state.value}, "
            f"helo={self._helo!r}, tls={self._tls}, user={self._auth_user!r}, "
            f"rcpts={rcpts}, errors={self._errors}, buffered={len(self._lines)})"
        )

    # -- plumbing -----------------------------------------------------------

    def _expect(self, state: State) -> None:
        if self._state is not state:
            raise SessionStateError(f"expected state {state.value}, session is {self!r}")

    def _goto(self, trigger: Trigger) -> None:
        self._state = TRANSITIONS[(self._state, trigger)]

    def _reply(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())
        if reply.code == 421 and self._closing is None:  # 421 always closes the channel
            self._closing = Close(f"replied {reply}")

    def _error(self, reply: Reply) -> None:
        """Answer a client error; too many of them end the session."""
        self._errors += 1
        self._out.append(reply.to_bytes())
        if self._errors > self._policy.max_errors and self._closing is None:
            self._out.append(replies.TOO_MANY_ERRORS.to_bytes())
            self._closing = Close("too many errors")

    def _read_data(self) -> Event | NeedData | None:
        body = self._body
        data = body.read(self._lines.buf)
        if data is None:
            return NEED_DATA
        envelope = self._envelope
        assert envelope is not None
        if body.problem is not None:
            self._goto(O.DATA_REFUSED)
            self._envelope = None
            self._out.append(_BODY_REFUSALS[body.problem].to_bytes())
            return None
        self._goto(_END_OF_DATA)
        envelope.plain_lines = not body.dot_lines
        return MessageReceived(envelope, data)

    def _handle_line(self, raw: bytes | TooLong) -> Event | None:
        problem: Reply | None = None
        text = ""
        utf8 = False
        if raw is TOO_LONG:
            problem = replies.LINE_TOO_LONG
        elif not raw.endswith(b"\r\n"):
            problem = replies.BARE_LF
        elif raw.find(b"\r") != len(raw) - 2:  # a CR before the final CRLF
            problem = replies.BARE_CR
        else:
            line = raw[:-2]
            try:
                text = line.decode("ascii")
            except UnicodeDecodeError:
                try:
                    text = line.decode("utf-8")
                    utf8 = True
                except UnicodeDecodeError:
                    problem = replies.BAD_BYTES
        if self._state is _IN_AUTH:
            if problem is not None:
                self._goto(O.AUTH_ABORTED)
                self._error(problem)
                return None
            return self._auth_response(text)
        if problem is not None:
            self._error(problem)
            return None
        word, _, arg = text.partition(" ")
        verb = VERBS.get(word.upper())
        if verb is None or (utf8 and verb is not _MAIL and verb is not _RCPT):
            self._error(replies.UNKNOWN_COMMAND if verb is None else replies.BAD_BYTES)
            return None
        key = (self._state, verb)
        if key not in TRANSITIONS:
            self._error(SEQUENCE_ERRORS.get(key, replies.BAD_SEQUENCE))
            return None
        return _COMMANDS[verb](self, arg)

    def _syntax(self, usage: str) -> None:
        self._error(Reply(501, "5.5.4", f"Syntax: {usage}"))

    # -- commands -----------------------------------------------------------
    # Each runs only where TRANSITIONS allows its verb; it either replies
    # with an error and leaves the state alone, or calls _goto(verb).

    def _hello(self, verb: Verb, arg: str) -> None:
        name = arg.strip().partition(" ")[0]
        if not name:
            self._syntax(f"{verb.value} hostname")
            return
        self._goto(verb)
        self._helo = name
        self._esmtp = verb is Verb.EHLO
        self._envelope = None
        if verb is Verb.HELO:
            self._out.append(_hello_reply(self._policy.hostname))
            return
        policy = self._policy
        lines = [
            policy.hostname,
            "PIPELINING",
            f"SIZE {policy.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
        if policy.starttls_available and not self._tls:
            lines.append("STARTTLS")
        if policy.auth_enabled and (self._tls or policy.auth_without_tls):
            lines.append("AUTH PLAIN LOGIN")
        self._out.append(_hello_reply("\n".join(lines)))

    def _cmd_ehlo(self, arg: str) -> None:
        self._hello(Verb.EHLO, arg)

    def _cmd_helo(self, arg: str) -> None:
        self._hello(Verb.HELO, arg)

    def _cmd_mail(self, arg: str) -> None:
        policy = self._policy
        if policy.require_auth and self._auth_user is None:
            self._error(replies.AUTH_REQUIRED)
            return
        parsed = parse_path(arg[5:]) if arg[:5].upper() == "FROM:" else None
        if parsed is None:
            self._syntax("MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8]")
            return
        address, params = parsed
        if address and not valid_address(address):
            self._error(replies.BAD_SENDER)
            return
        mail = mail_parameters(params) if params else _NO_PARAMETERS
        if isinstance(mail, str):
            if mail:
                self._syntax(f"bad value for MAIL parameter {mail}")
            else:
                self._error(replies.NO_PARAMS)
            return
        if not mail.smtputf8 and not address.isascii():
            self._error(replies.NEED_SMTPUTF8)
            return
        if mail.size is not None and mail.size > policy.max_message_size:
            self._error(replies.MESSAGE_TOO_BIG)
            return
        self._goto(_MAIL)
        self._envelope = Envelope(
            mail_from=address,
            helo=self._helo,
            client_ip=self._client_ip,
            auth_user=self._auth_user,
            tls=self._tls,
            smtputf8=mail.smtputf8,
            body_8bit=mail.body_8bit,
            size_hint=mail.size,
            recipients_checked=policy.check_recipient is not None,
        )
        self._out.append(_W_MAIL_OK)

    def _cmd_rcpt(self, arg: str) -> None:
        envelope = self._envelope
        assert envelope is not None
        parsed = parse_path(arg[3:]) if arg[:3].upper() == "TO:" else None
        if parsed is None:
            self._syntax("RCPT TO:<address>")
            return
        address, params = parsed
        if not valid_address(address):
            self._error(replies.BAD_RECIPIENT)
            return
        if params:
            self._error(replies.NO_PARAMS)
            return
        if not envelope.smtputf8 and not address.isascii():
            self._error(replies.NEED_SMTPUTF8)
            return
        policy = self._policy
        if not policy.relay_allowed and self._auth_user is None:
            self._error(replies.RELAY_DENIED)
            return
        if len(envelope.rcpt_to) >= policy.max_recipients:
            self._out.append(replies.TOO_MANY_RECIPIENTS.to_bytes())
            return
        if policy.check_recipient is not None:
            refusal = policy.check_recipient(address, envelope.mail_from)
            if refusal is not None:
                self._reply(refusal)
                return
        self._goto(_RCPT)
        if address not in envelope.rcpt_to:
            envelope.rcpt_to.append(address)
        self._out.append(_W_RCPT_OK)

    def _cmd_data(self, arg: str) -> None:
        if arg.strip():
            self._syntax("DATA")
            return
        budget = self._policy.body_budget
        envelope = self._envelope
        assert envelope is not None
        if budget is not None and not budget.has_room(envelope.size_hint or 1):
            self._out.append(replies.NO_STORAGE.to_bytes())
            return
        self._goto(_DATA)
        self._body.start()
        self._out.append(_W_DATA_GO)

    def _cmd_rset(self, arg: str) -> None:
        if arg.strip():
            self._syntax("RSET")
            return
        self._goto(Verb.RSET)
        self._envelope = None
        self._out.append(_W_OK)

    def _cmd_noop(self, arg: str) -> None:
        self._out.append(_W_OK)

    def _cmd_help(self, arg: str) -> None:
        self._out.append(replies.HELP.to_bytes())

    def _cmd_vrfy(self, arg: str) -> None:
        self._error(replies.VRFY_DISABLED)

    def _cmd_quit(self, arg: str) -> Event:
        self._goto(Verb.QUIT)
        self._out.append(_W_BYE)
        self._closing = Close("quit")
        return self._closing

    def _cmd_starttls(self, arg: str) -> Event | None:
        if arg.strip():
            self._syntax("STARTTLS")
        elif self._tls:
            self._error(replies.TLS_TWICE)
        elif not self._policy.starttls_available:
            self._reply(replies.TLS_UNAVAILABLE)
        else:
            self._goto(Verb.STARTTLS)
            self._out.append(replies.TLS_GO.to_bytes())
            return StartTLS()
        return None

    def _cmd_auth(self, arg: str) -> Event | None:
        policy = self._policy
        if not policy.auth_enabled:
            self._error(replies.AUTH_DISABLED)
            return None
        if not self._esmtp:
            self._error(replies.NEED_HELO)
            return None
        if self._auth_user is not None:
            self._error(replies.AUTH_TWICE)
            return None
        if not (self._tls or policy.auth_without_tls):
            self._error(replies.AUTH_NEEDS_TLS)
            return None
        mechanism, _, initial = arg.strip().partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            self._error(replies.AUTH_MECHANISM)
            return None
        self._goto(Verb.AUTH)
        self._auth_mechanism = mechanism
        self._auth_username = None
        if initial:
            return self._auth_response(initial.strip())
        self._out.append(_W_AUTH_EMPTY if mechanism == "PLAIN" else _W_AUTH_USERNAME)
        return None

    def _auth_response(self, text: str) -> Event | None:
        """One base64 response line while in state AUTH."""
        if text.strip() == "*":
            self._goto(O.AUTH_ABORTED)
            self._out.append(replies.AUTH_CANCELLED.to_bytes())
            return None
        decoded = decode_sasl(text)
        if decoded is None:
            self._goto(O.AUTH_ABORTED)
            self._error(replies.AUTH_UNDECODABLE)
            return None
        if self._auth_mechanism == "LOGIN":
            if self._auth_username is None:
                self._goto(O.CHALLENGE)
                self._auth_username = decoded
                self._out.append(_W_AUTH_PASSWORD)
                return None
            self._goto(O.CREDENTIALS)
            return AuthRequest("LOGIN", self._auth_username, decoded)
        credentials = plain_credentials(decoded)
        if credentials is None:
            self._goto(O.AUTH_ABORTED)
            self._error(replies.AUTH_UNDECODABLE)
            return None
        authzid, username, password = credentials
        if authzid and authzid != username:  # acting as another user is not supported
            self._goto(O.AUTH_ABORTED)
            self._error(replies.AUTH_FAILED)
            return None
        self._goto(O.CREDENTIALS)
        self._auth_username = username
        return AuthRequest("PLAIN", username, password)


_Command = Callable[[ServerSession, str], "Event | None"]

_COMMANDS: Final[dict[Verb, _Command]] = {
    v: getattr(ServerSession, f"_cmd_{v.name.lower()}") for v in Verb
}
