"""The smart sink: an SMTP server that behaves like a mail provider on purpose.

Per recipient domain a ``DomainRule`` says how often to accept, defer or
reject, how long to think before answering, and with which reply texts;
``unknown_users`` are answered ``550 5.1.1`` at RCPT. The random choices come
from one seeded generator, so a run over one connection is reproducible.
Accepted messages are kept in memory (``received``) and, with ``record_path``,
appended to a JSON-lines file. ``ThreadedSink`` runs one in a background
thread for tests; ``main()`` is ``python -m smtplb.sink``.

A profile in TOML::

    seed = 7
    unknown_users = ["nobody@example.test"]

    [domains."*"]
    accept = 1.0

    [domains."gmail.test"]
    accept = 0.8
    defer = 0.15
    reject = 0.05
    latency = 0.2                 # seconds before answering the data
    stage = "data"                # or "rcpt": decide per recipient at RCPT
    defer_reply = "421 4.7.28 Unusual rate of unsolicited mail, try again later"
    reject_reply = "550 5.7.1 Message rejected as spam"

Per client IP (the sending member's source address) the sink behaves like a
provider that limits senders: ``[clients."IP"]`` (or ``"*"`` for every IP)::

    [clients."127.0.0.2"]
    rate = "20/m"                 # messages accepted per minute (sliding window);
    throttle_reply = "421 4.7.28 ... rate limited"   # ... over it, at RCPT
    throttle = true               # every RCPT gets throttle_reply
    max_connections = 3           # concurrent sessions; more get connection_reply
    connection_reply = "421 4.7.0 Too many concurrent connections from this IP"
    block = true                  # every RCPT gets block_reply
    block_reply = "550 5.7.1 Service unavailable, client host blocked (poor reputation)"
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import itertools
import json
import random
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from smtplb.clock import Clock, SystemClock
from smtplb.intake.headers import header_value, parse_headers, split_message
from smtplb.intake.server import Listener
from smtplb.intake.session import SessionPolicy
from smtplb.model import Envelope, domain_of
from smtplb.sink.profile import (
    UNKNOWN_USER,
    SinkProfile,
    load_profile,
)
from smtplb.smtp.reply import Reply

_T = TypeVar("_T")

__all__ = ["ReceivedMessage", "SinkServer", "ThreadedSink", "main"]


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    envelope: Envelope
    data: bytes = field(repr=False)  # b"" when the sink keeps no content
    size: int
    message_id: str | None
    sha256: str
    ts: float

    @property
    def mail_from(self) -> str:
        return self.envelope.mail_from

    @property
    def rcpt_to(self) -> list[str]:
        return self.envelope.rcpt_to

    def record(self) -> dict[str, object]:
        return {
            "mail_from": self.envelope.mail_from,
            "rcpt_to": self.envelope.rcpt_to,
            "size": self.size,
            "message_id": self.message_id,
            "sha256": self.sha256,
            "ts": self.ts,
        }


class SinkServer:
    """The sink on one port; also the ``MessageHandler`` of its ``Listener``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        profile: SinkProfile | None = None,
        record_path: Path | None = None,
        *,
        keep_messages: bool = True,
        on_message: Callable[[ReceivedMessage], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.profile = profile if profile is not None else SinkProfile()
        self.record_path = record_path
        self.received: list[ReceivedMessage] = []
        self._counts = dict.fromkeys(
            ("accepted", "deferred", "rejected", "rcpt_deferred", "rcpt_rejected"), 0
        )
        # What the per-client rules ([clients."IP"]) refused.
        self._client_counts = dict.fromkeys(("throttled", "blocked", "connections_refused"), 0)
        self._accepted_at: dict[str, deque[float]] = {}  # per client IP, for its rate
        self._keep = keep_messages
        self._on_message = on_message
        self._clock = clock if clock is not None else SystemClock()
        self._rng = random.Random(self.profile.seed)
        self._ids = itertools.count(1)
        self._record: IO[str] | None = None
        self._listener = Listener(
            host=host,
            port=port,
            handler=self,
            policy_for=self._policy_for,
            refuse_client=self._refuse_client,
        )

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def host(self) -> str:
        return self._listener.host

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    @property
    def client_counts(self) -> dict[str, int]:
        """Refusals by the per-client rules: throttled, blocked, connections_refused."""
        return dict(self._client_counts)

    async def start(self) -> None:
        self._rng = random.Random(self.profile.seed)
        if self.record_path is not None:
            self._record = self._open_record(self.record_path)
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()
        if self._record is not None:
            self._record.close()
            self._record = None

    @staticmethod
    def _open_record(path: Path) -> IO[str]:
        return open(path, "a", encoding="utf-8", buffering=1)  # closed in stop()

    def _policy_for(self, client_ip: str) -> SessionPolicy:
        profile = self.profile
        return SessionPolicy(
            hostname=profile.hostname,
            max_message_size=profile.max_message_size,
            max_recipients=profile.max_recipients,
            relay_allowed=True,
            check_recipient=lambda address, _sender: self._check_recipient(address, client_ip),
        )

    def _refuse_client(self, ip: str, open_now: int) -> Reply | None:
        rule = self.profile.client_rule(ip)
        limit = None if rule is None else rule.max_connections
        if rule is not None and limit is not None and open_now >= limit:
            self._client_counts["connections_refused"] += 1
            return rule.connection_reply
        return None

    def _client_refusal(self, ip: str) -> Reply | None:
        """A blocked client, or one over its rate: the provider's reply."""
        rule = self.profile.client_rule(ip)
        if rule is None:
            return None
        if rule.block:
            self._client_counts["blocked"] += 1
            return rule.block_reply
        if rule.throttle:
            self._client_counts["throttled"] += 1
            return rule.throttle_reply
        if rule.rate is not None:
            count, per = rule.rate
            now = self._clock.monotonic()
            times = self._accepted_at.setdefault(ip, deque())
            while times and times[0] <= now - per:
                times.popleft()
            if len(times) >= count:
                self._client_counts["throttled"] += 1
                return rule.throttle_reply
        return None

    def _check_recipient(self, address: str, client_ip: str = "") -> Reply | None:
        refusal = self._client_refusal(client_ip)
        if refusal is not None:
            return refusal
        profile = self.profile
        if address.lower() in profile.unknown_users:
            self._counts["rcpt_rejected"] += 1
            return UNKNOWN_USER
        rule = profile.rule_for(domain_of(address))
        if rule.stage != "rcpt":
            return None
        reply = rule.draw(self._rng)
        if reply is not None:
            self._counts["rcpt_deferred" if reply.is_transient else "rcpt_rejected"] += 1
        return reply

    async def handle_message(self, envelope: Envelope, data: bytes) -> Reply:
        rule = self.profile.rule_for(domain_of(envelope.rcpt_to[0]))
        if rule.latency > 0:
            await asyncio.sleep(rule.latency)
        reply = rule.draw(self._rng) if rule.stage == "data" else None
        if reply is not None:
            self._counts["deferred" if reply.is_transient else "rejected"] += 1
            return reply
        message_id = header_value(parse_headers(split_message(data)[0]), "message-id")
        message = ReceivedMessage(
            envelope=envelope,
            data=data if self._keep else b"",
            size=len(data),
            message_id=message_id,
            sha256=hashlib.sha256(data).hexdigest(),
            ts=self._clock.wall(),
        )
        self._counts["accepted"] += 1
        if envelope.client_ip:
            self._accepted_at.setdefault(envelope.client_ip, deque()).append(
                self._clock.monotonic()
            )
        if self._keep:
            self.received.append(message)
        if self._record is not None:
            self._record.write(json.dumps(message.record(), ensure_ascii=False) + "\n")
        if self._on_message is not None:
            self._on_message(message)
        return Reply(250, "2.0.0", f"Ok: queued as S{next(self._ids):08d}")

    def __repr__(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in self._counts.items() if v)
        return f"SinkServer({self.host}:{self.port}, {counts or 'nothing yet'})"


class ThreadedSink:
    """A ``SinkServer`` on its own event loop in a background thread.

    ``restart()`` comes back on the same port. ``received`` and ``wait_for``
    are safe from any thread.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        profile: SinkProfile | None = None,
        record_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._profile = profile if profile is not None else SinkProfile()
        self._record_path = record_path
        self._cond = threading.Condition()
        self._received: list[ReceivedMessage] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: SinkServer | None = None
        self._stop: asyncio.Event | None = None

    def start(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self!r} is already running")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(ready),), name=f"sink-{self.port}", daemon=True
        )
        self._thread.start()
        try:
            ready.result(timeout)
        except BaseException:
            self._thread.join(timeout)
            self._thread = None
            raise

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = SinkServer(
                self.host,
                self.port,
                self._profile,
                self._record_path,
                on_message=self._on_message,
            )
            await server.start()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        self._server = server
        self.port = server.port
        ready.set_result(None)
        await self._stop.wait()
        await server.stop()

    def _on_message(self, message: ReceivedMessage) -> None:
        with self._cond:
            self._received.append(message)
            self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        self._thread = self._loop = self._server = self._stop = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _in_loop(self, fn: Callable[[], _T], timeout: float = 10.0) -> _T:
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{self!r} is not running")
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return future.result(timeout)

    @property
    def profile(self) -> SinkProfile:
        return self._profile

    @profile.setter
    def profile(self, profile: SinkProfile) -> None:
        """Change behaviour while running (e.g. start deferring everything)."""
        self._profile = profile
        server = self._server
        if server is not None:

            def swap() -> None:
                server.profile = profile

            self._in_loop(swap)

    @property
    def counts(self) -> dict[str, int]:
        server = self._server
        return self._in_loop(lambda: server.counts) if server is not None else {}

    @property
    def client_counts(self) -> dict[str, int]:
        server = self._server
        return self._in_loop(lambda: server.client_counts) if server is not None else {}

    @property
    def received(self) -> list[ReceivedMessage]:
        with self._cond:
            return list(self._received)

    def clear(self) -> None:
        with self._cond:
            self._received.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` messages were accepted; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._received) >= count, timeout)

    def __enter__(self) -> ThreadedSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return f"ThreadedSink({self.host}:{self.port}, {state}, {len(self._received)} received)"


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--listen must be HOST:PORT, e.g. 127.0.0.1:2526, not {text!r}")
    return host.strip("[]"), int(port)


_PROFILE_HELP = """\
a profile (TOML), e.g.:
  seed = 7                                # the random choices repeat with a seed
  unknown_users = ["nobody@example.test"] # answered 550 5.1.1 at RCPT
  [domains."*"]                           # any other recipient domain
  accept = 1.0
  [domains."gmail.test"]
  accept = 0.8                            # accept, defer, reject: relative weights
  defer = 0.15
  reject = 0.05
  latency = 0.2                           # seconds before answering
  stage = "data"                          # or "rcpt": decide per recipient
  defer_reply = "421 4.7.28 Try again later"
  reject_reply = "550 5.7.1 Message rejected as spam"
also: hostname, max_message_size, max_recipients. Without --profile every
message is accepted."""


def main(argv: list[str] | None = None, prog: str = "python -m smtplb.sink") -> int:
    """``smtplb sink --listen HOST:PORT [--profile FILE] [--record FILE]``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="A smart SMTP sink that accepts, defers, rejects or stalls per\n"
        "recipient domain, the way real providers do. Runs until SIGTERM or Ctrl-C.",
        epilog=_PROFILE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:2526",
        metavar="HOST:PORT",
        help="address to listen on (default: %(default)s; port 0: any free port)",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="FILE", help="how to answer, per domain (see below)"
    )
    parser.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="append one JSON line per accepted message (envelope, size, Message-ID, sha256)",
    )
    args = parser.parse_args(argv)
    try:
        host, port = _parse_listen(args.listen)
        profile = load_profile(args.profile) if args.profile else SinkProfile()
    except (OSError, ValueError) as exc:
        print(f"smtplb sink: {exc}", file=sys.stderr)
        return 2

    async def serve() -> int:
        server = SinkServer(host, port, profile, args.record, keep_messages=False)
        try:
            await server.start()
        except OSError as exc:
            print(f"smtplb sink: cannot listen on {args.listen}: {exc}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"listening on {host}:{server.port}", flush=True)
        await stop.wait()
        await server.stop()
        return 0

    return asyncio.run(serve())
