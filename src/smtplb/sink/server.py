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
import re
import signal
import sys
import threading
import tomllib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from smtplb.clock import Clock, SystemClock
from smtplb.intake.headers import header_value, parse_headers, split_message
from smtplb.intake.server import Listener
from smtplb.intake.session import SessionPolicy
from smtplb.model import Envelope, domain_of
from smtplb.smtp.reply import Reply

__all__ = [
    "ClientRule",
    "DomainRule",
    "ReceivedMessage",
    "SinkProfile",
    "SinkServer",
    "ThreadedSink",
    "load_profile",
    "main",
    "parse_reply",
]

_T = TypeVar("_T")
_REPLY_RE = re.compile(r"([245]\d\d)(?: ([245]\.\d{1,3}\.\d{1,3}))?(?: (.*))?", re.DOTALL)
_UNKNOWN_USER = Reply(550, "5.1.1", "User unknown")
_DEFAULT_DEFER = Reply(421, "4.7.28", "Rate limited, try again later")
_DEFAULT_REJECT = Reply(550, "5.7.1", "Message rejected")
# The providers' own words (Gmail's 4.7.28, a Postfix-style connection limit,
# Spamhaus-style block), so response rules meet what they would meet live.
_GMAIL_RATE = Reply(
    421,
    "4.7.28",
    "Our system has detected an unusual rate of unsolicited mail originating from your "
    "IP address. To protect our users from spam, mail sent from your IP address has been "
    "temporarily rate limited.",
)
_TOO_MANY = Reply(421, "4.7.0", "Too many concurrent connections from this IP, try again later")
_BLOCKED = Reply(550, "5.7.1", "Service unavailable, client host blocked (poor reputation)")
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h)\s*$")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reply(text: str) -> Reply:
    """``"421 4.7.28 Try later"`` -> ``Reply(421, "4.7.28", "Try later")``."""
    match = _REPLY_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an SMTP reply like '450 4.7.1 Try again later'")
    return Reply(int(match[1]), match[2], match[3] or "")


@dataclass(frozen=True, slots=True)
class DomainRule:
    """How the sink answers mail for one recipient domain.

    ``accept``, ``defer`` and ``reject`` are relative weights (usually
    fractions summing to 1).
    """

    accept: float = 1.0
    defer: float = 0.0
    reject: float = 0.0
    latency: float = 0.0
    stage: str = "data"
    defer_reply: Reply = _DEFAULT_DEFER
    reject_reply: Reply = _DEFAULT_REJECT

    def __post_init__(self) -> None:
        rates = (self.accept, self.defer, self.reject)
        if min(rates) < 0 or sum(rates) <= 0:
            raise ValueError("accept, defer and reject must be >= 0 and not all 0")
        if self.latency < 0:
            raise ValueError("latency must be >= 0 seconds")
        if self.stage not in ("data", "rcpt"):
            raise ValueError(f"stage must be 'data' or 'rcpt', not {self.stage!r}")
        if not self.defer_reply.is_transient:
            raise ValueError(f"defer_reply must be a 4xx reply, not {self.defer_reply}")
        if not self.reject_reply.is_permanent:
            raise ValueError(f"reject_reply must be a 5xx reply, not {self.reject_reply}")

    def draw(self, rng: random.Random) -> Reply | None:
        """None to accept, else the reply that defers or rejects."""
        x = rng.random() * (self.accept + self.defer + self.reject)
        if x < self.reject:
            return self.reject_reply
        if x < self.reject + self.defer:
            return self.defer_reply
        return None


@dataclass(frozen=True, slots=True)
class ClientRule:
    """How the sink treats one client IP: a rate, a connection limit, a block."""

    rate: tuple[int, float] | None = None  # (messages, per seconds)
    throttle: bool = False  # every RCPT gets throttle_reply (a rate of zero)
    throttle_reply: Reply = _GMAIL_RATE
    max_connections: int | None = None
    connection_reply: Reply = _TOO_MANY
    block: bool = False
    block_reply: Reply = _BLOCKED

    def __post_init__(self) -> None:
        if not self.throttle_reply.is_transient:
            raise ValueError(f"throttle_reply must be a 4xx reply, not {self.throttle_reply}")
        if not self.connection_reply.is_transient:
            raise ValueError(f"connection_reply must be a 4xx reply, not {self.connection_reply}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


def _parse_client(table: Mapping[str, Any]) -> ClientRule:
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("throttle_reply", "connection_reply", "block_reply"):
            kwargs[key] = parse_reply(str(value))
        elif key == "rate":
            m = _RATE_RE.match(value) if isinstance(value, str) else None
            if m is None or int(m[1]) < 1:
                raise ValueError(f'rate must be like "20/m" (N/s, N/m or N/h), not {value!r}')
            kwargs[key] = (int(m[1]), _RATE_UNITS[m[2]])
        elif key == "max_connections":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError("max_connections must be an integer")
            kwargs[key] = value
        elif key in ("block", "throttle"):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
            kwargs[key] = value
        else:
            raise ValueError(f"unknown key {key!r}; known: {sorted(_CLIENT_KEYS)}")
    return ClientRule(**kwargs)


_CLIENT_KEYS = {
    "rate",
    "throttle",
    "throttle_reply",
    "max_connections",
    "connection_reply",
    "block",
    "block_reply",
}


@dataclass(frozen=True, slots=True)
class SinkProfile:
    rules: Mapping[str, DomainRule] = field(default_factory=dict)  # domain or "*"
    clients: Mapping[str, ClientRule] = field(default_factory=dict)  # client IP or "*"
    unknown_users: frozenset[str] = frozenset()  # lower-cased addresses, 550 5.1.1
    seed: int = 0
    hostname: str = "sink.smtplb.test"
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 1000

    def rule_for(self, domain: str) -> DomainRule:
        rule = self.rules.get(domain.lower()) or self.rules.get("*")
        return rule if rule is not None else _ACCEPT_ALL

    def client_rule(self, ip: str) -> ClientRule | None:
        return self.clients.get(ip) or self.clients.get("*")


_ACCEPT_ALL = DomainRule()
_RULE_KEYS = {
    "accept",
    "defer",
    "reject",
    "latency",
    "stage",
    "defer_reply",
    "reject_reply",
}
_PROFILE_KEYS = {
    "seed",
    "hostname",
    "max_message_size",
    "max_recipients",
    "unknown_users",
    "domains",
    "clients",
}


def load_profile(path: Path | str) -> SinkProfile:
    """Read a TOML profile; ``ValueError`` names the file, the key and the problem."""
    with open(path, "rb") as f:
        try:
            doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from None
    return profile_from_dict(doc, source=str(path))


def profile_from_dict(doc: Mapping[str, Any], *, source: str = "profile") -> SinkProfile:
    unknown = set(doc) - _PROFILE_KEYS
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {sorted(unknown)}; known: {sorted(_PROFILE_KEYS)}"
        )
    rules: dict[str, DomainRule] = {}
    domains = doc.get("domains", {})
    if not isinstance(domains, Mapping):
        raise ValueError(f'{source}: domains must be a table of [domains."name"] tables')
    for domain, table in domains.items():
        where = f'{source}: domains."{domain}"'
        if not isinstance(table, Mapping):
            raise ValueError(f"{where} must be a table")
        bad = set(table) - _RULE_KEYS
        if bad:
            raise ValueError(f"{where}: unknown key(s) {sorted(bad)}; known: {sorted(_RULE_KEYS)}")
        kwargs: dict[str, Any] = dict(table)
        try:
            for key in ("defer_reply", "reject_reply"):
                if key in kwargs:
                    kwargs[key] = parse_reply(str(kwargs[key]))
            for key in ("accept", "defer", "reject", "latency"):
                if key in kwargs and not isinstance(kwargs[key], int | float):
                    raise ValueError(f"{key} must be a number")
            rules[str(domain).lower()] = DomainRule(**kwargs)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    clients: dict[str, ClientRule] = {}
    client_tables = doc.get("clients", {})
    if not isinstance(client_tables, Mapping):
        raise ValueError(f'{source}: clients must be a table of [clients."IP"] tables')
    for ip, table in client_tables.items():
        where = f'{source}: clients."{ip}"'
        if not isinstance(table, Mapping):
            raise ValueError(f"{where} must be a table")
        try:
            clients[str(ip)] = _parse_client(table)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    users = doc.get("unknown_users", [])
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise ValueError(f"{source}: unknown_users must be a list of addresses")
    kwargs = {
        k: doc[k] for k in ("seed", "hostname", "max_message_size", "max_recipients") if k in doc
    }
    for key in ("seed", "max_message_size", "max_recipients"):
        if key in kwargs and not isinstance(kwargs[key], int):
            raise ValueError(f"{source}: {key} must be an integer")
    if not isinstance(kwargs.get("hostname", ""), str):
        raise ValueError(f"{source}: hostname must be a string")
    return SinkProfile(
        rules=rules,
        clients=clients,
        unknown_users=frozenset(u.lower() for u in users),
        **kwargs,
    )


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
            check_recipient=lambda address: self._check_recipient(address, client_ip),
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
            return _UNKNOWN_USER
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
