"""Intake under attack on real sockets: AUTH brute force (delay, lockout, another
IP still served), slowloris (per-command and DATA deadlines) and the node-wide
connection cap."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import smtplib
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from smtplb.clock import FakeClock
from smtplb.intake.auth import AuthThrottle, hash_password, make_authenticator
from smtplb.intake.server import ConnectionCap, Listener
from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config
from tests.integration.test_intake_socket import (
    MESSAGE,
    POLICY,
    Recorder,
    certificate,  # noqa: F401  (a fixture)
    read_replies,
    run,
)

pytestmark = pytest.mark.integration


# -- AUTH brute force ------------------------------------------------------------------


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_auth_failures_slow_down_then_lock_out_one_ip_only(
    certificate: tuple[Path, Path],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    policy = dataclasses.replace(
        POLICY, starttls_available=True, auth_enabled=True, relay_allowed=False
    )
    users = {"alice": hash_password("s3cret", n=2**4, r=1, p=1)}
    clock = FakeClock()  # the lockout does not run out during the test
    throttle = AuthThrottle(clock, max_failures=4, lockout=600, delay=0.5, max_delay=1.0)

    def session(source: str) -> smtplib.SMTP:
        smtp = smtplib.SMTP("localhost", listener_port[0], source_address=(source, 0))
        smtp.starttls(context=client_context)
        smtp.ehlo()
        return smtp

    def attack() -> tuple[list[float], list[tuple[int, bytes]]]:
        took: list[float] = []
        answers: list[tuple[int, bytes]] = []
        with session("127.0.0.1") as smtp:
            for attempt in range(6):
                password = "s3cret" if attempt == 5 else f"guess{attempt}"
                started = time.monotonic()
                answers.append(smtp.docmd("AUTH", "PLAIN " + plain("alice", password)))
                took.append(time.monotonic() - started)
        return took, answers

    def other_ip() -> str | None:
        with session("127.0.0.2") as smtp:
            smtp.login("alice", "s3cret")
            assert smtp.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}
            return smtp.sock.getsockname()[0] if smtp.sock else None

    listener_port: list[int] = []

    async def body(listener: Listener, recorder: Recorder) -> None:
        listener_port.append(listener.port)
        with caplog.at_level(logging.INFO, logger="smtplb.intake"):
            took, answers = await asyncio.to_thread(attack)
            # Waits run on the loop: another client is served while one waits.
            assert await asyncio.to_thread(other_ip) == "127.0.0.2"
        codes = [code for code, _ in answers]
        assert codes == [535, 535, 535, 535, 454, 454]
        assert answers[4][1].startswith(b"4.7.0 Error: too many failed authentication")
        assert b"try again in 10 minutes" in answers[4][1]
        # No wait before the first answer; then 0.5, 1, 1 (capped), then refused at once.
        assert took[0] < 0.5 and took[1] >= 0.5 and took[2] >= 1.0 and took[3] >= 1.0
        assert took[4] < 0.5 and took[5] < 0.5  # the right password is refused too
        [(envelope, _)] = recorder.messages
        assert envelope.auth_user == "alice" and envelope.client_ip == "127.0.0.2"
        lines = [r.getMessage() for r in caplog.records if r.name == "smtplb.intake"]
        failed = [line for line in lines if line.startswith("AUTH failed: ip=127.0.0.1 ")]
        assert len(failed) == 4 and "user='alice'" in failed[0] and "s3cret" not in str(lines)
        assert "guess" not in str(lines)
        assert any(line.startswith("AUTH lockout: ip=127.0.0.1 user='alice'") for line in lines)
        assert any(line.startswith("AUTH refused (locked out): ip=127.0.0.1") for line in lines)

    run(
        body,
        policy=policy,
        ssl_context=server_context,
        authenticate=make_authenticator(users),
        auth_throttle=throttle,
    )


# -- slowloris and the connection cap --------------------------------------------------


async def _trickle(port: int, source: str, stop: asyncio.Event) -> tuple[bytes, float]:
    """Greet, then send a command one byte every 0.2 s: (what came back, when closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    await read_replies(reader, 1)
    return await _trickle_on(reader, writer, stop)


async def _trickle_on(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
) -> tuple[bytes, float]:
    started = time.monotonic()
    received = b""
    try:
        for byte in b"EHLO slow.example.test but never ends":
            if reader.at_eof() or stop.is_set():
                break
            writer.write(bytes([byte]))
            try:
                received += await asyncio.wait_for(reader.read(1024), 0.2)
            except TimeoutError:
                continue
            if not received or received.endswith(b"\r\n"):
                break
    finally:
        writer.close()
    return received, time.monotonic() - started


def test_slowloris_connections_are_closed_by_the_command_deadline() -> None:
    async def body(listener: Listener, recorder: Recorder) -> None:
        stop = asyncio.Event()
        sources = [f"127.0.1.{i}" for i in range(1, 11)]
        attackers = [
            asyncio.create_task(_trickle(listener.port, sources[i % 10], stop)) for i in range(100)
        ]

        def client() -> None:
            with smtplib.SMTP("127.0.0.1", listener.port, local_hostname="ok.test") as smtp:
                assert smtp.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}

        await asyncio.to_thread(client)  # served while the attack goes on
        results = await asyncio.wait_for(asyncio.gather(*attackers), 10)
        stop.set()
        assert len(recorder.messages) == 1
        assert {r for r, _ in results} == {b"421 4.4.2 mx.test Error: timeout exceeded\r\n"}
        slowest = max(t for _, t in results)
        assert slowest < 2.0, f"closed after {slowest:.2f}s with a 1 s deadline"

    # idle_timeout is far longer than the 0.2 s between bytes: only the deadline can close.
    run(body, idle_timeout=30, command_deadline=1.0, max_connections_per_client=20)


def test_trickled_data_is_closed_by_the_data_deadline() -> None:
    async def body(listener: Listener, recorder: Recorder) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        await read_replies(reader, 5)
        started = time.monotonic()
        answer = b""
        while not answer and time.monotonic() - started < 5:
            writer.write(b"x\r\n")  # a complete line every 0.1 s never ends DATA
            try:
                answer = await asyncio.wait_for(reader.read(1024), 0.1)
            except TimeoutError:
                continue
        took = time.monotonic() - started
        assert answer == b"421 4.4.2 mx.test Error: timeout exceeded\r\n"
        assert 0.8 <= took < 2.0
        writer.close()
        assert recorder.messages == []

    run(body, idle_timeout=30, command_deadline=0.3, data_timeout=1.0)


def test_node_wide_connection_cap_over_listeners() -> None:
    async def main() -> None:
        cap = ConnectionCap(3)
        listeners = [
            Listener(
                host="127.0.0.1",
                port=0,
                handler=Recorder(),
                policy_for=lambda ip: POLICY,
                cap=cap,
            )
            for _ in range(2)
        ]
        for listener in listeners:
            await listener.start()
        try:
            greetings: list[bytes] = []
            readers: list[asyncio.StreamReader] = []
            writers: list[asyncio.StreamWriter] = []
            for i, source in enumerate(["127.0.2.1", "127.0.2.2", "127.0.2.3", "127.0.2.4"]):
                port = listeners[i % 2].port
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(source, 0)
                )
                greetings.append((await read_replies(reader, 1))[0])
                readers.append(reader)
                writers.append(writer)
            assert [g[:4] for g in greetings[:3]] == [b"220 "] * 3
            assert greetings[3] == b"421 4.7.0 Error: too many connections, try again later\r\n"
            assert repr(cap) == "ConnectionCap(3/3 open)"
            writers[0].write(b"QUIT\r\n")
            assert await asyncio.wait_for(readers[0].read(), 5) == b"221 2.0.0 Bye\r\n"
            # The server closes its socket as it forgets the connection: the slot is free.
            assert cap.open == 2
            reader, writer = await asyncio.open_connection("127.0.0.1", listeners[1].port)
            assert (await read_replies(reader, 1))[0].startswith(b"220 ")
            writers.append(writer)
            for w in writers:
                w.close()
        finally:
            for listener in listeners:
                await listener.stop(grace=2.0)
        assert cap.open == 0

    asyncio.run(main())


# -- the same through `smtplb run` and its config ----------------------------------------


def test_smtplb_run_applies_the_config(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    sink = sinks()
    smtp = {
        "command_deadline": "1s",
        "idle_timeout": "30s",
        "max_connections": 100,
        "max_connections_per_client": 10,
        "users": [{"name": "alice", "password_hash": hash_password("s3cret", n=2**4, r=1, p=1)}],
        "auth_without_tls": True,  # the listener is loopback
        "auth_max_failures": 2,
        "auth_delay": "10ms",
        "auth_max_delay": "10ms",
    }
    node = smtplb(*relay_config(tmp_path / "var", [sink.port], smtp=smtp)).start()

    async def attack() -> None:
        stop = asyncio.Event()
        opened = [
            await asyncio.open_connection(
                "127.0.0.1", node.smtp_port, local_addr=(f"127.0.3.{i % 10 + 1}", 0)
            )
            for i in range(100)
        ]
        greetings = [(await read_replies(r, 1))[0][:4] for r, _ in opened]
        assert greetings == [b"220 "] * 100
        # The 101st is over max_connections (from an address with none open yet).
        r, w = await asyncio.open_connection(
            "127.0.0.1", node.smtp_port, local_addr=("127.0.3.11", 0)
        )
        assert (await read_replies(r, 1))[0].startswith(b"421 4.7.0 Error: too many connections")
        w.close()
        results = await asyncio.wait_for(
            asyncio.gather(*(_trickle_on(r, w, stop) for r, w in opened)), 15
        )
        stop.set()
        timeout = b"421 4.4.2 relay.smtplb.test Error: timeout exceeded\r\n"
        assert {r for r, _ in results} == {timeout}
        assert max(t for _, t in results) < 2.5

    asyncio.run(attack())

    def auth(source: str, password: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", node.smtp_port, source_address=(source, 0)) as client:
            client.ehlo()
            return client.docmd("AUTH", "PLAIN " + plain("alice", password))

    assert [auth("127.0.0.1", p)[0] for p in ("x", "y", "s3cret")] == [535, 535, 454]
    assert auth("127.0.0.2", "s3cret")[0] == 235
    log = "".join(node.output)
    assert "AUTH lockout: ip=127.0.0.1 user='alice'" in log
