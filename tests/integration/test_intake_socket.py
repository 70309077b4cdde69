"""The SMTP listener and the smart sink on real sockets, driven by smtplib."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from smtplb.intake.auth import hash_password, make_authenticator
from smtplb.intake.server import HANDLER_FAILED, Listener
from smtplb.intake.session import SessionPolicy
from smtplb.model import Envelope
from smtplb.sink.profile import DomainRule, SinkProfile, load_profile, parse_reply
from smtplb.sink.server import SinkServer, ThreadedSink
from smtplb.smtp.reply import Reply
from tests.integration.conftest import tool

pytestmark = pytest.mark.integration

POLICY = SessionPolicy(
    hostname="mx.test", max_message_size=100_000, max_recipients=10, relay_allowed=True
)
MESSAGE = (
    b"From: a@example.com\r\nSubject: hi\r\nMessage-ID: <m1@example.com>\r\n\r\nbody\r\n.dot\r\n"
)


class Recorder:
    """A MessageHandler that keeps what it gets; can be told to fail or wait."""

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, bytes]] = []
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.arrived = asyncio.Event()

    async def handle_message(self, envelope: Envelope, data: bytes) -> Reply:
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("spool is on fire")
        self.messages.append((envelope, data))
        return Reply(250, "2.0.0", f"Ok: queued as Q{len(self.messages)}")


def run(
    body: Callable[[Listener, Recorder], Awaitable[None]],
    policy: SessionPolicy = POLICY,
    **kwargs: object,
) -> None:
    async def main() -> None:
        recorder = Recorder()
        listener = Listener(
            host="127.0.0.1",
            port=0,
            handler=recorder,
            policy_for=lambda ip: policy,
            **kwargs,  # type: ignore[arg-type]
        )
        await listener.start()
        try:
            await body(listener, recorder)
        finally:
            await listener.stop(grace=2.0)

    asyncio.run(main())


async def read_replies(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """``count`` complete replies (multi-line ones as one)."""
    replies: list[bytes] = []
    current = b""
    while len(replies) < count:
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line, f"connection closed after {replies!r}"
        current += line
        if line[3:4] != b"-":
            replies.append(current)
            current = b""
    return replies


# -- plain SMTP ------------------------------------------------------------------------


def test_smtplib_sends_a_message() -> None:
    async def body(listener: Listener, recorder: Recorder) -> None:
        def client() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", listener.port, local_hostname="client.test") as smtp:
                code, caps = smtp.ehlo()
                assert code == 250 and b"PIPELINING" in caps and b"SIZE 100000" in caps
                return smtp.sendmail("a@example.com", ["b@example.net", "c@example.org"], MESSAGE)

        assert await asyncio.to_thread(client) == {}
        [(envelope, data)] = recorder.messages
        assert data == MESSAGE  # smtplib dot-stuffs, the session unstuffs
        assert envelope.rcpt_to == ["b@example.net", "c@example.org"]
        assert (envelope.helo, envelope.client_ip, envelope.size_hint) == (
            "client.test",
            "127.0.0.1",
            len(MESSAGE),
        )

    run(body)


def test_pipelined_batch_gets_all_replies() -> None:
    async def body(listener: Listener, recorder: Recorder) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        await read_replies(reader, 1)
        writer.write(
            b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
            b"RCPT TO:<bad address>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
        )
        replies = await read_replies(reader, 6)
        assert [r[:9] for r in replies[1:]] == [
            b"250 2.1.0",
            b"250 2.1.5",
            b"501 5.1.3",
            b"250 2.1.5",
            b"354 End d",
        ]
        writer.write(b"one\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<d@example.net>\r\nDATA\r\n")
        assert [r[:3] for r in await read_replies(reader, 4)] == [b"250", b"250", b"250", b"354"]
        writer.write(b"two\r\n.\r\nQUIT\r\n")
        assert [r[:3] for r in await read_replies(reader, 2)] == [b"250", b"221"]
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        assert [(e.mail_from, d) for e, d in recorder.messages] == [
            ("a@example.com", b"one\r\n"),
            ("", b"two\r\n"),
        ]

    run(body)


def test_smuggling_attempt_over_the_wire() -> None:
    async def body(listener: Listener, recorder: Recorder) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        await read_replies(reader, 5)
        writer.write(
            b"real\r\n\n.\r\nMAIL FROM:<ceo@example.com>\r\nRCPT TO:<v@example.net>\r\n"
            b"DATA\r\nfake\r\n.\r\nNOOP\r\n"
        )
        replies = await read_replies(reader, 2)
        assert [r[:9] for r in replies] == [b"550 5.6.0", b"250 2.0.0"]
        writer.close()
        await writer.wait_closed()
        assert recorder.messages == []

    run(body)


def test_handler_failure_answers_451_and_the_server_keeps_going() -> None:
    async def body(listener: Listener, recorder: Recorder) -> None:
        recorder.fail = True

        def client() -> None:
            with smtplib.SMTP("127.0.0.1", listener.port) as smtp:
                with pytest.raises(smtplib.SMTPDataError) as info:
                    smtp.sendmail("a@example.com", ["b@example.net"], MESSAGE)
                assert info.value.smtp_code == 451
                assert info.value.smtp_error == b"4.3.0 " + HANDLER_FAILED.text.encode()
                recorder.fail = False
                assert smtp.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}

        await asyncio.to_thread(client)
        assert len(recorder.messages) == 1

    run(body)


def test_connection_limit_per_client_and_refusal() -> None:
    draining: list[Reply] = []

    async def body(listener: Listener, recorder: Recorder) -> None:
        async def greeting() -> tuple[bytes, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            return (await read_replies(reader, 1))[0], writer

        first, w1 = await greeting()
        second, w2 = await greeting()
        third, w3 = await greeting()
        assert first.startswith(b"220 mx.test") and second.startswith(b"220 ")
        assert third.startswith(b"421 4.7.0")
        draining.append(Reply(421, "4.3.2", "Draining, try another server"))
        w1.close()
        fourth, w4 = await greeting()
        assert fourth == b"421 4.3.2 Draining, try another server\r\n"
        for w in (w1, w2, w3, w4):
            w.close()
            await w.wait_closed()

    run(
        body,
        max_connections_per_client=2,
        refuse=lambda: draining[0] if draining else None,
    )


def test_idle_timeout_closes_with_421() -> None:
    async def body(listener: Listener, recorder: Recorder) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"EHLO c\r\n")
        await read_replies(reader, 2)
        rest = await asyncio.wait_for(reader.read(), 5)
        assert rest == b"421 4.4.2 mx.test Error: timeout exceeded\r\n"
        writer.close()
        await writer.wait_closed()

    run(body, idle_timeout=0.2)


def test_stop_closes_idle_sessions_and_finishes_pending_answers() -> None:
    async def main() -> None:
        recorder = Recorder()
        recorder.gate = asyncio.Event()
        listener = Listener(
            host="127.0.0.1", port=0, handler=recorder, policy_for=lambda ip: POLICY
        )
        await listener.start()
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", listener.port)
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", listener.port)
        await read_replies(idle_r, 1)
        busy_w.write(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        await read_replies(busy_r, 5)
        busy_w.write(b"x\r\n.\r\n")
        await asyncio.wait_for(recorder.arrived.wait(), 5)
        stopping = asyncio.create_task(listener.stop(grace=5))
        assert (
            await asyncio.wait_for(idle_r.read(), 5)
            == b"421 4.3.2 Service shutting down, try again later\r\n"
        )
        recorder.gate.set()
        assert (await asyncio.wait_for(busy_r.read(), 5)).startswith(
            b"250 2.0.0 Ok: queued as Q1\r\n421 4.3.2"
        )
        await stopping
        assert listener.connections == 0 and "stopped" in repr(listener)
        for w in (idle_w, busy_w):
            w.close()
            await w.wait_closed()

    asyncio.run(main())


# -- STARTTLS and AUTH -------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost: (cert.pem, key.pem)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        _certificate_with_cryptography(cert, key)
    except ImportError:
        openssl = tool("openssl")  # fails, never skips, when missing
        subprocess.run(
            [
                openssl, "req", "-x509", "-nodes",
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-keyout", str(key), "-out", str(cert), "-days", "2",
                "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return cert, key


def _certificate_with_cryptography(cert_path: Path, key_path: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
    from cryptography.hazmat.primitives import (  # type: ignore[import-not-found, unused-ignore]
        hashes,
        serialization,
    )
    from cryptography.hazmat.primitives.asymmetric import (  # type: ignore[import-not-found, unused-ignore]
        ec,
    )
    from cryptography.x509.oid import NameOID  # type: ignore[import-not-found, unused-ignore]

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_starttls_then_auth_then_relay(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    policy = dataclasses.replace(
        POLICY, starttls_available=True, auth_enabled=True, relay_allowed=False
    )
    users = {"alice": hash_password("s3cret", n=2**4, r=1, p=1)}

    async def body(listener: Listener, recorder: Recorder) -> None:
        def client() -> None:
            with smtplib.SMTP("localhost", listener.port) as smtp:
                smtp.ehlo()
                assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
                with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                    smtp.sendmail("a@example.com", ["b@example.net"], MESSAGE)
                [(code, text)] = refused.value.recipients.values()
                assert (code, text[:5]) == (554, b"5.7.1")
                smtp.rset()
                smtp.starttls(context=client_context)
                smtp.ehlo()
                assert smtp.has_extn("auth") and not smtp.has_extn("starttls")
                with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                    smtp.login("alice", "wrong")
                assert failed.value.smtp_code == 535
                smtp.login("alice", "s3cret")
                assert smtp.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}

        await asyncio.to_thread(client)
        [(envelope, _)] = recorder.messages
        assert envelope.tls and envelope.auth_user == "alice"

    run(
        body,
        policy=policy,
        ssl_context=server_context,
        authenticate=make_authenticator(users),
    )


def test_failed_tls_handshake_frees_the_connection(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    policy = dataclasses.replace(POLICY, starttls_available=True)

    async def body(listener: Listener, recorder: Recorder) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"EHLO c\r\nSTARTTLS\r\n")
        replies = await read_replies(reader, 3)
        assert replies[2].startswith(b"220 2.0.0")
        writer.write(b"this is not a TLS ClientHello\r\n" * 4)
        assert await asyncio.wait_for(reader.read(), 5) is not None
        writer.close()
        await writer.wait_closed()
        # A leaked connection would hold stop() for its whole grace period.
        await asyncio.wait_for(listener.stop(grace=30), 5)
        assert listener.connections == 0 and listener._per_client == {}

    run(body, policy=policy, ssl_context=server_context)


# -- the smart sink ---------------------------------------------------------------------


SINK_PROFILE = SinkProfile(
    rules={
        "*": DomainRule(),
        "reject.test": DomainRule(accept=0, reject=1, reject_reply=parse_reply("554 5.7.1 No")),
        "defer.test": DomainRule(accept=0, defer=1),
        "rcpt-defer.test": DomainRule(accept=0, defer=1, stage="rcpt"),
    },
    unknown_users=frozenset({"nobody@example.net"}),
)


def test_sink_accepts_rejects_and_records(tmp_path: Path) -> None:
    record = tmp_path / "received.jsonl"

    async def main() -> None:
        sink = SinkServer("127.0.0.1", 0, SINK_PROFILE, record)
        await sink.start()

        def client() -> None:
            with smtplib.SMTP("127.0.0.1", sink.port) as smtp:
                refused = smtp.sendmail(
                    "a@example.com", ["b@example.net", "nobody@example.net"], MESSAGE
                )
                assert refused == {"nobody@example.net": (550, b"5.1.1 User unknown")}
                with pytest.raises(smtplib.SMTPDataError) as rejected:
                    smtp.sendmail("a@example.com", ["x@reject.test"], MESSAGE)
                assert (rejected.value.smtp_code, rejected.value.smtp_error) == (554, b"5.7.1 No")
                with pytest.raises(smtplib.SMTPRecipientsRefused):
                    smtp.sendmail("a@example.com", ["x@rcpt-defer.test"], MESSAGE)
            with smtplib.SMTP("127.0.0.1", sink.port) as smtp:
                with pytest.raises(smtplib.SMTPDataError) as deferred:
                    smtp.sendmail("a@example.com", ["x@defer.test"], MESSAGE)
                assert deferred.value.smtp_code == 421  # and the sink hung up, like Gmail

        await asyncio.to_thread(client)
        await sink.stop()
        assert sink.counts == {
            "accepted": 1,
            "deferred": 1,
            "rejected": 1,
            "rcpt_deferred": 1,
            "rcpt_rejected": 1,
        }
        [message] = sink.received
        assert message.rcpt_to == ["b@example.net"] and message.message_id == "<m1@example.com>"
        [line] = record.read_text().splitlines()
        fields = json.loads(line)
        assert fields["mail_from"] == "a@example.com" and fields["rcpt_to"] == ["b@example.net"]
        assert fields["size"] == len(message.data) and fields["sha256"] == message.sha256
        assert fields["message_id"] == "<m1@example.com>" and fields["ts"] > 0

    asyncio.run(main())


def test_sink_rates_are_reproducible() -> None:
    rule = DomainRule(accept=0.5, defer=0.3, reject=0.2)
    profile = SinkProfile(rules={"*": rule}, seed=42)

    def outcomes() -> list[int]:
        async def main() -> list[int]:
            sink = SinkServer(profile=profile)
            await sink.start()

            def client() -> list[int]:
                codes = []
                with smtplib.SMTP("127.0.0.1", sink.port) as smtp:
                    for _ in range(60):
                        try:
                            smtp.sendmail("a@example.com", ["b@example.net"], MESSAGE)
                            codes.append(250)
                        except smtplib.SMTPDataError as exc:
                            codes.append(exc.smtp_code)
                            if exc.smtp_code == 421:  # the sink hung up
                                smtp.connect("127.0.0.1", sink.port)
                                smtp.ehlo()
                return codes

            try:
                return await asyncio.to_thread(client)
            finally:
                await sink.stop()

        return asyncio.run(main())

    first = outcomes()
    assert first == outcomes()
    assert {250, 421, 550} == set(first)
    assert 15 <= first.count(250) <= 45


@pytest.fixture
def threaded_sink() -> Iterator[ThreadedSink]:
    with ThreadedSink(profile=SINK_PROFILE) as sink:
        yield sink


def test_threaded_sink_wait_for_and_restart(threaded_sink: ThreadedSink) -> None:
    port = threaded_sink.port

    def send(n: int) -> None:
        with smtplib.SMTP("127.0.0.1", threaded_sink.port) as smtp:
            for i in range(n):
                smtp.sendmail("a@example.com", [f"r{i}@example.net"], MESSAGE)

    send(3)
    assert threaded_sink.wait_for(3, timeout=5)
    assert not threaded_sink.wait_for(4, timeout=0.05)
    threaded_sink.restart()
    assert threaded_sink.port == port
    send(1)
    assert threaded_sink.wait_for(4, timeout=5)
    assert [m.rcpt_to for m in threaded_sink.received][-1] == ["r0@example.net"]
    assert threaded_sink.counts["accepted"] == 1  # counts are per run, received are kept
    threaded_sink.profile = SinkProfile(rules={"*": DomainRule(accept=0, defer=1)})
    with smtplib.SMTP("127.0.0.1", port) as smtp, pytest.raises(smtplib.SMTPDataError):
        smtp.sendmail("a@example.com", ["b@example.net"], MESSAGE)
    assert "running" in repr(threaded_sink)


def test_load_profile(tmp_path: Path) -> None:
    path = tmp_path / "profile.toml"
    path.write_text(
        'seed = 7\nunknown_users = ["Nobody@Example.test"]\n'
        '[domains."*"]\naccept = 1.0\n'
        '[domains."Gmail.test"]\naccept = 0.8\ndefer = 0.15\nreject = 0.05\nlatency = 0.2\n'
        'defer_reply = "421 4.7.28 Slow down"\n'
    )
    profile = load_profile(path)
    assert profile.seed == 7 and profile.unknown_users == {"nobody@example.test"}
    rule = profile.rule_for("gmail.test")
    assert (rule.accept, rule.defer, rule.reject, rule.latency) == (0.8, 0.15, 0.05, 0.2)
    assert rule.defer_reply == Reply(421, "4.7.28", "Slow down")
    assert profile.rule_for("other.test") == DomainRule()
    path.write_text('[domains."x"]\nrejct = 1\n')
    with pytest.raises(ValueError, match=r'domains."x": unknown key\(s\) \[\'rejct\'\]'):
        load_profile(path)
    path.write_text('[domains."x"]\ndefer = 1\ndefer_reply = "550 5.0.0 no"\n')
    with pytest.raises(ValueError, match="defer_reply must be a 4xx reply"):
        load_profile(path)


def test_sink_command_line(tmp_path: Path) -> None:
    record = tmp_path / "r.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smtplb.sink",
            "--listen",
            f"127.0.0.1:{port}",
            "--record",
            str(record),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"listening on 127.0.0.1:{port}"
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.sendmail("a@example.com", ["b@example.net"], MESSAGE)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert json.loads(record.read_text())["rcpt_to"] == ["b@example.net"]
