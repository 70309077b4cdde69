"""One upstream SMTP connection: the network seam and the asyncio adapter.

:func:`connect` is the only place delivery opens a socket. Everything SMTP is
decided by the sans-IO :class:`~smtplb.delivery.client.ClientSession`; the
``_Link`` protocol here only moves bytes between it and the transport, hands
each event to the one coroutine waiting for it, and keeps the per-phase
timers. It is an ``asyncio.Protocol`` rather than streams: no reader task, no
extra buffer copies, on the hot path.

Errors: every connection-level failure is a :class:`ConnectError` whose
``reason`` says what failed. A transaction the server answered, even with
5xx, is a :class:`TransactionResult`, not an error.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeVar, cast

from smtplb.delivery.client import (
    ClientSession,
    ExtensionNotOffered,
    ProtocolError,
)
from smtplb.delivery.client_events import (
    AuthDone,
    EhloDone,
    Event,
    Greeting,
    NoopDone,
    QuitDone,
    ResetDone,
    StartTlsReady,
    StartTlsRefused,
    TransactionDone,
)
from smtplb.delivery.client_state import State
from smtplb.smtp.framing import NEED_DATA
from smtplb.smtp.reply import Reply

Reason = Literal["refused", "timeout", "tls", "banner", "protocol", "dropped", "auth"]

TransactionResult = TransactionDone  # the session's event is the result

_CLOSE_GRACE: Final = 5.0  # seconds to wait for a closed transport (TLS close_notify)

_P = TypeVar("_P", bound=asyncio.BaseProtocol)
_E = TypeVar("_E", bound=Event)


class ConnectError(Exception):
    """A connection-level failure; the message was not (known to be) accepted.

    ``reason``: ``refused`` (no TCP connection, incl. a ``source_ip`` that cannot
    be bound), ``timeout``, ``tls``, ``banner`` (greeting or EHLO/HELO refused),
    ``protocol`` (the server sent garbage), ``dropped`` (closed or ``421`` before
    the end-of-data reply), ``auth``. ``reply`` is the server's reply, if any.
    """

    def __init__(self, reason: Reason, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.reply = reply

    def __repr__(self) -> str:
        return f"ConnectError({self.reason!r}, {str(self)!r})"


@dataclass(frozen=True)
class ConnectionSettings:
    ehlo_name: str
    tls: Literal["opportunistic", "required", "none"] = "opportunistic"
    implicit_tls: bool = False
    tls_verify: bool = False
    username: str | None = None
    password: str | None = None
    connect_timeout: float = 30
    command_timeout: float = 60
    data_timeout: float = 300  # from the 354 to the end-of-data reply


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@functools.cache
def _tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:  # opportunistic TLS (RFC 7435): encrypt, do not authenticate
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def connect(
    host: str,
    port: int,
    protocol_factory: Callable[[], _P],
    *,
    source_ip: str | None = None,
    timeout: float,  # one budget for TCP + TLS handshake
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[asyncio.Transport, _P]:
    """A TCP connection (TLS from the start when ``ssl_context`` is given), or ConnectError."""
    loop = asyncio.get_running_loop()
    where = _hostport(host, port) + (f" from {source_ip}" if source_ip else "")
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_connection(
                protocol_factory,
                host,
                port,
                local_addr=(source_ip, 0) if source_ip else None,
                ssl=ssl_context,
                server_hostname=host if ssl_context else None,
                ssl_handshake_timeout=timeout if ssl_context else None,
            )
    except TimeoutError:
        raise ConnectError(
            "timeout", f"no connection to {where} within {timeout:g}s (connect_timeout)"
        ) from None
    except ssl.SSLError as exc:
        raise ConnectError("tls", f"TLS handshake with {where} failed: {exc}") from exc
    except OSError as exc:
        raise ConnectError("refused", f"cannot connect to {where}: {exc}") from exc
    return transport, protocol


class _Link(asyncio.Protocol):
    """Feeds a session from a transport; hands its events to the one waiting coroutine."""

    def __init__(self, session: ClientSession, settings: ConnectionSettings, peer: str) -> None:
        self.session = session
        self.settings = settings
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.error: ConnectError | None = None  # why the link is dead
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._events: list[Event] = []  # arrived before anyone waited (the greeting)
        self._waiter: asyncio.Future[Event] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._activity = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._activity = self._loop.time()
        session = self.session
        session.receive_data(data)
        try:
            while (event := session.next_event()) is not NEED_DATA:
                if self._waiter is not None and not self._waiter.done():
                    self._waiter.set_result(event)
                else:
                    self._events.append(event)
        except ProtocolError as exc:
            self.fail(ConnectError("protocol", f"{self.peer} broke the SMTP protocol: {exc}"))
            return
        self.flush()
        if session.state is State.CLOSED and self.transport is not None:
            self.transport.close()
        elif self._timer is not None and self._activity + self._timeout() < self._timer.when():
            self._arm()  # a shorter phase began (data_timeout < command_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            why = f": {exc}" if exc else ""
            state = self.session.state.value
            self.error = ConnectError(
                "dropped", f"{self.peer} closed the connection{why} ({state})"
            )
        self._wake(self.error)
        if not self.closed.done():
            self.closed.set_result(None)

    def flush(self) -> None:
        out = self.session.pieces_to_send()
        if out and self.transport is not None:
            self.transport.writelines(out)  # the body piece is not copied into a join

    def fail(self, error: ConnectError) -> None:
        """The link is dead: remember why, wake the waiter, drop the transport."""
        if self.error is None:
            self.error = error
        self._wake(self.error)
        if self.transport is not None:
            self.transport.abort()

    def _wake(self, error: ConnectError) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def alive(self) -> bool:
        return self.error is None and self.transport is not None and not self.transport.is_closing()

    async def wait(self) -> Event:
        """The next event, or ConnectError (dropped, timed out, garbage)."""
        if self._events:
            return self._events.pop(0)
        if self.error is not None:
            raise ConnectError(self.error.reason, str(self.error), self.error.reply)
        waiter: asyncio.Future[Event] = self._loop.create_future()
        self._waiter = waiter
        self._activity = now = self._loop.time()
        # The timer of an earlier wait stays armed (no timer made and cancelled per
        # command): when it fires first, _on_timer sees this wait's activity and
        # re-arms for the rest. Only a deadline earlier than it needs a new one.
        timer = self._timer
        if timer is None or now + self._timeout() < timer.when():
            self._arm()
        try:
            return await waiter
        except asyncio.CancelledError:
            # Replies may still come for the abandoned command: this link is done.
            state = self.session.state.value
            self.fail(ConnectError("dropped", f"cancelled while {state} on {self.peer}"))
            raise
        finally:
            self._waiter = None

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(self._activity + self._timeout(), self._on_timer)

    def _timeout(self) -> float:
        if self.session.state is State.BODY:
            return self.settings.data_timeout
        return self.settings.command_timeout

    def _on_timer(self) -> None:
        # Re-armed lazily rather than on every read: reads only note the time.
        if self._waiter is None or self._waiter.done():
            self._timer = None
            return
        timeout = self._timeout()
        due = self._activity + timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._on_timer)
            return
        self._timer = None
        setting = "data_timeout" if self.session.state is State.BODY else "command_timeout"
        state = self.session.state.value
        message = f"{self.peer} sent nothing for {timeout:g}s while {state} ({setting})"
        self.fail(ConnectError("timeout", message))

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        assert self.transport is not None
        timeout = self.settings.connect_timeout
        try:
            transport = await self._loop.start_tls(
                self.transport,
                self,
                context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            error = ConnectError("tls", f"TLS handshake with {self.peer} failed: {exc!r}")
            self.fail(error)
            if not self.closed.done():  # the raw transport no longer reports to us
                self.closed.set_result(None)
            raise error from exc
        if transport is None:
            raise ConnectError("tls", f"TLS handshake with {self.peer} gave no transport")
        self.transport = transport


class SmtpClientConnection:
    """One upstream SMTP connection, greeted and ready for transactions. Use :meth:`open`."""

    def __init__(
        self, host: str, port: int, settings: ConnectionSettings, source_ip: str | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.settings = settings
        self.source_ip = source_ip
        self._session = ClientSession()
        self._link: _Link | None = None
        self._tls = False
        self._messages_sent = 0

    @classmethod
    async def open(
        cls, host: str, port: int, settings: ConnectionSettings, *, source_ip: str | None = None
    ) -> SmtpClientConnection:
        """Connect, read the banner, EHLO, STARTTLS and AUTH as settings say; or ConnectError."""
        conn = cls(host, port, settings, source_ip)
        try:
            await conn._establish()
        except BaseException:
            conn.abort()
            raise
        return conn

    # -- what it is -------------------------------------------------------------

    @property
    def peer(self) -> str:
        return _hostport(self.host, self.port)

    @property
    def is_usable(self) -> bool:
        """Open, idle and in good standing: a transaction may start now."""
        link = self._link
        return link is not None and link.alive and self._session.state is State.IDLE

    @property
    def messages_sent(self) -> int:
        """Transactions completed on this connection, whatever their replies."""
        return self._messages_sent

    @property
    def tls_active(self) -> bool:
        return self._tls

    @property
    def extensions(self) -> Mapping[str, str]:
        return self._session.extensions

    def __repr__(self) -> str:
        link = self._link
        if self._session.state is State.CLOSED:
            state = "closed"
        elif link is not None and link.error is not None:
            state = f"dead ({link.error.reason})"
        else:
            state = self._session.state.value
        source = f" from {self.source_ip}" if self.source_ip else ""
        tls = ", TLS" if self._tls else ""
        return (
            f"<SmtpClientConnection {self.peer}{source} {state}{tls}, {self._messages_sent} sent>"
        )

    # -- transactions -----------------------------------------------------------

    async def send(
        self,
        mail_from: str,
        rcpts: list[str],
        data: bytes,
        *,
        smtputf8: bool = False,
        body_8bit: bool = False,
        plain_lines: bool = False,
    ) -> TransactionResult:
        """One transaction; ``data`` must use CRLF line endings (``plain_lines``: see
        :meth:`ClientSession.send_transaction`).

        Raises ConnectError when the connection dropped (or the server said
        ``421``) before the end-of-data reply: the message may not have been
        accepted and should be tried again, here or elsewhere.
        """
        link = self._ready_link()
        try:
            self._session.send_transaction(
                mail_from,
                rcpts,
                data,
                smtputf8=smtputf8,
                body_8bit=body_8bit,
                plain_lines=plain_lines,
            )
        except ExtensionNotOffered as exc:
            text = f"smtplb: {exc.extension} is required, but {self.peer} does not offer it"
            reply = Reply(550, "5.6.7", text)
            return TransactionResult(reply, [reply] * len(rcpts), None)
        link.flush()
        done = await self._expect(TransactionDone)
        self._messages_sent += 1
        closed_by = self._session.closed_by
        if closed_by is not None and closed_by[0] in (State.MAIL, State.RCPT, State.DATA):
            state, reply = closed_by
            message = f"{self.peer} closed the session while {state.value}: {reply}"
            raise ConnectError("dropped", message, reply)
        return done

    async def reset(self) -> None:
        link = self._ready_link()
        self._session.rset()
        link.flush()
        done = await self._expect(ResetDone)
        if not done.reply.is_success:
            self.abort()
            raise ConnectError("protocol", f"{self.peer} refused RSET: {done.reply}", done.reply)

    async def noop(self) -> Reply:
        link = self._ready_link()
        self._session.noop()
        link.flush()
        return (await self._expect(NoopDone)).reply

    async def quit(self) -> None:
        """Say QUIT, wait for the reply and the close; never raises (cancellation aside)."""
        link = self._link
        if link is None:
            return
        try:
            if link.alive and self._session.state is State.IDLE:
                self._session.quit()
                link.flush()
                await self._expect(QuitDone)
        except (ConnectError, ProtocolError):
            pass
        try:
            if link.transport is not None:
                link.transport.close()
            async with asyncio.timeout(_CLOSE_GRACE):
                await asyncio.shield(link.closed)
        except TimeoutError:
            pass
        finally:
            if not link.closed.done():
                self.abort()

    def abort(self) -> None:
        """Drop the connection now, without QUIT."""
        if self._link is not None:
            self._link.fail(ConnectError("dropped", f"connection to {self.peer} aborted"))

    # -- internals --------------------------------------------------------------

    def _ready_link(self) -> _Link:
        link = self._link
        if link is None or not link.alive or self._session.state in (State.CLOSED, State.ERROR):
            why = link.error if link is not None and link.error is not None else None
            reply = why.reply if why is not None else None
            detail = f": {why}" if why is not None else ""
            raise ConnectError("dropped", f"connection to {self.peer} is closed{detail}", reply)
        return link  # a session busy with another command raises IllegalCommand itself

    async def _expect(self, kind: type[_E]) -> _E:
        assert self._link is not None
        event = await self._link.wait()
        if not isinstance(event, kind):
            self.abort()
            message = f"{self.peer}: expected {kind.__name__}, got {event!r}"
            raise ConnectError("protocol", message, getattr(event, "reply", None))
        return event

    async def _command(self, kind: type[_E]) -> _E:
        assert self._link is not None
        self._link.flush()
        return await self._expect(kind)

    async def _establish(self) -> None:
        s = self.settings
        context = _tls_context(s.tls_verify) if s.implicit_tls else None
        _, self._link = await connect(
            self.host,
            self.port,
            lambda: _Link(self._session, s, self.peer),
            source_ip=self.source_ip,
            timeout=s.connect_timeout,
            ssl_context=context,
        )
        self._tls = context is not None
        greeting = await self._expect(Greeting)
        if not greeting.reply.is_success:
            await self.quit()
            message = f"{self.peer} refused the session: {greeting.reply}"
            raise ConnectError("banner", message, greeting.reply)
        await self._hello()
        if not self._tls and s.tls != "none":
            if self._session.supports("STARTTLS"):
                await self._starttls()
            elif s.tls == "required":
                message = (
                    f"{self.peer} does not offer STARTTLS and tls is 'required' "
                    "(set tls = 'opportunistic' to allow sending in clear)"
                )
                raise ConnectError("tls", message)
        if s.username is not None:
            await self._authenticate(s.username, s.password or "")

    async def _hello(self) -> None:
        self._session.ehlo(self.settings.ehlo_name)
        done = await self._command(EhloDone)
        if not done.reply.is_success:
            message = f"{self.peer} refused EHLO/HELO {self.settings.ehlo_name}: {done.reply}"
            raise ConnectError("banner", message, done.reply)

    async def _starttls(self) -> None:
        assert self._link is not None
        self._session.starttls()
        self._link.flush()
        event = await self._link.wait()
        if isinstance(event, StartTlsRefused):
            if self.settings.tls == "required" or self._session.state is State.CLOSED:
                message = f"{self.peer} refused STARTTLS: {event.reply}"
                raise ConnectError("tls", message, event.reply)
            return  # opportunistic: carry on in clear
        if not isinstance(event, StartTlsReady):
            self.abort()
            raise ConnectError("protocol", f"{self.peer}: expected a STARTTLS reply, got {event!r}")
        await self._link.start_tls(_tls_context(self.settings.tls_verify), self.host)
        self._session.tls_established()
        self._tls = True
        await self._hello()

    async def _authenticate(self, username: str, password: str) -> None:
        if not self._tls and not _is_loopback(self.host):
            message = (
                f"refusing to send the password of {username!r} to {self.peer} without TLS "
                "(set tls = 'required', or implicit_tls)"
            )
            raise ConnectError("auth", message)
        offered = self._session.auth_mechanisms
        mechanism: Literal["PLAIN", "LOGIN"]
        if "PLAIN" in offered:
            mechanism = "PLAIN"
        elif "LOGIN" in offered:
            mechanism = "LOGIN"
        else:
            listed = " ".join(sorted(offered)) or "none"
            message = f"{self.peer} offers no AUTH mechanism smtplb speaks (PLAIN, LOGIN): {listed}"
            raise ConnectError("auth", message)
        self._session.auth(mechanism, username, password)
        done = await self._command(AuthDone)
        if not done.reply.is_success:
            message = f"{self.peer} refused AUTH {mechanism} for {username!r}: {done.reply}"
            raise ConnectError("auth", message, done.reply)
