"""SmtpClientConnection against real peers: Postfix's smtp-sink and scripted asyncio servers.

Every test runs on the default asyncio loop and on uvloop (production's loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
import uvloop

from smtplb.delivery.connection import ConnectError, ConnectionSettings, SmtpClientConnection
from tests.integration.conftest import free_port, tool, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T = TypeVar("T")
SETTINGS: Final = ConnectionSettings("client.smtplb.test", command_timeout=10, connect_timeout=5)
MESSAGE: Final = b"Subject: test\r\nFrom: <a@x.example>\r\n\r\nHello.\r\n"


class Run:
    """Runs a coroutine to completion on a fresh loop of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T:
        factory = uvloop.new_event_loop if self.kind == "uvloop" else None
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    return Run(request.param)


# -- Postfix's smtp-sink -------------------------------------------------------------


@contextlib.contextmanager
def smtp_sink(*options: str, dump: Path | None = None) -> Iterator[int]:
    """smtp-sink on a free loopback port; yields the port."""
    binary = tool("smtp-sink")
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
    dumping = ["-d", f"{dump}/%H%M%S."] if dump else []
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [binary, *user, *dumping, *options, f"127.0.0.1:{port}", "100"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            wait_until(lambda: _listening(port, proc), 10, f"smtp-sink on port {port}")
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


def _listening(port: int, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"smtp-sink exited with {proc.returncode}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return False
    return True


@pytest.fixture
def dump_dir() -> Iterator[Path]:
    """A directory smtp-sink can write to after dropping privileges to nobody."""
    path = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def test_several_messages_over_one_pipelining_connection(run: Run) -> None:
    async def main() -> None:
        conn = await SmtpClientConnection.open("127.0.0.1", port, SETTINGS)
        assert "PIPELINING" in conn.extensions
        for i in range(5):
            result = await conn.send("a@x.example", ["b@y.example", "c@y.example"], MESSAGE)
            assert result.mail.code == 250
            assert [r.code for r in result.rcpts] == [250, 250]
            assert result.data is not None and result.data.code == 250, i
            assert result.data.enhanced_code == "2.0.0"
        assert conn.messages_sent == 5
        assert conn.is_usable
        assert repr(conn) == f"<SmtpClientConnection 127.0.0.1:{port} idle, 5 sent>"
        await conn.quit()
        assert not conn.is_usable
        assert "closed" in repr(conn)

    with smtp_sink() as port:
        run(main())


def test_lock_step_without_pipelining(run: Run) -> None:
    async def main() -> None:
        conn = await SmtpClientConnection.open("127.0.0.1", port, SETTINGS)
        assert "PIPELINING" not in conn.extensions
        for _ in range(3):
            result = await conn.send("a@x.example", ["b@y.example", "c@y.example"], MESSAGE)
            assert result.data is not None and result.data.code == 250
        await conn.reset()
        await conn.quit()

    with smtp_sink("-p") as port:
        run(main())


def test_helo_fallback_when_ehlo_is_unknown(run: Run) -> None:
    async def main() -> None:
        conn = await SmtpClientConnection.open("127.0.0.1", port, SETTINGS)
        assert dict(conn.extensions) == {}
        result = await conn.send("a@x.example", ["b@y.example"], MESSAGE)
        assert result.data is not None and result.data.code == 250
        await conn.quit()

    with smtp_sink("-e") as port:
        run(main())


def test_all_recipients_refused_leaves_the_connection_reusable(run: Run) -> None:
    async def main() -> None:
        conn = await SmtpClientConnection.open("127.0.0.1", port, SETTINGS)
        for _ in range(2):
            result = await conn.send("a@x.example", ["b@y.example", "c@y.example"], MESSAGE)
            assert result.mail.code == 250
            assert all(r.is_permanent for r in result.rcpts)
            assert result.data is None
            assert conn.is_usable
        await conn.quit()

    with smtp_sink("-f", "RCPT") as port:
        run(main())


def test_the_message_arrives_intact_from_the_source_ip(run: Run, dump_dir: Path) -> None:
    lines = [b".leading dot", b".", b"..", b"a line", b"", b". space"]
    data = b"Subject: dots\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"

    async def main() -> None:
        conn = await SmtpClientConnection.open("127.0.0.1", port, SETTINGS, source_ip="127.0.0.2")
        result = await conn.send("a@x.example", ["b@y.example"], data)
        assert result.data is not None and result.data.code == 250
        await conn.quit()

    with smtp_sink(dump=dump_dir) as port:
        run(main())
    [dump] = list(dump_dir.iterdir())
    text = dump.read_bytes()
    assert b"X-Client-Addr: 127.0.0.2\n" in text
    assert text.split(b"Subject: dots\n\n", 1)[1].startswith(b"\n".join(lines) + b"\n")


def test_auth_over_loopback(run: Run) -> None:
    settings = ConnectionSettings("client.smtplb.test", username="user", password="secret")

    async def main() -> None:
        conn = await SmtpClientConnection.open("127.0.0.1", port, settings)
        assert conn.is_usable
        await conn.quit()

    with smtp_sink() as port:
        run(main())


def test_421_before_the_data_reply_is_a_dropped_connection(run: Run) -> None:
    async def main() -> None:
        conn = await SmtpClientConnection.open("127.0.0.1", port, SETTINGS)
        with pytest.raises(ConnectError) as info:
            await conn.send("a@x.example", ["b@y.example"], MESSAGE)
        assert info.value.reason == "dropped"
        assert info.value.reply is not None and info.value.reply.code == 421
        assert "awaiting MAIL reply" in str(info.value)
        assert not conn.is_usable
        await conn.quit()  # never raises

    with smtp_sink("-Q", "MAIL") as port:
        run(main())


def test_hang_up_before_the_end_of_data_reply(run: Run) -> None:
    async def main() -> None:
        conn = await SmtpClientConnection.open("127.0.0.1", port, SETTINGS)
        with pytest.raises(ConnectError) as info:
            await conn.send("a@x.example", ["b@y.example"], MESSAGE)
        assert info.value.reason == "dropped"
        assert "awaiting end-of-data reply" in str(info.value)
        assert not conn.is_usable
        with pytest.raises(ConnectError, match="closed"):
            await conn.send("a@x.example", ["b@y.example"], MESSAGE)

    with smtp_sink("-q", ".") as port:
        run(main())


# -- scripted peers ----------------------------------------------------------------

CLOSE: Final = b"<close>"  # hang up instead of answering
SILENT: Final = b"<silent>"  # never answer; wait for the client to give up


class MiniSmtp:
    """A scripted SMTP peer: a canned answer per verb; records what the client did."""

    def __init__(
        self,
        *,
        banner: bytes = b"220 mini.example ESMTP\r\n",
        replies: dict[bytes, bytes] | None = None,
        starttls: ssl.SSLContext | None = None,
    ) -> None:
        self.banner = banner
        self.replies = {
            b"EHLO": b"250-mini.example\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n",
            b"HELO": b"250 mini.example\r\n",
            b"MAIL": b"250 2.1.0 Ok\r\n",
            b"RCPT": b"250 2.1.5 Ok\r\n",
            b"DATA": b"354 go ahead\r\n",
            b".": b"250 2.0.0 queued\r\n",
            b"RSET": b"250 2.0.0 Ok\r\n",
            b"NOOP": b"250 2.0.0 Ok\r\n",
            b"QUIT": b"221 2.0.0 Bye\r\n",
            b"STARTTLS": b"220 2.0.0 Ready to start TLS\r\n",
            b"AUTH": b"235 2.7.0 Authentication successful\r\n",
            **(replies or {}),
        }
        self.starttls = starttls
        self.commands: list[bytes] = []
        self.messages: list[bytes] = []
        self.peers: list[str] = []
        self.tls_used = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername")[0])
        try:
            if await self._answer(reader, writer, self.banner):
                return
            while line := await reader.readline():
                self.commands.append(line.rstrip(b"\r\n"))
                verb = line.split(b" ", 1)[0].strip().upper()
                answer = self.replies.get(verb, b"502 5.5.2 Error: command not recognized\r\n")
                if verb == b"EHLO" and self.starttls and not self.tls_used:
                    answer = answer.replace(b"\r\n", b"\r\n250-STARTTLS\r\n", 1)
                if await self._answer(reader, writer, answer):
                    return
                if verb == b"STARTTLS" and self.starttls and answer.startswith(b"220"):
                    await writer.start_tls(self.starttls)
                    self.tls_used = True
                elif verb == b"DATA" and answer.startswith(b"354"):
                    self.messages.append(await reader.readuntil(b"\r\n.\r\n"))
                    if await self._answer(reader, writer, self.replies[b"."]):
                        return
                elif verb == b"QUIT":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes
    ) -> bool:
        """Send the answer; True when the script ends the session here."""
        if answer == CLOSE:
            return True
        if answer == SILENT:
            await reader.read()  # until the client hangs up
            return True
        writer.write(answer)
        await writer.drain()
        return False


@contextlib.asynccontextmanager
async def serving(
    peer: MiniSmtp, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    server = await asyncio.start_server(peer.serve, host, 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_source_ip_is_what_the_server_sees(run: Run) -> None:
    peer = MiniSmtp()

    async def main() -> None:
        async with serving(peer, host="0.0.0.0") as port:
            for source in ("127.0.0.2", "127.0.0.3"):
                conn = await SmtpClientConnection.open(
                    "127.0.0.1", port, SETTINGS, source_ip=source
                )
                assert f"from {source}" in repr(conn)
                await conn.quit()

    run(main())
    assert peer.peers == ["127.0.0.2", "127.0.0.3"]


def test_a_source_ip_this_host_does_not_have(run: Run) -> None:
    async def main() -> None:
        with pytest.raises(ConnectError) as info:
            await SmtpClientConnection.open("127.0.0.1", 25, SETTINGS, source_ip="198.51.100.7")
        assert info.value.reason == "refused"
        assert "from 198.51.100.7" in str(info.value)

    run(main())


def test_connection_refused(run: Run) -> None:
    port = free_port()

    async def main() -> None:
        with pytest.raises(ConnectError) as info:
            await SmtpClientConnection.open("127.0.0.1", port, SETTINGS)
        assert info.value.reason == "refused"
        assert f"127.0.0.1:{port}" in str(info.value)

    run(main())


def test_connect_timeout_when_the_backlog_is_full(run: Run) -> None:
    settings = ConnectionSettings("client.smtplb.test", connect_timeout=0.3)
    with socket.socket() as listener, contextlib.ExitStack() as fillers:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepted: once the queue is full, SYNs are dropped
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = fillers.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))

        async def main() -> None:
            started = time.monotonic()
            with pytest.raises(ConnectError) as info:
                await SmtpClientConnection.open("127.0.0.1", port, settings)
            assert info.value.reason == "timeout"
            assert "connect_timeout" in str(info.value)
            assert time.monotonic() - started < 3

        run(main())


def test_no_banner_times_out(run: Run) -> None:
    settings = ConnectionSettings("client.smtplb.test", command_timeout=0.3)

    async def main() -> None:
        async with serving(MiniSmtp(banner=SILENT)) as port:
            with pytest.raises(ConnectError) as info:
                await SmtpClientConnection.open("127.0.0.1", port, settings)
        assert info.value.reason == "timeout"
        assert "awaiting greeting (command_timeout)" in str(info.value)

    run(main())


def test_554_banner_is_refused_politely(run: Run) -> None:
    peer = MiniSmtp(banner=b"554 5.7.1 mini.example does not want you\r\n")

    async def main() -> None:
        async with serving(peer) as port:
            with pytest.raises(ConnectError) as info:
                await SmtpClientConnection.open("127.0.0.1", port, SETTINGS)
        assert info.value.reason == "banner"
        assert info.value.reply is not None
        assert (info.value.reply.code, info.value.reply.enhanced_code) == (554, "5.7.1")
        assert "554 5.7.1 mini.example does not want you" in str(info.value)

    run(main())
    assert peer.commands == [b"QUIT"]


def test_garbage_banner_is_a_protocol_error(run: Run) -> None:
    async def main() -> None:
        async with serving(MiniSmtp(banner=b"HTTP/1.1 400 Bad Request\r\n\r\n")) as port:
            with pytest.raises(ConnectError) as info:
                await SmtpClientConnection.open("127.0.0.1", port, SETTINGS)
        assert info.value.reason == "protocol"
        assert "3-digit code" in str(info.value)

    run(main())


def test_server_hangs_up_mid_data(run: Run) -> None:
    async def cut_off(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mini\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-mini\r\n250 PIPELINING\r\n")
        for _ in range(3):  # MAIL, RCPT, DATA
            await reader.readline()
        writer.write(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        await reader.readexactly(10)  # a little of the message, then gone
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(cut_off, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            conn = await SmtpClientConnection.open("127.0.0.1", port, SETTINGS)
            with pytest.raises(ConnectError) as info:
                await conn.send("a@x.example", ["b@y.example"], MESSAGE * 100)
            assert info.value.reason == "dropped"
            assert "end-of-data" in str(info.value)
            assert not conn.is_usable
            assert "dead (dropped)" in repr(conn)

    run(main())


def test_data_timeout_is_its_own_phase(run: Run) -> None:
    settings = ConnectionSettings("client.smtplb.test", command_timeout=30, data_timeout=0.3)
    peer = MiniSmtp(replies={b".": SILENT})

    async def main() -> None:
        async with serving(peer) as port:
            conn = await SmtpClientConnection.open("127.0.0.1", port, settings)
            started = time.monotonic()
            with pytest.raises(ConnectError) as info:
                await conn.send("a@x.example", ["b@y.example"], MESSAGE)
            assert time.monotonic() - started < 10
        assert info.value.reason == "timeout"
        assert "awaiting end-of-data reply (data_timeout)" in str(info.value)

    run(main())
    assert peer.messages == [MESSAGE + b".\r\n"]


def test_a_command_timeout_holds_on_a_kept_connection_after_a_long_data_phase(
    run: Run,
) -> None:
    """The timer of one wait is kept for the next (not made per command): a later,
    shorter deadline must still be met, on a connection that carried a message."""
    settings = ConnectionSettings("client.smtplb.test", command_timeout=0.3, data_timeout=30)
    peer = MiniSmtp(replies={b"NOOP": SILENT})

    async def main() -> None:
        async with serving(peer) as port:
            conn = await SmtpClientConnection.open("127.0.0.1", port, settings)
            for _ in range(2):
                result = await conn.send("a@x.example", ["b@y.example"], MESSAGE)
                assert result.data is not None and result.data.code == 250
            started = time.monotonic()
            with pytest.raises(ConnectError) as info:
                await conn.noop()
            assert time.monotonic() - started < 5  # not the 30 s of data_timeout
        assert info.value.reason == "timeout"
        assert "(command_timeout)" in str(info.value)

    run(main())


def test_idle_connection_closed_by_the_server(run: Run) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mini\r\n")
        await reader.readline()
        writer.write(b"250 mini\r\n421 4.4.2 mini idle timeout\r\n")
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            conn = await SmtpClientConnection.open("127.0.0.1", port, SETTINGS)
            with pytest.raises(ConnectError) as info:
                await conn.send("a@x.example", ["b@y.example"], MESSAGE)
            assert info.value.reason == "dropped"
            assert not conn.is_usable
            await conn.quit()

    run(main())


def test_smtputf8_not_offered_is_a_permanent_local_failure(run: Run) -> None:
    async def main() -> None:
        async with serving(MiniSmtp()) as port:
            conn = await SmtpClientConnection.open("127.0.0.1", port, SETTINGS)
            result = await conn.send("ü@x.example", ["b@y.example"], MESSAGE, smtputf8=True)
            assert (result.mail.code, result.mail.enhanced_code) == (550, "5.6.7")
            assert result.outcome(0) == result.mail
            assert conn.is_usable  # nothing was sent
            await conn.quit()

    run(main())


def non_loopback_address() -> str:
    """This host's address on its default route (no packet is sent). Without a
    route off loopback, 0.0.0.0: Linux connects it to this host, and it is not a
    loopback address, so the test still runs (never skips)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))
        except OSError:
            return "0.0.0.0"
        address: str = probe.getsockname()[0]
    return address


def test_no_password_in_clear_to_a_remote_host(run: Run) -> None:
    peer = MiniSmtp()
    settings = ConnectionSettings("client.smtplb.test", username="u", password="secret")
    address = non_loopback_address()

    async def main() -> None:
        async with serving(peer, host=address) as port:
            with pytest.raises(ConnectError) as info:
                await SmtpClientConnection.open(address, port, settings)
        assert info.value.reason == "auth"
        assert "without TLS" in str(info.value)

    run(main())
    assert not any(c.startswith(b"AUTH") for c in peer.commands)


def test_auth_refused(run: Run) -> None:
    peer = MiniSmtp(replies={b"AUTH": b"535 5.7.8 Authentication credentials invalid\r\n"})
    settings = ConnectionSettings("client.smtplb.test", username="u", password="wrong")

    async def main() -> None:
        async with serving(peer) as port:
            with pytest.raises(ConnectError) as info:
                await SmtpClientConnection.open("127.0.0.1", port, settings)
        assert info.value.reason == "auth"
        assert info.value.reply is not None and info.value.reply.enhanced_code == "5.7.8"

    run(main())


# -- TLS ---------------------------------------------------------------------------


def test_opportunistic_starttls(run: Run, server_tls: ssl.SSLContext) -> None:
    peer = MiniSmtp(starttls=server_tls)
    settings = ConnectionSettings("client.smtplb.test", username="u", password="p")

    async def main() -> None:
        async with serving(peer) as port:
            conn = await SmtpClientConnection.open("127.0.0.1", port, settings)
            assert conn.tls_active
            assert "STARTTLS" not in conn.extensions  # the EHLO after TLS
            result = await conn.send("a@x.example", ["b@y.example"], MESSAGE)
            assert result.data is not None and result.data.code == 250
            assert ", TLS" in repr(conn)
            await conn.quit()

    run(main())
    assert peer.tls_used
    verbs = [c.split(b" ")[0] for c in peer.commands]
    assert verbs == [b"EHLO", b"STARTTLS", b"EHLO", b"AUTH", b"MAIL", b"RCPT", b"DATA", b"QUIT"]


def test_starttls_with_verification_fails_on_a_self_signed_certificate(
    run: Run, server_tls: ssl.SSLContext
) -> None:
    settings = ConnectionSettings("client.smtplb.test", tls_verify=True)

    async def main() -> None:
        async with serving(MiniSmtp(starttls=server_tls)) as port:
            with pytest.raises(ConnectError) as info:
                await SmtpClientConnection.open("127.0.0.1", port, settings)
        assert info.value.reason == "tls"
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)

    run(main())


def test_implicit_tls(run: Run, server_tls: ssl.SSLContext) -> None:
    peer = MiniSmtp()
    settings = ConnectionSettings("client.smtplb.test", implicit_tls=True)

    async def main() -> None:
        async with serving(peer, tls=server_tls) as port:
            conn = await SmtpClientConnection.open("127.0.0.1", port, settings)
            assert conn.tls_active
            result = await conn.send("a@x.example", ["b@y.example"], MESSAGE)
            assert result.data is not None and result.data.code == 250
            await conn.quit()

    run(main())
    assert b"STARTTLS" not in peer.commands


def test_tls_required_but_not_offered(run: Run) -> None:
    settings = ConnectionSettings("client.smtplb.test", tls="required")

    async def main() -> None:
        async with serving(MiniSmtp()) as port:
            with pytest.raises(ConnectError) as info:
                await SmtpClientConnection.open("127.0.0.1", port, settings)
        assert info.value.reason == "tls"
        assert "does not offer STARTTLS" in str(info.value)

    run(main())


@pytest.mark.parametrize("policy", ["opportunistic", "required"])
def test_starttls_refused(run: Run, server_tls: ssl.SSLContext, policy: str) -> None:
    peer = MiniSmtp(starttls=server_tls, replies={b"STARTTLS": b"454 4.7.0 TLS not available\r\n"})
    settings = ConnectionSettings("client.smtplb.test", tls=policy)  # type: ignore[arg-type]

    async def main() -> None:
        async with serving(peer) as port:
            if policy == "required":
                with pytest.raises(ConnectError) as info:
                    await SmtpClientConnection.open("127.0.0.1", port, settings)
                assert info.value.reason == "tls"
                assert info.value.reply is not None and info.value.reply.code == 454
                return
            conn = await SmtpClientConnection.open("127.0.0.1", port, settings)
            assert not conn.tls_active  # carried on in clear
            result = await conn.send("a@x.example", ["b@y.example"], MESSAGE)
            assert result.data is not None and result.data.code == 250
            await conn.quit()

    run(main())


def test_tls_none_ignores_starttls(run: Run, server_tls: ssl.SSLContext) -> None:
    peer = MiniSmtp(starttls=server_tls)
    settings = ConnectionSettings("client.smtplb.test", tls="none")

    async def main() -> None:
        async with serving(peer) as port:
            conn = await SmtpClientConnection.open("127.0.0.1", port, settings)
            assert not conn.tls_active
            await conn.quit()

    run(main())
    assert b"STARTTLS" not in peer.commands
