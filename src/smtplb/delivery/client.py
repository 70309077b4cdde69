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

The legal moves are the table in ``client_state.py``. A ``421`` in any state
means the server is closing the channel: the pending command ends with that
reply and the session is ``CLOSED``. Anything that is not an SMTP reply raises
:class:`ProtocolError` and leaves the session ``ERROR`` for good.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from smtplb.delivery.client_events import (
    AuthDone,
    EhloDone,
    Event,
    Greeting,
    NoopDone,
    QuitDone,
    ResetDone,
    ServerClosing,
    StartTlsReady,
    StartTlsRefused,
    TransactionDone,
)
from smtplb.delivery.client_state import TRANSITIONS, Outcome, State, Trigger
from smtplb.smtp.framing import (
    CRLF,
    NEED_DATA,
    TOO_LONG,
    LineBuffer,
    NeedData,
    dot_stuff,
    only_crlf,
)
from smtplb.smtp.reply import Reply, parse_reply
from smtplb.smtp.verbs import Verb

# Hot-path aliases: an Enum class attribute goes through the metaclass's
# __getattr__ hook (Python 3.11), several times slower than a module global.
_CLOSED: Final = State.CLOSED
_MAIL: Final = Verb.MAIL
_NEXT: Final = Outcome.NEXT
_TO_DATA: Final = Outcome.TO_DATA
_GO_AHEAD: Final = Outcome.GO_AHEAD
_REPLIED: Final = Outcome.REPLIED

MAX_LINE: Final = 4096  # RFC 5321 says 512; real servers send longer texts
MAX_REPLY_LINES: Final = 500


class ProtocolError(Exception):
    """The server sent something that is not SMTP; the session cannot go on."""


class IllegalCommand(RuntimeError):
    """A command was issued in a state that does not allow it (a caller bug)."""


class ExtensionNotOffered(ValueError):
    """The transaction needs an extension the server did not announce in EHLO."""

    def __init__(self, extension: str) -> None:
        super().__init__(f"the server does not offer {extension}")
        self.extension = extension


# -- parsing ------------------------------------------------------------------


def _show(line: bytes) -> str:
    return repr(line[:80]) + ("..." if len(line) > 80 else "")


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
    plain_lines: bool
    mail: Reply | None = None
    rcpts: list[Reply] = field(default_factory=list)
    accepted: int = 0
    data_reply: Reply | None = None

    def done(self, standin: Reply) -> TransactionDone:
        """The event; ``standin`` answers for recipients the server never answered."""
        mail = self.mail or standin
        if not mail.is_success:
            return TransactionDone(mail, [mail] * len(self.rcpt_lines), None)
        missing = len(self.rcpt_lines) - len(self.rcpts)
        return TransactionDone(mail, self.rcpts + [standin] * missing, self.data_reply)


def _check_reply_line(line: bytes) -> None:
    """ProtocolError unless ``line`` (CRLF removed) can be a line of a reply."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"reply line longer than {MAX_LINE} bytes: {_show(line)}")
    if len(line) < 3 or not line[:3].isdigit() or line[0] not in b"2345":
        raise ProtocolError(f"reply line does not start with a 3-digit code: {_show(line)}")
    if len(line) > 3 and line[3] not in b" -":
        raise ProtocolError(f"reply code not followed by space or hyphen: {_show(line)}")


@functools.lru_cache(maxsize=256)
def _one_line_reply(line: bytes) -> Reply:
    """A one-line reply, checked and parsed once per distinct line: an upstream says
    the same few (``250 2.1.0 Ok``, ``354 …``) for every message. A bad line raises
    every time (an exception is not cached); one that differs each time (``queued
    as …``) just passes through."""
    _check_reply_line(line)
    return parse_reply([line])


# -- the session --------------------------------------------------------------


class ClientSession:
    """One SMTP client conversation, from the greeting to QUIT. See the module docstring."""

    def __init__(self) -> None:
        self._state = State.GREETING
        self._in = LineBuffer(MAX_LINE + 2)  # the limit leaves out the CRLF
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
        self._in.feed(data)

    def data_to_send(self) -> bytes:
        out = self.pieces_to_send()
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def pieces_to_send(self) -> list[bytes]:
        """What ``data_to_send()`` joins, unjoined: for a transport's ``writelines``,
        so that a message body goes out without being copied once more."""
        out = self._out
        self._out = []
        return out

    def next_event(self) -> Event | NeedData:
        if self._error is not None:
            raise ProtocolError(self._error)
        try:
            while True:
                if self._state is _CLOSED:
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
        self._in.clear()
        self._lines = []

    def _read_reply(self) -> Reply | None:
        while True:
            if not self._in.buf:  # (what read_line would say, without the call)
                return None
            raw = self._in.read_line()
            if raw is None:
                return None
            if raw is TOO_LONG:
                head = _show(self._in.head(81))
                raise ProtocolError(f"reply line longer than {MAX_LINE} bytes: {head}")
            line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if not self._lines and (len(line) == 3 or (len(line) > 3 and line[3] == 0x20)):
                return _one_line_reply(line)
            self._check_line(line)
            self._lines.append(line)
            if len(line) == 3 or line[3] == 0x20:
                lines, self._lines = self._lines, []
                return parse_reply(lines)
            if len(self._lines) >= MAX_REPLY_LINES:
                raise ProtocolError(f"reply longer than {MAX_REPLY_LINES} lines")

    def _check_line(self, line: bytes) -> None:
        _check_reply_line(line)
        if self._lines and line[:3] != self._lines[0][:3]:
            first = self._lines[0][:3].decode()
            raise ProtocolError(f"multi-line reply changes its code from {first}: {_show(line)}")

    def _handle(self, reply: Reply) -> Event | None:
        if reply.code == 421 and self._state in _CLOSING_EVENTS:
            event = _CLOSING_EVENTS[self._state](self, reply)
            self._closed_by = (self._state, reply)
            self._move(Outcome.CLOSING)
            return event
        return _HANDLERS[self._state](self, reply)

    def _move(self, trigger: Trigger) -> None:
        self._state = self._next_state(trigger)

    def _next_state(self, trigger: Trigger) -> State:
        try:
            return TRANSITIONS[self._state, trigger]
        except KeyError:
            if isinstance(trigger, Verb) or trigger is Outcome.TLS_ESTABLISHED:
                what = trigger.value
                raise IllegalCommand(f"cannot {what} while {self._state.value}") from None
            raise AssertionError(f"no transition for {trigger!r} in {self._state}") from None

    def _write(self, data: bytes) -> None:
        self._out.append(data)

    # -- commands -------------------------------------------------------------

    def ehlo(self, name: str) -> None:
        self._helo_name = _encode_name(name)
        self._move(Verb.EHLO)
        self._write(b"EHLO " + self._helo_name + CRLF)

    def helo(self, name: str) -> None:
        self._helo_name = _encode_name(name)
        self._move(Verb.HELO)
        self._write(b"HELO " + self._helo_name + CRLF)

    def starttls(self) -> None:
        self._move(Verb.STARTTLS)
        self._write(b"STARTTLS\r\n")

    def tls_established(self) -> None:
        """The caller finished the TLS handshake; what EHLO said before is void (RFC 3207)."""
        self._move(Outcome.TLS_ESTABLISHED)
        self._extensions = {}
        self._esmtp = False

    def auth(self, mechanism: Literal["PLAIN", "LOGIN"], username: str, password: str) -> None:
        user, secret = username.encode(), password.encode()
        self._next_state(Verb.AUTH)
        if mechanism == "PLAIN":
            line = b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0" + secret)
            responses: list[bytes] = []
        elif mechanism == "LOGIN":
            line = b"AUTH LOGIN"
            responses = [base64.b64encode(user), base64.b64encode(secret)]
        else:
            raise ValueError(f"unsupported AUTH mechanism {mechanism!r}")
        self._move(Verb.AUTH)
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
        plain_lines: bool = False,
    ) -> None:
        """Start one mail transaction; ``data`` uses CRLF and is not yet dot-stuffed.

        ``plain_lines``: the caller knows ``data`` is CRLF lines, none starting with a
        dot (:func:`~smtplb.smtp.framing.plain_lines`; intake read it so): it is sent
        as it is, without reading it for bare LF or dots once more."""
        self._next_state(_MAIL)
        if not rcpts:
            raise ValueError("a transaction needs at least one recipient")
        plain_lines = plain_lines and data.endswith(CRLF)
        if not plain_lines and not only_crlf(data) and data.count(b"\n") != data.count(b"\r\n"):
            # A bare LF line could end the data early on a lenient server (SMTP smuggling).
            # (A bare CR alone is let through: only_crlf is the fast test, the counts the rule.)
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
        self._move(_MAIL)
        self._tx = _Transaction(rcpt_lines, data, pipelined, plain_lines)
        if pipelined:
            self._write(b"".join([mail, *rcpt_lines, b"DATA\r\n"]))
        else:
            self._write(mail)

    def rset(self) -> None:
        self._move(Verb.RSET)
        self._write(b"RSET\r\n")

    def noop(self) -> None:
        self._move(Verb.NOOP)
        self._write(b"NOOP\r\n")

    def quit(self) -> None:
        self._move(Verb.QUIT)
        self._write(b"QUIT\r\n")

    # -- reply handlers, one per state ----------------------------------------

    def _on_greeting(self, reply: Reply) -> Event | None:
        self._move(_REPLIED)
        return Greeting(reply)

    def _on_unsolicited(self, reply: Reply) -> Event | None:
        raise ProtocolError(f"server sent a reply with no command pending: {reply}")

    def _on_ehlo(self, reply: Reply) -> Event | None:
        if reply.is_success:
            self._extensions = parse_extensions(reply.text)
            self._esmtp = True
            self._move(Outcome.ACCEPTED)
            return EhloDone(reply, dict(self._extensions))
        if reply.is_permanent:
            self._move(Outcome.FALLBACK)
            self._write(b"HELO " + self._helo_name + CRLF)
            return None
        self._move(Outcome.REFUSED)
        return EhloDone(reply, {})

    def _on_helo(self, reply: Reply) -> Event | None:
        self._extensions = {}
        self._esmtp = False
        self._move(_REPLIED)
        return EhloDone(reply, {})

    def _on_starttls(self, reply: Reply) -> Event | None:
        if reply.code != 220:
            self._move(Outcome.REFUSED)
            return StartTlsRefused(reply)
        if len(self._in) or self._lines:
            # Bytes sent before the handshake would be read as if they came over TLS.
            raise ProtocolError("server sent more data after its STARTTLS 220 reply")
        self._move(Outcome.READY)
        return StartTlsReady(reply)

    def _on_tls_handshake(self, reply: Reply) -> Event | None:
        raise ProtocolError(f"server sent a reply during the TLS handshake: {reply}")

    def _on_auth(self, reply: Reply) -> Event | None:
        if reply.code == 334:
            # Out of answers: "*" cancels the exchange (RFC 4954), the server says 501.
            response = self._auth_responses.pop(0) if self._auth_responses else b"*"
            self._write(response + CRLF)
            self._move(Outcome.CHALLENGE)
            return None
        self._auth_responses = []
        self._move(_REPLIED)
        return AuthDone(reply)

    def _on_mail(self, reply: Reply) -> Event | None:
        tx = self._current_tx()
        tx.mail = reply
        if tx.pipelined:
            self._move(_NEXT)
        elif reply.is_success:
            self._write(tx.rcpt_lines[0])
            self._move(Outcome.ACCEPTED)
        else:
            self._move(Outcome.REFUSED)
            return self._finish(reply)
        return None

    def _on_rcpt(self, reply: Reply) -> Event | None:
        tx = self._current_tx()
        assert tx.mail is not None
        tx.rcpts.append(reply if tx.mail.is_success else tx.mail)  # pipelined 503s say nothing new
        if reply.is_success and tx.mail.is_success:
            tx.accepted += 1
        seen = len(tx.rcpts)
        if seen < len(tx.rcpt_lines):
            if not tx.pipelined:
                self._write(tx.rcpt_lines[seen])
            self._move(_NEXT)
        elif tx.pipelined:
            self._move(_TO_DATA)
        elif tx.accepted:
            self._write(b"DATA\r\n")
            self._move(_TO_DATA)
        else:
            self._write(b"RSET\r\n")
            self._move(Outcome.TO_RSET)
        return None

    def _on_data(self, reply: Reply) -> Event | None:
        tx = self._current_tx()
        if reply.code == 354:
            if tx.accepted:
                self._out.extend(dot_stuff(tx.data, plain=tx.plain_lines))
            else:
                # RFC 2920 §3.1: DATA accepted with no recipient; end it with a lone dot.
                self._write(b".\r\n")
            self._move(_GO_AHEAD)
            return None
        if tx.accepted:
            tx.data_reply = reply
        self._write(b"RSET\r\n")
        self._move(Outcome.REFUSED)
        return None

    def _on_body(self, reply: Reply) -> Event | None:
        tx = self._current_tx()
        if tx.accepted:
            tx.data_reply = reply
        self._move(_REPLIED)
        return self._finish(reply)

    def _on_rset(self, reply: Reply) -> Event | None:
        self._move(_REPLIED)
        if self._tx is not None:
            return self._finish(reply)
        return ResetDone(reply)

    def _on_noop(self, reply: Reply) -> Event | None:
        self._move(_REPLIED)
        return NoopDone(reply)

    def _on_quit(self, reply: Reply) -> Event | None:
        self._move(_REPLIED)
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
