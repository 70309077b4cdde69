"""The asyncio side of SMTP intake: a thin adapter around ``ServerSession``.

``SmtpServerProtocol`` moves bytes between the transport and the session and
turns the session's events into work: a message goes to the
``MessageHandler`` (reading is paused until it answers, which bounds memory),
credentials go to the authenticator in a worker thread (scrypt is slow on
purpose), STARTTLS goes to ``loop.start_tls``. Timeouts are one timer per
connection that is re-armed only when it fires: activity just records the
time, so the hot path never touches the timer heap.

Three clocks run against a client (slowloris defence): ``idle_timeout``
between bytes, ``command_deadline`` from the first byte of a command line to
its end, and ``data_timeout`` for the whole of DATA, so trickling one byte at
a time does not keep a connection forever. ``ConnectionCap`` bounds the open
connections of all of a process's listeners; ``AuthThrottle`` slows down and
then locks out failed AUTH (a lockout is answered ``454 4.7.0``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Protocol, cast

from smtplb.intake.auth import AuthThrottle
from smtplb.intake.session import ServerSession, SessionPolicy
from smtplb.intake.session_events import AuthRequest, Close, MessageReceived, StartTLS
from smtplb.intake.session_state import State
from smtplb.model import Envelope
from smtplb.smtp.framing import NEED_DATA
from smtplb.smtp.reply import Reply

__all__ = ["ConnectionCap", "Listener", "MessageHandler", "SmtpServerProtocol"]

log = logging.getLogger("smtplb.intake")

HANDLER_FAILED = Reply(451, "4.3.0", "Error: local error in processing, try again later")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Error: too many connections from your address")
SERVER_FULL = Reply(421, "4.7.0", "Error: too many connections, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
_TLS_HANDSHAKE_TIMEOUT = 30.0


def auth_locked_out(seconds: float) -> Reply:
    minutes = max(1, -(-int(seconds) // 60))
    return Reply(
        454,
        "4.7.0",
        f"Error: too many failed authentication attempts from your address, "
        f"try again in {minutes} minute{'s' if minutes > 1 else ''}",
    )


class ConnectionCap:
    """Open SMTP connections across listeners: at most ``limit`` at once."""

    __slots__ = ("limit", "open")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def __repr__(self) -> str:
        return f"ConnectionCap({self.open}/{self.limit} open)"


class MessageHandler(Protocol):
    async def handle_message(self, envelope: Envelope, data: bytes) -> Reply: ...


class SmtpServerProtocol(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "_closed",
        "_counted",
        "_data_started",
        "_ip",
        "_last_activity",
        "_line_started",
        "_listener",
        "_loop",
        "_session",
        "_timer",
        "_transport",
    )

    def __init__(self, listener: Listener, loop: asyncio.AbstractEventLoop) -> None:
        self._listener = listener
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._session: ServerSession | None = None
        self._ip = ""
        self._counted = False
        self._closed = False
        self._last_activity = loop.time()
        self._line_started: float | None = None  # first byte of an unfinished command line
        self._data_started: float | None = None  # DATA began (354 sent)
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._ip = ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        listener = self._listener
        session = self._session = ServerSession(listener.policy_for(ip), ip)
        listener._connections.add(self)
        refusal = listener._admit(ip)
        if refusal is None:
            self._counted = True
            session.greeting()
        else:
            session.refuse(refusal)
        self._timer = self._loop.call_at(self._last_activity + listener._min_timeout, self._tick)
        self._pump()

    def data_received(self, data: bytes) -> None:
        self._last_activity = now = self._loop.time()
        session = self._session
        assert session is not None
        session.receive_data(data)
        self._pump()
        if session.state is State.DATA:
            self._line_started = None
            if self._data_started is None:
                self._data_started = now
            return
        self._data_started = None
        end = data.rfind(b"\n")
        if end == len(data) - 1:
            self._line_started = None  # every line received is complete
        elif end >= 0 or self._line_started is None:
            self._line_started = now  # a new line began in this chunk

    def eof_received(self) -> bool:
        session = self._session
        assert session is not None
        session.receive_data(b"")
        self._pump()
        # Keep the socket half-open so a pending answer can still be sent;
        # over TLS asyncio closes anyway (and warns if asked otherwise).
        return not session.tls

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._session is not None:
            self._session.close()  # gives back the memory of a message in hand
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._listener._forget(self)

    # -- driving the session ------------------------------------------------

    def _pump(self) -> None:
        session = self._session
        transport = self._transport
        if session is None or transport is None:
            return
        while True:
            event = session.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Close):
                self._flush()
                self._close()
                return
            # The rest wait for an answer: stop reading until it comes.
            transport.pause_reading()
            self._flush()
            if isinstance(event, MessageReceived):
                self._listener._spawn(self._deliver(event))
            elif isinstance(event, AuthRequest):
                self._listener._spawn(self._authenticate(event))
            elif isinstance(event, StartTLS):
                self._listener._spawn(self._start_tls())
            return
        self._flush()

    def _flush(self) -> None:
        session = self._session
        transport = self._transport
        if session is None or transport is None:
            return
        data = session.data_to_send()
        if data and not transport.is_closing():
            transport.write(data)

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()

    def _resume(self) -> None:
        """After an answer: read again and work through what is buffered."""
        transport = self._transport
        session = self._session
        if self._closed or transport is None or session is None:
            return
        self._last_activity = now = self._loop.time()
        if self._line_started is not None:
            self._line_started = now  # time spent waiting on us is not the client's
        if self._listener._stopping and not session.awaiting_answer:
            session.refuse(SHUTTING_DOWN)
        transport.resume_reading()
        self._pump()
        if session.state is State.DATA:
            if self._data_started is None:
                self._data_started = now
        else:
            self._data_started = None

    async def _deliver(self, event: MessageReceived) -> None:
        try:
            reply = await self._listener._handler.handle_message(event.envelope, event.data)
        except Exception:
            log.exception("message handler failed for %r; answered %s", event, HANDLER_FAILED)
            reply = HANDLER_FAILED
        if self._closed or self._session is None:
            return
        self._session.answer_message(reply)
        self._resume()

    async def _authenticate(self, event: AuthRequest) -> None:
        throttle = self._listener._auth_throttle
        ip, user = self._ip, event.username
        shown = repr(user[:64])  # quoted and escaped: the log line stays one line
        refusal: Reply | None = None
        ok: bool | None = None
        verdict = throttle.begin(ip, user) if throttle is not None else None
        if verdict is not None and verdict.locked_for:
            refusal = auth_locked_out(verdict.locked_for)
            log.warning("AUTH refused (locked out): ip=%s user=%s", ip, shown)
        else:
            try:
                if verdict is not None and verdict.delay:
                    await asyncio.sleep(verdict.delay)
                if not self._closed:
                    ok = await self._check_password(user, event.password)
            finally:
                locked = throttle is not None and throttle.end(ip, user, ok)
            if ok is False:
                from_ip, for_user = throttle.failures(ip, user) if throttle else (0, 0)
                # One line per failure that fail2ban can match on "ip=<HOST>".
                log.warning(
                    "AUTH failed: ip=%s user=%s mechanism=%s failures_ip=%d failures_user=%d",
                    ip, shown, event.mechanism, from_ip, for_user,
                )  # fmt: skip
            if locked:
                assert throttle is not None
                log.warning(
                    "AUTH lockout: ip=%s user=%s for %.0fs after %d failures",
                    ip, shown, throttle.lockout, throttle.max_failures,
                )  # fmt: skip
        if self._closed or self._session is None:
            return
        self._session.answer_auth(bool(ok), refusal)
        self._resume()

    async def _check_password(self, username: str, password: str) -> bool:
        authenticate = self._listener._authenticate
        if authenticate is None:
            return False
        try:
            return await self._loop.run_in_executor(None, authenticate, username, password)
        except Exception:
            log.exception("authenticator failed for user %r", username)
            return False

    async def _start_tls(self) -> None:
        context = self._listener._ssl_context
        transport = self._transport
        if context is None or transport is None or self._closed:
            return
        try:
            new_transport = await self._loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=_TLS_HANDSHAKE_TIMEOUT,
            )
        except Exception as exc:  # handshake errors vary by event loop
            log.info("STARTTLS handshake with %s failed: %s", self._ip, exc)
            transport.abort()
            self.connection_lost(exc)  # the SSL layer never tells the protocol
            return
        if self._closed or new_transport is None:
            return
        self._transport = new_transport
        assert self._session is not None
        self._session.tls_started()
        self._resume()

    def _tick(self) -> None:
        """The timeout timer: close if idle too long, else re-arm for the rest."""
        self._timer = None
        session = self._session
        if self._closed or session is None:
            return
        listener = self._listener
        now = self._loop.time()
        if session.awaiting_answer:
            deadline = now + listener._idle_timeout  # the client is waiting on us
        else:
            deadline, which = self._last_activity + listener._idle_timeout, "idle_timeout"
            started = self._data_started if session.state is State.DATA else None
            if started is not None and started + listener._data_timeout < deadline:
                deadline, which = started + listener._data_timeout, "data_timeout"
            started = self._line_started if session.state is not State.DATA else None
            if started is not None and started + listener._command_deadline < deadline:
                deadline, which = started + listener._command_deadline, "command_deadline"
            if now >= deadline:
                log.info("%s reached: %r", which, session)
                session.timeout()
                self._pump()
                return
        # A deadline that starts later is at least _min_timeout away: look again by then.
        self._timer = self._loop.call_at(min(deadline, now + listener._min_timeout), self._tick)

    def _shutdown(self) -> None:
        """Listener stopping: close now unless a message or AUTH is in hand."""
        session = self._session
        if session is not None and not session.awaiting_answer:
            session.refuse(SHUTTING_DOWN)
            self._pump()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def __repr__(self) -> str:
        return f"SmtpServerProtocol({self._session!r})"


class Listener:
    """One listening socket feeding ``SmtpServerProtocol``s."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        handler: MessageHandler,
        policy_for: Callable[[str], SessionPolicy],
        ssl_context: ssl.SSLContext | None = None,
        authenticate: Callable[[str, str], bool] | None = None,
        idle_timeout: float = 300.0,
        data_timeout: float = 600.0,
        command_deadline: float = 30.0,
        max_connections_per_client: int = 50,
        cap: ConnectionCap | None = None,
        auth_throttle: AuthThrottle | None = None,
        refuse: Callable[[], Reply | None] | None = None,
        refuse_client: Callable[[str, int], Reply | None] | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.host = host
        self._port = port
        self._handler = handler
        self.policy_for = policy_for
        self._ssl_context = ssl_context
        self._authenticate = authenticate
        self._idle_timeout = idle_timeout
        self._data_timeout = data_timeout
        self._command_deadline = command_deadline
        self._min_timeout = min(idle_timeout, data_timeout, command_deadline)
        self._max_per_client = max_connections_per_client
        self._cap = cap
        self._auth_throttle = auth_throttle
        self._refuse = refuse
        # (client ip, its connections already open) -> a refusal: the sink's
        # per-client connection limits, answered like the provider it plays.
        self._refuse_client = refuse_client
        self._reuse_port = reuse_port
        self._server: asyncio.Server | None = None
        self._connections: set[SmtpServerProtocol] = set()
        self._per_client: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._all_closed: asyncio.Event | None = None

    @property
    def port(self) -> int:
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._server = await loop.create_server(
            lambda: SmtpServerProtocol(self, loop),
            self.host,
            self._port,
            reuse_port=self._reuse_port or None,
            backlog=1024,
        )
        self._port = self.port  # a restart binds the same port

    async def stop(self, grace: float = 10.0) -> None:
        """Stop listening, close idle sessions with 421 4.3.2, give those
        waiting on a message or AUTH answer ``grace`` seconds, abort the rest."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        self._all_closed = asyncio.Event()
        for conn in list(self._connections):
            conn._shutdown()
        if self._connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace)
            except TimeoutError:
                log.warning("aborting %d SMTP connections after %.0fs", self.connections, grace)
                for conn in list(self._connections):
                    conn._abort()
        await server.wait_closed()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)

    # -- used by SmtpServerProtocol ---------------------------------------------

    def _admit(self, ip: str) -> Reply | None:
        if self._stopping:
            return SHUTTING_DOWN
        if self._refuse is not None:
            refusal = self._refuse()
            if refusal is not None:
                return refusal
        cap = self._cap
        if cap is not None and cap.open >= cap.limit:
            log.info("refusing %s: %d connections open on this listener's process", ip, cap.open)
            return SERVER_FULL
        count = self._per_client.get(ip, 0)
        if self._refuse_client is not None:
            refusal = self._refuse_client(ip, count)
            if refusal is not None:
                return refusal
        if count >= self._max_per_client:
            log.info("refusing %s: %d connections already", ip, count)
            return TOO_MANY_CONNECTIONS
        self._per_client[ip] = count + 1
        if cap is not None:
            cap.open += 1
        return None

    def _forget(self, conn: SmtpServerProtocol) -> None:
        self._connections.discard(conn)
        if conn._counted:
            conn._counted = False
            if self._cap is not None:
                self._cap.open -= 1
            left = self._per_client.get(conn._ip, 1) - 1
            if left > 0:
                self._per_client[conn._ip] = left
            else:
                self._per_client.pop(conn._ip, None)
        if not self._connections and self._all_closed is not None:
            self._all_closed.set()

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __repr__(self) -> str:
        status = "serving" if self._server is not None else "stopped"
        return (
            f"Listener({self.host}:{self.port}, {status}, {self.connections} connections, "
            f"{len(self._tasks)} answers pending)"
        )
