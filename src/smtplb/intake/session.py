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
* ``Close`` — flush, then close the connection.

While one of the first three is unanswered the session is *waiting*: input
stays buffered and ``next_event()`` returns ``NEED_DATA``.

Where the session is, and what may happen there, is the ``_TRANSITIONS``
table: ``(state, trigger) -> next state``. A command is legal in a state
exactly when the table has an entry for it; otherwise the client gets a
``503 5.5.1`` (bad sequence). Triggers in capitals are SMTP verbs; the others
are outcomes inside the session. Any state may go to ``CLOSED`` (QUIT, EOF,
timeout, refusal, too many errors, a ``421``).

Message content is never looked at line by line. The end of DATA is found
with ``bytes.find`` for ``CRLF.CRLF`` from a remembered offset, which also
covers a terminator split across reads. Bare CR or LF anywhere in the content
(the SMTP smuggling vector) is detected with three ``bytes.count`` calls and
refuses the message with ``550 5.6.0``; since only ``CRLF.CRLF`` ends DATA, the
bytes after a fake terminator such as ``LF.LF`` are content, never commands.
Dot-unstuffing is one ``bytes.replace``. Content over the size limit is read
and dropped as it arrives (only a 4-byte tail is kept) and answered ``552``.
"""

from __future__ import annotations

import binascii
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from smtplb.intake.address import parse_path, valid_address
from smtplb.model import Envelope, Reply

__all__ = [
    "NEED_DATA",
    "AuthRequest",
    "Close",
    "Event",
    "MessageReceived",
    "NeedData",
    "ServerSession",
    "SessionPolicy",
    "SessionStateError",
    "StartTLS",
    "State",
]


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
    # Called for a recipient that passed syntax, relay and count checks; a
    # Reply refuses it (e.g. 550 5.1.1 from a sink, or a suppression list).
    check_recipient: Callable[[str], Reply | None] | None = None


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


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


class SessionStateError(RuntimeError):
    """The application called the session at the wrong moment (a bug)."""


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


_C, _R, _M, _T = State.CONNECTED, State.READY, State.MAIL, State.RCPT
_COMMAND_STATES: Final = (_C, _R, _M, _T)
_WAITING: Final = frozenset({State.WAIT_MESSAGE, State.WAIT_AUTH, State.WAIT_TLS})

_TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    **{(s, "EHLO"): _R for s in _COMMAND_STATES},
    **{(s, "HELO"): _R for s in _COMMAND_STATES},
    **{(s, "RSET"): (_C if s is _C else _R) for s in _COMMAND_STATES},
    **{(s, verb): s for s in _COMMAND_STATES for verb in ("NOOP", "HELP", "VRFY")},
    **{(s, "QUIT"): State.CLOSED for s in _COMMAND_STATES},
    (_R, "MAIL"): _M,
    (_M, "RCPT"): _T,
    (_T, "RCPT"): _T,
    (_T, "DATA"): State.DATA,
    (State.DATA, "end of data"): State.WAIT_MESSAGE,
    (State.DATA, "data refused"): _R,
    (State.WAIT_MESSAGE, "answer"): _R,
    (_C, "STARTTLS"): State.WAIT_TLS,
    (_R, "STARTTLS"): State.WAIT_TLS,
    (State.WAIT_TLS, "tls started"): _C,
    (_R, "AUTH"): State.AUTH,
    (State.AUTH, "challenge"): State.AUTH,
    (State.AUTH, "credentials"): State.WAIT_AUTH,
    (State.AUTH, "auth aborted"): _R,
    (State.WAIT_AUTH, "answer"): _R,
}

# Bad-sequence replies that say more than the generic one.
_SEQUENCE_ERRORS: Final[dict[tuple[State, str], Reply]] = {
    (_M, "DATA"): Reply(554, "5.5.1", "Error: no valid recipients"),
    **{(_C, v): Reply(503, "5.5.1", "Error: send HELO/EHLO first") for v in ("MAIL", "AUTH")},
    (_M, "MAIL"): Reply(503, "5.5.1", "Error: nested MAIL command"),
    (_T, "MAIL"): Reply(503, "5.5.1", "Error: nested MAIL command"),
    (_C, "RCPT"): Reply(503, "5.5.1", "Error: need MAIL command"),
    (_R, "RCPT"): Reply(503, "5.5.1", "Error: need MAIL command"),
    (_C, "DATA"): Reply(503, "5.5.1", "Error: need RCPT command"),
    (_R, "DATA"): Reply(503, "5.5.1", "Error: need RCPT command"),
}
_IN_TRANSACTION: Final = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
_SEQUENCE_ERRORS.update({(s, v): _IN_TRANSACTION for s in (_M, _T) for v in ("STARTTLS", "AUTH")})
_BAD_SEQUENCE: Final = Reply(503, "5.5.1", "Error: bad sequence of commands")

_R_OK: Final = Reply(250, "2.0.0", "Ok").to_bytes()
_R_MAIL_OK: Final = Reply(250, "2.1.0", "Ok").to_bytes()
_R_RCPT_OK: Final = Reply(250, "2.1.5", "Ok").to_bytes()
_R_DATA_GO: Final = Reply(354, None, "End data with <CR><LF>.<CR><LF>").to_bytes()
_R_BYE: Final = Reply(221, "2.0.0", "Bye").to_bytes()
_R_HELP: Final = Reply(
    214, "2.0.0", "See RFC 5321: https://www.rfc-editor.org/rfc/rfc5321"
).to_bytes()
_R_VRFY: Final = Reply(
    252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"
).to_bytes()
_R_TLS_GO: Final = Reply(220, "2.0.0", "Ready to start TLS").to_bytes()
_R_AUTH_OK: Final = Reply(235, "2.7.0", "Authentication successful").to_bytes()
_R_AUTH_EMPTY: Final = b"334 \r\n"
_R_AUTH_USERNAME: Final = b"334 VXNlcm5hbWU6\r\n"  # "Username:"
_R_AUTH_PASSWORD: Final = b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
_R_TOO_MANY_ERRORS: Final = Reply(421, "4.7.0", "Error: too many errors").to_bytes()

_E_UNKNOWN: Final = Reply(500, "5.5.2", "Error: command not recognized")
_E_LINE_TOO_LONG: Final = Reply(500, "5.5.2", "Error: line too long")
_E_BARE_LF: Final = Reply(500, "5.5.2", "Error: bare <LF> received; commands end with <CR><LF>")
_E_BARE_CR: Final = Reply(500, "5.5.2", "Error: bare <CR> received in command")
_E_BAD_BYTES: Final = Reply(500, "5.5.2", "Error: invalid characters in command")
_E_SMTPUTF8: Final = Reply(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8")
_E_BAD_SENDER: Final = Reply(501, "5.1.7", "Error: bad sender address syntax")
_E_BAD_RCPT: Final = Reply(501, "5.1.3", "Error: bad recipient address syntax")
_E_RELAY: Final = Reply(554, "5.7.1", "Error: relay access denied")
_E_TOO_MANY_RCPTS: Final = Reply(452, "4.5.3", "Error: too many recipients")
_E_MSG_TOO_BIG: Final = Reply(552, "5.3.4", "Error: message size exceeds fixed limit")
_E_BARE_NEWLINE_DATA: Final = Reply(
    550, "5.6.0", "Error: bare <CR> or <LF> in message content; lines must end with <CR><LF>"
)
_E_AUTH_REQUIRED: Final = Reply(530, "5.7.0", "Error: authentication required")
_E_AUTH_CANCELLED: Final = Reply(501, "5.0.0", "Authentication cancelled")
_E_AUTH_DECODE: Final = Reply(501, "5.5.2", "Error: cannot decode AUTH response")
_E_AUTH_FAILED: Final = Reply(535, "5.7.8", "Error: authentication credentials invalid")
_E_AUTH_MECH: Final = Reply(504, "5.5.4", "Error: unrecognized authentication type")
_E_AUTH_NEEDS_TLS: Final = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
_E_AUTH_DISABLED: Final = Reply(503, "5.5.1", "Error: authentication not enabled")
_E_AUTH_TWICE: Final = Reply(503, "5.5.1", "Error: already authenticated")
_E_TLS_UNAVAILABLE: Final = Reply(454, "4.7.0", "TLS not available")
_E_TLS_TWICE: Final = Reply(503, "5.5.1", "Error: TLS already active")
_E_NO_PARAMS: Final = Reply(555, "5.5.4", "Error: unsupported parameter")

_TOO_LONG: Final = b""  # _read_line's marker: a real line always holds at least b"\n"


def _decode_b64(text: str) -> bytes | None:
    if text == "=":
        return b""
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


class ServerSession:
    """One SMTP server conversation, without I/O. See the module docstring."""

    __slots__ = (
        "_auth_mechanism",
        "_auth_user",
        "_auth_username",
        "_buf",
        "_client_ip",
        "_closing",
        "_data_fresh",
        "_data_oversize",
        "_data_scan",
        "_discarding",
        "_envelope",
        "_eof",
        "_errors",
        "_esmtp",
        "_helo",
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
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._eof = False
        self._closing: Close | None = None
        self._errors = 0
        self._discarding = False
        self._helo = ""
        self._esmtp = False
        self._auth_user: str | None = None
        self._auth_mechanism = ""
        self._auth_username: str | None = None
        self._envelope: Envelope | None = None
        self._data_scan = 0
        self._data_fresh = True
        self._data_oversize = False

    # -- public surface ---------------------------------------------------

    @property
    def tls(self) -> bool:
        return self._tls

    @property
    def authenticated_user(self) -> str | None:
        return self._auth_user

    @property
    def awaiting_answer(self) -> bool:
        return self._state in _WAITING

    @property
    def state(self) -> State:
        return self._state

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed (bounded unless waiting)."""
        return len(self._buf)

    def greeting(self) -> None:
        self._out.append(Reply(220, None, f"{self._policy.hostname} ESMTP smtplb").to_bytes())

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

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` means the client closed its side."""
        if not data:
            self._eof = True
        elif self._state is not State.CLOSED:
            self._buf += data

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
                self._state = State.CLOSED
                return self._closing
            state = self._state
            if state in _WAITING:
                return NEED_DATA
            if state is State.DATA:
                event = self._read_data()
            else:
                line = self._read_line()
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
        self._goto("answer")
        self._reply(reply)

    def answer_auth(self, ok: bool, refusal: Reply | None = None) -> None:
        """``refusal`` (e.g. a lockout's 454 4.7.0) replaces the usual 535."""
        self._expect(State.WAIT_AUTH)
        self._goto("answer")
        if ok:
            self._auth_user = self._auth_username
            self._out.append(_R_AUTH_OK)
        else:
            self._error(refusal or _E_AUTH_FAILED)
        self._auth_username = None

    def tls_started(self) -> None:
        """RFC 3207: forget everything learnt before TLS, and drop any
        plaintext the client pipelined after STARTTLS (command injection)."""
        self._expect(State.WAIT_TLS)
        self._goto("tls started")
        self._tls = True
        self._buf.clear()
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
            f"rcpts={rcpts}, errors={self._errors}, buffered={len(self._buf)})"
        )

    # -- plumbing -----------------------------------------------------------

    def _expect(self, state: State) -> None:
        if self._state is not state:
            raise SessionStateError(f"expected state {state.value}, session is {self!r}")

    def _goto(self, trigger: str) -> None:
        self._state = _TRANSITIONS[(self._state, trigger)]

    def _reply(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())
        if reply.code == 421 and self._closing is None:  # 421 always closes the channel
            self._closing = Close(f"replied {reply}")

    def _error(self, reply: Reply) -> None:
        """Answer a client error; too many of them end the session."""
        self._errors += 1
        self._out.append(reply.to_bytes())
        if self._errors > self._policy.max_errors and self._closing is None:
            self._out.append(_R_TOO_MANY_ERRORS)
            self._closing = Close("too many errors")

    def _read_line(self) -> bytes | None:
        """The next raw line incl. its LF, ``_TOO_LONG``, or None (need more)."""
        buf = self._buf
        if self._discarding:
            end = buf.find(b"\n")
            if end < 0:
                buf.clear()
                return None
            del buf[: end + 1]
            self._discarding = False
            return _TOO_LONG
        limit = self._policy.max_line_length
        end = buf.find(b"\n", 0, limit)
        if end >= 0:
            line = bytes(buf[: end + 1])
            del buf[: end + 1]
            return line
        if len(buf) < limit:
            return None
        self._discarding = True
        return self._read_line()

    def _read_data(self) -> Event | NeedData | None:
        buf = self._buf
        if self._data_fresh:  # ".\r\n" right at the start: an empty message
            if len(buf) < 3 and b".\r\n".startswith(buf):
                return NEED_DATA
            self._data_fresh = False
            if buf.startswith(b".\r\n"):
                del buf[:3]
                return self._end_of_data(b"")
        end = buf.find(b"\r\n.\r\n", self._data_scan)
        if end < 0:
            limit = self._policy.max_message_size
            if len(buf) > limit + 4:
                # Over the limit whatever comes next: keep only what could be
                # the start of the terminator.
                self._data_oversize = True
                del buf[:-4]
            self._data_scan = max(0, len(buf) - 4)
            return NEED_DATA
        size = end + 2  # the content keeps the CRLF of its last line
        if self._data_oversize or size > self._policy.max_message_size:
            del buf[: end + 5]
            return self._end_of_data(None)
        view = memoryview(buf)
        try:
            part = view[:size]
            raw = bytes(part)
            part.release()
        finally:
            view.release()
        del buf[: end + 5]
        return self._end_of_data(raw)

    def _end_of_data(self, raw: bytes | None) -> Event | None:
        """``raw`` is the content (None: it was too big and got dropped)."""
        envelope = self._envelope
        assert envelope is not None
        if raw is None:
            self._refuse_data(_E_MSG_TOO_BIG)
            return None
        crlf = raw.count(b"\r\n")
        if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
            self._refuse_data(_E_BARE_NEWLINE_DATA)
            return None
        data = raw.replace(b"\r\n.", b"\r\n")
        if data.startswith(b"."):
            data = data[1:]
        self._goto("end of data")
        return MessageReceived(envelope, data)

    def _refuse_data(self, reply: Reply) -> None:
        self._goto("data refused")
        self._envelope = None
        self._out.append(reply.to_bytes())

    def _handle_line(self, raw: bytes) -> Event | None:
        problem: Reply | None = None
        text = ""
        utf8 = False
        if not raw:  # _TOO_LONG
            problem = _E_LINE_TOO_LONG
        elif not raw.endswith(b"\r\n"):
            problem = _E_BARE_LF
        elif b"\r" in raw[:-2]:
            problem = _E_BARE_CR
        else:
            line = raw[:-2]
            try:
                text = line.decode("ascii")
            except UnicodeDecodeError:
                try:
                    text = line.decode("utf-8")
                    utf8 = True
                except UnicodeDecodeError:
                    problem = _E_BAD_BYTES
        if self._state is State.AUTH:
            if problem is not None:
                self._goto("auth aborted")
                self._error(problem)
                return None
            return self._auth_response(text)
        if problem is not None:
            self._error(problem)
            return None
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        handler = _COMMANDS.get(verb)
        if handler is None or (utf8 and verb not in ("MAIL", "RCPT")):
            self._error(_E_UNKNOWN if handler is None else _E_BAD_BYTES)
            return None
        key = (self._state, verb)
        if key not in _TRANSITIONS:
            self._error(_SEQUENCE_ERRORS.get(key, _BAD_SEQUENCE))
            return None
        return handler(self, arg)

    def _syntax(self, usage: str) -> None:
        self._error(Reply(501, "5.5.4", f"Syntax: {usage}"))

    # -- commands -----------------------------------------------------------
    # Each runs only where _TRANSITIONS allows its verb; it either replies
    # with an error and leaves the state alone, or calls _goto(verb).

    def _hello(self, verb: str, arg: str) -> None:
        name = arg.strip().partition(" ")[0]
        if not name:
            self._syntax(f"{verb} hostname")
            return
        self._goto(verb)
        self._helo = name
        self._esmtp = verb == "EHLO"
        self._envelope = None
        if verb == "HELO":
            self._out.append(Reply(250, None, self._policy.hostname).to_bytes())
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
        self._out.append(Reply(250, None, "\n".join(lines)).to_bytes())

    def _cmd_ehlo(self, arg: str) -> None:
        self._hello("EHLO", arg)

    def _cmd_helo(self, arg: str) -> None:
        self._hello("HELO", arg)

    def _cmd_mail(self, arg: str) -> None:
        policy = self._policy
        if policy.require_auth and self._auth_user is None:
            self._error(_E_AUTH_REQUIRED)
            return
        parsed = parse_path(arg[5:]) if arg[:5].upper() == "FROM:" else None
        if parsed is None:
            self._syntax("MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8]")
            return
        address, params = parsed
        if address and not valid_address(address):
            self._error(_E_BAD_SENDER)
            return
        size: int | None = None
        smtputf8 = body_8bit = False
        for param in params:
            key, _, value = param.partition("=")
            key = key.upper()
            if key == "SIZE" and value.isdigit() and value.isascii():
                size = int(value)
            elif key == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
                body_8bit = value.upper() == "8BITMIME"
            elif key == "SMTPUTF8" and not value:
                smtputf8 = True
            elif key == "AUTH" and value:  # RFC 4954 AUTH=<mailbox>: accepted, ignored
                pass
            elif key in ("SIZE", "BODY", "SMTPUTF8"):
                self._syntax(f"bad value for MAIL parameter {key}")
                return
            else:
                self._error(_E_NO_PARAMS)
                return
        if not smtputf8 and not address.isascii():
            self._error(_E_SMTPUTF8)
            return
        if size is not None and size > policy.max_message_size:
            self._error(_E_MSG_TOO_BIG)
            return
        self._goto("MAIL")
        self._envelope = Envelope(
            mail_from=address,
            helo=self._helo,
            client_ip=self._client_ip,
            auth_user=self._auth_user,
            tls=self._tls,
            smtputf8=smtputf8,
            body_8bit=body_8bit,
            size_hint=size,
        )
        self._out.append(_R_MAIL_OK)

    def _cmd_rcpt(self, arg: str) -> None:
        envelope = self._envelope
        assert envelope is not None
        parsed = parse_path(arg[3:]) if arg[:3].upper() == "TO:" else None
        if parsed is None:
            self._syntax("RCPT TO:<address>")
            return
        address, params = parsed
        if not valid_address(address):
            self._error(_E_BAD_RCPT)
            return
        if params:
            self._error(_E_NO_PARAMS)
            return
        if not envelope.smtputf8 and not address.isascii():
            self._error(_E_SMTPUTF8)
            return
        policy = self._policy
        if not policy.relay_allowed and self._auth_user is None:
            self._error(_E_RELAY)
            return
        if len(envelope.rcpt_to) >= policy.max_recipients:
            self._out.append(_E_TOO_MANY_RCPTS.to_bytes())
            return
        if policy.check_recipient is not None:
            refusal = policy.check_recipient(address)
            if refusal is not None:
                self._reply(refusal)
                return
        self._goto("RCPT")
        if address not in envelope.rcpt_to:
            envelope.rcpt_to.append(address)
        self._out.append(_R_RCPT_OK)

    def _cmd_data(self, arg: str) -> None:
        if arg.strip():
            self._syntax("DATA")
            return
        self._goto("DATA")
        self._data_scan = 0
        self._data_fresh = True
        self._data_oversize = False
        self._out.append(_R_DATA_GO)

    def _cmd_rset(self, arg: str) -> None:
        if arg.strip():
            self._syntax("RSET")
            return
        self._goto("RSET")
        self._envelope = None
        self._out.append(_R_OK)

    def _cmd_noop(self, arg: str) -> None:
        self._out.append(_R_OK)

    def _cmd_help(self, arg: str) -> None:
        self._out.append(_R_HELP)

    def _cmd_vrfy(self, arg: str) -> None:
        self._out.append(_R_VRFY)

    def _cmd_quit(self, arg: str) -> Event:
        self._goto("QUIT")
        self._out.append(_R_BYE)
        self._closing = Close("quit")
        return self._closing

    def _cmd_starttls(self, arg: str) -> Event | None:
        if arg.strip():
            self._syntax("STARTTLS")
        elif self._tls:
            self._error(_E_TLS_TWICE)
        elif not self._policy.starttls_available:
            self._reply(_E_TLS_UNAVAILABLE)
        else:
            self._goto("STARTTLS")
            self._out.append(_R_TLS_GO)
            return StartTLS()
        return None

    def _cmd_auth(self, arg: str) -> Event | None:
        policy = self._policy
        if not policy.auth_enabled:
            self._error(_E_AUTH_DISABLED)
            return None
        if not self._esmtp:
            self._error(_SEQUENCE_ERRORS[(_C, "AUTH")])
            return None
        if self._auth_user is not None:
            self._error(_E_AUTH_TWICE)
            return None
        if not (self._tls or policy.auth_without_tls):
            self._error(_E_AUTH_NEEDS_TLS)
            return None
        mechanism, _, initial = arg.strip().partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            self._error(_E_AUTH_MECH)
            return None
        self._goto("AUTH")
        self._auth_mechanism = mechanism
        self._auth_username = None
        if initial:
            return self._auth_response(initial.strip())
        self._out.append(_R_AUTH_EMPTY if mechanism == "PLAIN" else _R_AUTH_USERNAME)
        return None

    def _auth_response(self, text: str) -> Event | None:
        """One base64 response line while in state AUTH."""
        if text.strip() == "*":
            self._goto("auth aborted")
            self._out.append(_E_AUTH_CANCELLED.to_bytes())
            return None
        raw = _decode_b64(text.strip())
        decoded: str | None = None
        if raw is not None:
            try:
                decoded = raw.decode("utf-8")
            except UnicodeDecodeError:
                decoded = None
        if decoded is None:
            self._goto("auth aborted")
            self._error(_E_AUTH_DECODE)
            return None
        if self._auth_mechanism == "LOGIN":
            if self._auth_username is None:
                self._goto("challenge")
                self._auth_username = decoded
                self._out.append(_R_AUTH_PASSWORD)
                return None
            self._goto("credentials")
            return AuthRequest("LOGIN", self._auth_username, decoded)
        parts = decoded.split("\0")
        if len(parts) != 3 or not parts[1]:
            self._goto("auth aborted")
            self._error(_E_AUTH_DECODE)
            return None
        authzid, username, password = parts
        if authzid and authzid != username:  # acting as another user is not supported
            self._goto("auth aborted")
            self._error(_E_AUTH_FAILED)
            return None
        self._goto("credentials")
        self._auth_username = username
        return AuthRequest("PLAIN", username, password)


_Command = Callable[[ServerSession, str], "Event | None"]

_COMMANDS: Final[dict[str, _Command]] = {
    "EHLO": ServerSession._cmd_ehlo,
    "HELO": ServerSession._cmd_helo,
    "MAIL": ServerSession._cmd_mail,
    "RCPT": ServerSession._cmd_rcpt,
    "DATA": ServerSession._cmd_data,
    "RSET": ServerSession._cmd_rset,
    "NOOP": ServerSession._cmd_noop,
    "HELP": ServerSession._cmd_help,
    "VRFY": ServerSession._cmd_vrfy,
    "QUIT": ServerSession._cmd_quit,
    "STARTTLS": ServerSession._cmd_starttls,
    "AUTH": ServerSession._cmd_auth,
}

# Every verb is in the table and every table verb has a command.
assert {v for _, v in _TRANSITIONS if v.isupper()} == set(_COMMANDS)
