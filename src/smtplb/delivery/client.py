"""The SMTP client session without I/O: replies in, events out; commands in, bytes out.

Theory of operation
-------------------
A :class:`ClientSession` never touches a socket. Whoever drives it (the
asyncio adapter in ``connection.py``, or a test with a list of byte strings)
does three things, in any order:

* calls a command method (``ehlo``, ``send_transaction``, ``quit``, ...);
  the session queues the bytes to write, collected with ``data_to_send()``;
* hands whatever the server sent to ``receive_data()``;
* calls ``next_event()`` until it returns ``NEED_DATA``, then writes
  ``data_to_send()`` again: some replies make the session speak on its own
  (the next RCPT in lock-step, the message after ``354``, ``RSET`` when no
  recipient was accepted, ``HELO`` after a refused ``EHLO``).

Each command yields exactly one event once its reply (or replies) arrived, so
an adapter waits for "the next event" per command. A whole transaction is one
command: with PIPELINING (RFC 2920) MAIL, every RCPT and DATA go out in one
write; without it they go one at a time. Either way the caller gets one
:class:`TransactionDone`.

The legal moves are the table ``_TRANSITIONS``: ``(state, trigger) -> state``,
where an upper-case trigger is a command the caller issued and a lower-case
one is what a reply meant. A ``421`` in any state means the server is closing
the channel: the pending command ends with that reply and the session is
``CLOSED``. Anything that is not an SMTP reply raises :class:`ProtocolError`
and leaves the session ``ERROR`` for good.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from smtplb.model import Reply

MAX_LINE: Final = 4096  # RFC 5321 says 512; real servers send longer texts
MAX_REPLY_LINES: Final = 500
CRLF: Final = b"\r\n"


class ProtocolError(Exception):
    """The server sent something that is not SMTP; the session cannot go on."""


class IllegalCommand(RuntimeError):
    """A command was issued in a state that does not allow it (a caller bug)."""


class ExtensionNotOffered(ValueError):
    """The transaction needs an extension the server did not announce in EHLO."""

    def __init__(self, extension: str) -> None:
        super().__init__(f"the server does not offer {extension}")
        self.extension = extension


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


Trigger: TypeAlias = str

_CLOSABLE = [s for s in State if s not in (State.CLOSED, State.ERROR, State.TLS_HANDSHAKE)]

_TRANSITIONS: Final[dict[tuple[State, Trigger], State]] = {
    (State.GREETING, "replied"): State.IDLE,  # even a 554 banner: the caller QUITs
    (State.IDLE, "EHLO"): State.EHLO,
    (State.IDLE, "HELO"): State.HELO,
    (State.IDLE, "STARTTLS"): State.STARTTLS,
    (State.IDLE, "AUTH"): State.AUTH,
    (State.IDLE, "MAIL"): State.MAIL,
    (State.IDLE, "RSET"): State.RSET,
    (State.IDLE, "NOOP"): State.NOOP,
    (State.IDLE, "QUIT"): State.QUIT,
    (State.EHLO, "accepted"): State.IDLE,
    (State.EHLO, "fallback"): State.HELO,  # 5xx: the server may speak only RFC 821
    (State.EHLO, "refused"): State.IDLE,  # 4xx: tell the caller
    (State.HELO, "replied"): State.IDLE,
    (State.STARTTLS, "ready"): State.TLS_HANDSHAKE,
    (State.STARTTLS, "refused"): State.IDLE,
    (State.TLS_HANDSHAKE, "TLS_ESTABLISHED"): State.IDLE,  # the caller did the handshake
    (State.AUTH, "challenge"): State.AUTH,  # 334: one more response
    (State.AUTH, "replied"): State.IDLE,
    (State.MAIL, "accepted"): State.RCPT,
    (State.MAIL, "refused"): State.IDLE,  # lock-step: nothing else was sent
    (State.MAIL, "next"): State.RCPT,  # pipelined: the RCPT replies follow anyway
    (State.RCPT, "next"): State.RCPT,
    (State.RCPT, "to_data"): State.DATA,
    (State.RCPT, "to_rset"): State.RSET,  # lock-step, no recipient accepted
    (State.DATA, "go_ahead"): State.BODY,  # 354
    (State.DATA, "refused"): State.RSET,
    (State.BODY, "replied"): State.IDLE,
    (State.RSET, "replied"): State.IDLE,
    (State.NOOP, "replied"): State.IDLE,
    (State.QUIT, "replied"): State.CLOSED,
    **{(s, "closing"): State.CLOSED for s in _CLOSABLE},  # 421 anywhere
}


# -- events -------------------------------------------------------------------


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
        if not _ok(self.mail):
            return self.mail
        if not _ok(rcpt) or self.data is None:
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


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


# -- parsing ------------------------------------------------------------------

_ENHANCED = re.compile(r"([245])\.(?:[0-9]{1,3})\.(?:[0-9]{1,3})(?= |$)")


def _ok(reply: Reply) -> bool:
    return 200 <= reply.code < 300


def _show(line: bytes) -> str:
    return repr(line[:80]) + ("..." if len(line) > 80 else "")


def parse_reply(lines: list[bytes]) -> Reply:
    """One reply from its lines (without line endings), already checked for codes."""
    code = int(lines[0][:3])
    texts = [line[4:].decode("utf-8", "replace") for line in lines]
    enhanced = None
    match = _ENHANCED.match(texts[0])
    if match is not None and match.group(1) == chr(lines[0][0]):
        enhanced = match.group(0)
        prefix = enhanced + " "
        texts = [
            t[len(prefix) :] if t.startswith(prefix) else "" if t == enhanced else t for t in texts
        ]
    return Reply(code, enhanced, "\n".join(texts))


def parse_extensions(ehlo_text: str) -> dict[str, str]:
    """EHLO keywords (upper-cased) and their parameters; the first line is the greeting."""
    extensions: dict[str, str] = {}
    for line in ehlo_text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword.startswith("AUTH="):  # pre-RFC 4954 servers: "AUTH=LOGIN PLAIN"
            keyword, params = "AUTH", f"{keyword[5:]} {params}"
        if keyword == "AUTH":  # both forms may be announced; keep every mechanism once
            mechanisms = f"{extensions.get('AUTH', '')} {params}".upper().split()
            params = " ".join(dict.fromkeys(mechanisms))
        if keyword:
            extensions[keyword] = params.strip()
    return extensions


def _encode_address(address: str, smtputf8: bool) -> bytes:
    if "\r" in address or "\n" in address or "\0" in address:
        raise ValueError(f"address {address!r} contains CR, LF or NUL")
    try:
        return address.encode("utf-8" if smtputf8 else "ascii")
    except UnicodeEncodeError:
        raise ValueError(f"address {address!r} is not ASCII; pass smtputf8=True") from None


@dataclass(slots=True)
class _Transaction:
    rcpt_lines: list[bytes]
    data: bytes
    pipelined: bool
    mail: Reply | None = None
    rcpts: list[Reply] = field(default_factory=list)
    accepted: int = 0
    data_reply: Reply | None = None

    def done(self, standin: Reply) -> TransactionDone:
        """The event; ``standin`` answers for recipients the server never answered."""
        mail = self.mail or standin
        if not _ok(mail):
            return TransactionDone(mail, [mail] * len(self.rcpt_lines), None)
        missing = len(self.rcpt_lines) - len(self.rcpts)
        return TransactionDone(mail, self.rcpts + [standin] * missing, self.data_reply)


# -- the session --------------------------------------------------------------


class ClientSession:
    """One SMTP client conversation, from the greeting to QUIT. See the module docstring."""

    def __init__(self) -> None:
        self._state = State.GREETING
        self._buf = bytearray()
        self._pos = 0
        self._lines: list[bytes] = []
        self._out: list[bytes] = []
        self._extensions: dict[str, str] = {}
        self._esmtp = False
        self._helo_name = b""
        self._tx: _Transaction | None = None
        self._auth_responses: list[bytes] = []
        self._error: str | None = None
        self._closed_by: tuple[State, Reply] | None = None

    # -- what the session knows -----------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def extensions(self) -> Mapping[str, str]:
        return self._extensions

    @property
    def closed_by(self) -> tuple[State, Reply] | None:
        """The ``421`` that closed the session, and the state it arrived in."""
        return self._closed_by

    @property
    def esmtp(self) -> bool:
        return self._esmtp

    def supports(self, extension: str) -> bool:
        return extension.upper() in self._extensions

    @property
    def auth_mechanisms(self) -> frozenset[str]:
        return frozenset(self._extensions.get("AUTH", "").upper().split())

    @property
    def max_size(self) -> int | None:
        """The SIZE limit the server announced; None when unknown or unlimited (0)."""
        value = self._extensions.get("SIZE", "")
        return int(value) if value.isdigit() and int(value) > 0 else None

    def __repr__(self) -> str:
        parts = [self._state.value]
        if self._error:
            parts.append(self._error)
        parts.append("ESMTP" if self._esmtp else "no ESMTP")
        if self.supports("PIPELINING"):
            parts.append("PIPELINING")
        if self._tx is not None:
            parts.append(f"{len(self._tx.rcpts)}/{len(self._tx.rcpt_lines)} RCPT replies")
        return f"<ClientSession {', '.join(parts)}>"

    # -- bytes in, events out -------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def next_event(self) -> Event | NeedData:
        if self._error is not None:
            raise ProtocolError(self._error)
        try:
            while True:
                if self._state is State.CLOSED:
                    self._discard_input()  # whatever a closing server still says
                    return NEED_DATA
                reply = self._read_reply()
                if reply is None:
                    return NEED_DATA
                event = self._handle(reply)
                if event is not None:
                    return event
        except ProtocolError as exc:
            self._error = str(exc)
            self._state = State.ERROR
            raise

    def _discard_input(self) -> None:
        self._buf.clear()
        self._pos = 0
        self._lines = []

    def _read_reply(self) -> Reply | None:
        buf = self._buf
        while True:
            end = buf.find(b"\n", self._pos)
            if end < 0:
                if len(buf) - self._pos > MAX_LINE:
                    raise ProtocolError(
                        f"reply line longer than {MAX_LINE} bytes: {_show(bytes(buf[self._pos :]))}"
                    )
                if self._pos == len(buf):
                    buf.clear()
                else:
                    del buf[: self._pos]
                self._pos = 0
                return None
            stop = end - 1 if end > self._pos and buf[end - 1] == 0x0D else end
            line = bytes(buf[self._pos : stop])
            self._pos = end + 1
            self._check_line(line)
            self._lines.append(line)
            if len(line) == 3 or line[3] == 0x20:
                lines, self._lines = self._lines, []
                return parse_reply(lines)
            if len(self._lines) >= MAX_REPLY_LINES:
                raise ProtocolError(f"reply longer than {MAX_REPLY_LINES} lines")

    def _check_line(self, line: bytes) -> None:
        if len(line) > MAX_LINE:
            raise ProtocolError(f"reply line longer than {MAX_LINE} bytes: {_show(line)}")
        if len(line) < 3 or not line[:3].isdigit() or line[0] not in b"2345":
            raise ProtocolError(f"reply line does not start with a 3-digit code: {_show(line)}")
        if len(line) > 3 and line[3] not in b" -":
            raise ProtocolError(f"reply code not followed by space or hyphen: {_show(line)}")
        if self._lines and line[:3] != self._lines[0][:3]:
            first = self._lines[0][:3].decode()
            raise ProtocolError(f"multi-line reply changes its code from {first}: {_show(line)}")

    def _handle(self, reply: Reply) -> Event | None:
        if reply.code == 421 and self._state in _CLOSING_EVENTS:
            event = _CLOSING_EVENTS[self._state](self, reply)
            self._closed_by = (self._state, reply)
            self._move("closing")
            return event
        return _HANDLERS[self._state](self, reply)

    def _move(self, trigger: Trigger) -> None:
        self._state = self._next_state(trigger)

    def _next_state(self, trigger: Trigger) -> State:
        try:
            return _TRANSITIONS[self._state, trigger]
        except KeyError:
            if trigger.isupper():
                raise IllegalCommand(f"cannot {trigger} while {self._state.value}") from None
            raise AssertionError(f"no transition for {trigger!r} in {self._state}") from None

    def _write(self, data: bytes) -> None:
        self._out.append(data)

    # -- commands -------------------------------------------------------------

    def ehlo(self, name: str) -> None:
        self._helo_name = _encode_name(name)
        self._move("EHLO")
        self._write(b"EHLO " + self._helo_name + CRLF)

    def helo(self, name: str) -> None:
        self._helo_name = _encode_name(name)
        self._move("HELO")
        self._write(b"HELO " + self._helo_name + CRLF)

    def starttls(self) -> None:
        self._move("STARTTLS")
        self._write(b"STARTTLS\r\n")

    def tls_established(self) -> None:
        """The caller finished the TLS handshake; what EHLO said before is void (RFC 3207)."""
        self._move("TLS_ESTABLISHED")
        self._extensions = {}
        self._esmtp = False

    def auth(self, mechanism: Literal["PLAIN", "LOGIN"], username: str, password: str) -> None:
        user, secret = username.encode(), password.encode()
        self._next_state("AUTH")
        if mechanism == "PLAIN":
            line = b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0" + secret)
            responses: list[bytes] = []
        elif mechanism == "LOGIN":
            line = b"AUTH LOGIN"
            responses = [base64.b64encode(user), base64.b64encode(secret)]
        else:
            raise ValueError(f"unsupported AUTH mechanism {mechanism!r}")
        self._move("AUTH")
        self._auth_responses = responses
        self._write(line + CRLF)

    def send_transaction(
        self,
        mail_from: str,
        rcpts: list[str],
        data: bytes,
        *,
        smtputf8: bool = False,
        body_8bit: bool = False,
    ) -> None:
        """Start one mail transaction; ``data`` uses CRLF and is not yet dot-stuffed."""
        self._next_state("MAIL")
        if not rcpts:
            raise ValueError("a transaction needs at least one recipient")
        if data.count(b"\n") != data.count(b"\r\n"):
            # A bare LF line could end the data early on a lenient server (SMTP smuggling).
            raise ValueError("message data has bare LF line endings; convert them to CRLF")
        params = b""
        if "SIZE" in self._extensions:
            params += b" SIZE=%d" % len(data)
        if body_8bit and "8BITMIME" in self._extensions:
            params += b" BODY=8BITMIME"
        if smtputf8:
            if "SMTPUTF8" not in self._extensions:
                raise ExtensionNotOffered("SMTPUTF8")
            params += b" SMTPUTF8"
        mail = b"MAIL FROM:<" + _encode_address(mail_from, smtputf8) + b">" + params + CRLF
        rcpt_lines = [b"RCPT TO:<" + _encode_address(r, smtputf8) + b">\r\n" for r in rcpts]
        pipelined = "PIPELINING" in self._extensions
        self._move("MAIL")
        self._tx = _Transaction(rcpt_lines, data, pipelined)
        if pipelined:
            self._write(b"".join([mail, *rcpt_lines, b"DATA\r\n"]))
        else:
            self._write(mail)

    def rset(self) -> None:
        self._move("RSET")
        self._write(b"RSET\r\n")

    def noop(self) -> None:
        self._move("NOOP")
        self._write(b"NOOP\r\n")

    def quit(self) -> None:
        self._move("QUIT")
        self._write(b"QUIT\r\n")

    # -- reply handlers, one per state ----------------------------------------

    def _on_greeting(self, reply: Reply) -> Event | None:
        self._move("replied")
        return Greeting(reply)

    def _on_unsolicited(self, reply: Reply) -> Event | None:
        raise ProtocolError(f"server sent a reply with no command pending: {reply}")

    def _on_ehlo(self, reply: Reply) -> Event | None:
        if _ok(reply):
            self._extensions = parse_extensions(reply.text)
            self._esmtp = True
            self._move("accepted")
            return EhloDone(reply, dict(self._extensions))
        if reply.is_permanent:
            self._move("fallback")
            self._write(b"HELO " + self._helo_name + CRLF)
            return None
        self._move("refused")
        return EhloDone(reply, {})

    def _on_helo(self, reply: Reply) -> Event | None:
        self._extensions = {}
        self._esmtp = False
        self._move("replied")
        return EhloDone(reply, {})

    def _on_starttls(self, reply: Reply) -> Event | None:
        if reply.code != 220:
            self._move("refused")
            return StartTlsRefused(reply)
        if self._pos < len(self._buf) or self._lines:
            # Bytes sent before the handshake would be read as if they came over TLS.
            raise ProtocolError("server sent more data after its STARTTLS 220 reply")
        self._move("ready")
        return StartTlsReady(reply)

    def _on_tls_handshake(self, reply: Reply) -> Event | None:
        raise ProtocolError(f"server sent a reply during the TLS handshake: {reply}")

    def _on_auth(self, reply: Reply) -> Event | None:
        if reply.code == 334:
            # Out of answers: "*" cancels the exchange (RFC 4954), the server says 501.
            response = self._auth_responses.pop(0) if self._auth_responses else b"*"
            self._write(response + CRLF)
            self._move("challenge")
            return None
        self._auth_responses = []
        self._move("replied")
        return AuthDone(reply)

    def _on_mail(self, reply: Reply) -> Event | None:
        tx = self._current_tx()
        tx.mail = reply
        if tx.pipelined:
            self._move("next")
        elif _ok(reply):
            self._write(tx.rcpt_lines[0])
            self._move("accepted")
        else:
            self._move("refused")
            return self._finish(reply)
        return None

    def _on_rcpt(self, reply: Reply) -> Event | None:
        tx = self._current_tx()
        assert tx.mail is not None
        tx.rcpts.append(reply if _ok(tx.mail) else tx.mail)  # pipelined 503s say nothing new
        if _ok(reply) and _ok(tx.mail):
            tx.accepted += 1
        seen = len(tx.rcpts)
        if seen < len(tx.rcpt_lines):
            if not tx.pipelined:
                self._write(tx.rcpt_lines[seen])
            self._move("next")
        elif tx.pipelined:
            self._move("to_data")
        elif tx.accepted:
            self._write(b"DATA\r\n")
            self._move("to_data")
        else:
            self._write(b"RSET\r\n")
            self._move("to_rset")
        return None

    def _on_data(self, reply: Reply) -> Event | None:
        tx = self._current_tx()
        if reply.code == 354:
            if tx.accepted:
                self._write_message(tx.data)
            else:
                # RFC 2920 §3.1: DATA accepted with no recipient; end it with a lone dot.
                self._write(b".\r\n")
            self._move("go_ahead")
            return None
        if tx.accepted:
            tx.data_reply = reply
        self._write(b"RSET\r\n")
        self._move("refused")
        return None

    def _on_body(self, reply: Reply) -> Event | None:
        tx = self._current_tx()
        if tx.accepted:
            tx.data_reply = reply
        self._move("replied")
        return self._finish(reply)

    def _on_rset(self, reply: Reply) -> Event | None:
        self._move("replied")
        if self._tx is not None:
            return self._finish(reply)
        return ResetDone(reply)

    def _on_noop(self, reply: Reply) -> Event | None:
        self._move("replied")
        return NoopDone(reply)

    def _on_quit(self, reply: Reply) -> Event | None:
        self._move("replied")
        return QuitDone(reply)

    def _on_closing_tx(self, reply: Reply) -> Event:
        tx = self._current_tx()
        if tx.accepted and tx.data_reply is None:
            tx.data_reply = reply
        return self._finish(reply)

    def _current_tx(self) -> _Transaction:
        assert self._tx is not None, f"no transaction while {self._state.value}"
        return self._tx

    def _finish(self, standin: Reply) -> TransactionDone:
        done = self._current_tx().done(standin)
        self._tx = None
        return done

    def _write_message(self, data: bytes) -> None:
        stuffed = data.replace(b"\r\n.", b"\r\n..")  # no copy when there is nothing to stuff
        if stuffed.startswith(b"."):
            self._write(b".")
        self._write(stuffed)
        self._write(b".\r\n" if stuffed.endswith(CRLF) or not stuffed else b"\r\n.\r\n")


def _encode_name(name: str) -> bytes:
    if not name or any(c in name for c in " \r\n\0"):
        raise ValueError(f"EHLO name {name!r} is empty or contains whitespace")
    return name.encode("idna") if not name.isascii() else name.encode()


_Handler: TypeAlias = Callable[[ClientSession, Reply], Event | None]

_HANDLERS: Final[dict[State, _Handler]] = {
    State.GREETING: ClientSession._on_greeting,
    State.IDLE: ClientSession._on_unsolicited,
    State.EHLO: ClientSession._on_ehlo,
    State.HELO: ClientSession._on_helo,
    State.STARTTLS: ClientSession._on_starttls,
    State.TLS_HANDSHAKE: ClientSession._on_tls_handshake,
    State.AUTH: ClientSession._on_auth,
    State.MAIL: ClientSession._on_mail,
    State.RCPT: ClientSession._on_rcpt,
    State.DATA: ClientSession._on_data,
    State.BODY: ClientSession._on_body,
    State.RSET: ClientSession._on_rset,
    State.NOOP: ClientSession._on_noop,
    State.QUIT: ClientSession._on_quit,
}

# What a 421 ends, per state: the pending command's event with the 421 reply.
_CLOSING_EVENTS: Final[dict[State, Callable[[ClientSession, Reply], Event]]] = {
    State.GREETING: lambda s, r: Greeting(r),
    State.IDLE: lambda s, r: ServerClosing(r),
    State.EHLO: lambda s, r: EhloDone(r, {}),
    State.HELO: lambda s, r: EhloDone(r, {}),
    State.STARTTLS: lambda s, r: StartTlsRefused(r),
    State.AUTH: lambda s, r: AuthDone(r),
    State.MAIL: ClientSession._on_closing_tx,
    State.RCPT: ClientSession._on_closing_tx,
    State.DATA: ClientSession._on_closing_tx,
    State.BODY: ClientSession._on_closing_tx,
    State.RSET: lambda s, r: s._on_closing_tx(r) if s._tx is not None else ResetDone(r),
    State.NOOP: lambda s, r: NoopDone(r),
    State.QUIT: lambda s, r: QuitDone(r),
}
