"""Message bodies over real sockets: NUL bytes, large messages, the memory budget."""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from smtplb.intake.server import Listener
from smtplb.sink.server import ThreadedSink
from smtplb.smtp.framing import PIECE
from tests.integration.conftest import Smtplb, relay_config
from tests.integration.test_intake_socket import MESSAGE, POLICY, Recorder, run

pytestmark = pytest.mark.integration


def test_a_nul_byte_is_refused_554_and_the_connection_goes_on() -> None:
    async def body(listener: Listener, recorder: Recorder) -> None:
        def client() -> None:
            with smtplib.SMTP("127.0.0.1", listener.port) as smtp:
                with pytest.raises(smtplib.SMTPDataError) as info:
                    smtp.sendmail("a@example.com", ["b@example.net"], b"Subject: x\r\n\r\na\0b\r\n")
                assert (info.value.smtp_code, info.value.smtp_error) == (
                    554,
                    b"5.6.0 Error: NUL byte in message content; BINARYMIME is not supported",
                )
                assert smtp.sendmail("a@example.com", ["b@example.net"], MESSAGE) == {}

        await asyncio.to_thread(client)
        assert [data for _, data in recorder.messages] == [MESSAGE]

    run(body)


def test_a_large_message_arrives_whole_in_one_piece() -> None:
    line = b".a line that smtplib dot-stuffs, 64 characters long ..........\r\n"
    message = b"Subject: big\r\n\r\n" + line * (8 * PIECE // len(line))

    async def body(listener: Listener, recorder: Recorder) -> None:
        def client() -> None:
            with smtplib.SMTP("127.0.0.1", listener.port) as smtp:
                assert smtp.sendmail("a@example.com", ["b@example.net"], message) == {}

        await asyncio.to_thread(client)
        [(_, data)] = recorder.messages
        assert data == message

    run(body, dataclasses.replace(POLICY, max_message_size=10**7))


def test_max_pending_bytes_refuses_data_with_452_while_another_body_fills_it(
    tmp_path: Path,
    sinks: Callable[..., ThreadedSink],
    smtplb: Callable[..., Smtplb],
) -> None:
    """A running smtplb, ``max_pending_bytes`` = one largest message: a client halfway
    through a large body holds the room; another client's DATA gets 452 4.3.1 until
    that body is done."""
    sink = sinks()
    smtp = {"max_message_size": "1MB", "max_pending_bytes": "1MB"}
    node = smtplb(*relay_config(tmp_path / "var", [sink.port], smtp=smtp)).start()

    filler = socket.create_connection(("127.0.0.1", node.smtp_port), timeout=10)
    with filler, filler.makefile("rb") as replies:

        def command(data: bytes, expect: bytes) -> None:
            filler.sendall(data)
            reply = replies.readline()
            while reply[3:4] == b"-":
                reply = replies.readline()
            assert reply.startswith(expect), reply

        command(b"", b"220")
        command(b"EHLO filler.test\r\n", b"250")
        command(b"MAIL FROM:<a@example.com>\r\n", b"250")
        command(b"RCPT TO:<b@example.net>\r\n", b"250")
        command(b"DATA\r\n", b"354")
        filler.sendall(b"Subject: filler\r\n\r\n" + (b"f" * 98 + b"\r\n") * 9_000)  # 900 kB

        refused = b""
        with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as other:
            other.ehlo("other.test")
            other.mail("c@example.com", ["SIZE=200000"])
            other.rcpt("d@example.net")
            # The filler's bytes may still be on their way: poll until they are held.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                code, text = other.docmd("DATA")
                if code == 452:
                    refused = text
                    break
                assert code == 354, (code, text)
                other.send(b".\r\n")  # an empty message: under the limit, fine
                assert other.getreply()[0] == 250
                other.mail("c@example.com", ["SIZE=200000"])
                other.rcpt("d@example.net")
            assert refused == b"4.3.1 Insufficient system storage, try again later"

            command(b".\r\n", b"250")  # the filler's message is stored: room again
            code, _ = other.docmd("DATA")
            assert code == 354
            other.send(b"Subject: now\r\n\r\nfits\r\n.\r\n")
            assert other.getreply()[0] == 250
        command(b"QUIT\r\n", b"221")
