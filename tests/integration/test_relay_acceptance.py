"""Issue 2 acceptance, over real sockets with real peers."""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, free_port, relay_config, tool, wait_until

RECEIVED = re.compile(rb"\AReceived: [^\r]*\r\n(?:[ \t][^\r]*\r\n)*")
VOLATILE = re.compile(rb"^(Date|Message-Id): [^\r]*", re.MULTILINE | re.IGNORECASE)


def strip_trace(data: bytes) -> bytes:
    match = RECEIVED.match(data)
    assert match, f"no Received header first: {data[:80]!r}"
    return data[match.end() :]


def test_smtp_source_1000_messages_round_robin_byte_identical(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    smtp_source = tool("smtp-source")
    upstreams = [sinks() for _ in range(3)]
    node = smtplb(*relay_config(tmp_path / "var", [s.port for s in upstreams])).start()
    args = ["-s", "10", "-l", "2000", "-f", "app@shop.test", "-t", "user@example.org"]
    subprocess.run(
        [smtp_source, *args, "-m", "1000", f"127.0.0.1:{node.smtp_port}"], check=True, timeout=120
    )
    wait_until(lambda: sum(len(s.received) for s in upstreams) >= 1000, 60, "1000 deliveries")

    counts = [len(s.received) for s in upstreams]
    print(f"round robin, 1000 via smtp-source: per member {counts}")
    assert sum(counts) == 1000, counts
    for count in counts:
        assert abs(count - 1000 / 3) <= 1000 / 3 * 0.10, counts

    # What smtp-source sends, captured straight from it: the reference.
    reference_sink = sinks()
    subprocess.run(
        [smtp_source, *args, "-m", "1", f"127.0.0.1:{reference_sink.port}"], check=True, timeout=30
    )
    assert reference_sink.wait_for(1, 10)
    reference = VOLATILE.sub(b"", reference_sink.received[0].data)
    for sink in upstreams:
        for message in sink.received:
            assert message.mail_from == "app@shop.test"
            assert message.rcpt_to == ["user@example.org"]
            assert VOLATILE.sub(b"", strip_trace(message.data)) == reference


def test_300_accepted_while_upstream_down_survive_kill_9(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    port = free_port()  # nothing listens here yet: the only upstream is down
    node = smtplb(*relay_config(tmp_path / "var", [port])).start()
    ids = [f"<kill9-{i}@shop.test>" for i in range(300)]
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        for mid in ids:
            body = f"Message-ID: {mid}\r\nSubject: survive\r\n\r\nbody\r\n"
            client.sendmail("app@shop.test", ["user@example.org"], body)
    node.kill()
    sink = sinks(port=port)
    node.start()
    wait_until(lambda: len(sink.received) >= 300, 90, "300 deliveries after the restart")
    arrived = {m.message_id for m in sink.received}
    print(f"kill -9 with 300 queued: {len(arrived & set(ids))} of 300 Message-IDs arrived")
    assert arrived == set(ids)


SMUGGLING_SHAPES = [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n"]


def smtp_exchange(port: int, payload: bytes) -> bytes:
    """Send raw bytes (ending with QUIT), read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.recv(1024)  # banner
        s.sendall(payload)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("shape", SMUGGLING_SHAPES, ids=["LF.CRLF", "CRLF.LF", "CR.CRLF", "LF.LF"])
def test_smuggling_never_puts_a_second_message_upstream(
    shape: bytes,
    tmp_path: Path,
    sinks: Callable[..., ThreadedSink],
    smtplb: Callable[..., Smtplb],
) -> None:
    sink = sinks()
    node = smtplb(*relay_config(tmp_path / "var", [sink.port])).start()
    payload = (
        b"EHLO attacker.test\r\nMAIL FROM:<a@shop.test>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
        b"Subject: first\r\n\r\nhello" + shape + b"MAIL FROM:<evil@shop.test>\r\n"
        b"RCPT TO:<victim@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
        b"MAIL FROM:<a@shop.test>\r\nRCPT TO:<after@example.org>\r\nDATA\r\n"
        b"Subject: after\r\n\r\nclean\r\n.\r\nQUIT\r\n"
    )
    replies = smtp_exchange(node.smtp_port, payload)
    assert re.search(rb"^550 5\.6\.0 ", replies, re.MULTILINE), replies
    assert sink.wait_for(1, 10)
    _, queue = node.api("/api/v1/queue?limit=10")
    # Exactly one message was accepted: the clean one sent after the attack.
    assert [m["recipients"][0]["address"] for m in queue["messages"]] == ["after@example.org"]
    assert [m.rcpt_to for m in sink.received] == [["after@example.org"]]
    assert b"evil" not in sink.received[0].data


def test_bad_input_gets_clear_replies_and_the_session_stays_usable(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    sink = sinks()
    text, smtp_port, http_port = relay_config(
        tmp_path / "var", [sink.port], smtp={"max_message_size": "20KB"}
    )
    node = smtplb(text, smtp_port, http_port).start()
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as c:
        c.ehlo("client.test")
        assert c.docmd("FROBNICATE now")[0] in (500, 502)
        assert c.docmd("NOOP")[0] == 250  # still usable after garbage
        code, text_ = c.docmd("NOOP " + "x" * 3000)
        assert code >= 500 and b"too long" in text_.lower()
        assert c.docmd("NOOP")[0] == 250
        assert c.docmd("MAIL FROM:<no spaces allowed@shop.test>")[0] in (501, 553)
        assert c.docmd("MAIL FROM:<a@shop.test>")[0] == 250
        code, _ = c.docmd("RCPT TO:<not-an-address>")
        assert code in (501, 553)
        assert c.docmd("RSET")[0] == 250
        # Oversized, declared: refused at MAIL.
        code, text_ = c.docmd("MAIL FROM:<a@shop.test> SIZE=50000")
        assert (code, text_[:5]) == (552, b"5.3.4")
        # Oversized, undeclared: refused after the data.
        c.docmd("MAIL FROM:<a@shop.test>")
        c.docmd("RCPT TO:<b@example.org>")
        assert c.docmd("DATA")[0] == 354
        c.send(b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n")
        for _ in range(30):
            c.send(b"y" * 998 + b"\r\n")
        code, text_ = c.docmd(".")
        assert (code, text_[:5]) == (552, b"5.3.4")
        assert c.docmd("NOOP")[0] == 250
    _, queue = node.api("/api/v1/queue")
    assert queue["messages"] == []


def test_relay_denied_outside_relay_networks_with_swaks(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    swaks = tool("swaks")
    sink = sinks()
    text, smtp_port, http_port = relay_config(
        tmp_path / "var", [sink.port], smtp={"relay_networks": ["192.0.2.0/24"]}
    )
    node = smtplb(text, smtp_port, http_port).start()
    result = subprocess.run(
        [
            swaks,
            "--server",
            f"127.0.0.1:{node.smtp_port}",
            "--from",
            "a@shop.test",
            "--to",
            "b@example.org",
            "--timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert re.search(r"<\*\* 5\d\d 5\.7\.\d", result.stdout), result.stdout


def test_swaks_through_smtplb_to_postfix_smtp_sink(
    tmp_path: Path, smtplb: Callable[..., Smtplb]
) -> None:
    swaks, smtp_sink = tool("swaks"), tool("smtp-sink")
    dump = tmp_path / "dump"
    dump.mkdir()
    port = free_port()
    sink = subprocess.Popen(
        [smtp_sink, "-u", "root", "-d", str(dump / "%M."), f"127.0.0.1:{port}", "64"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        node = smtplb(*relay_config(tmp_path / "var", [port])).start()
        for i in range(5):
            subprocess.run(
                [
                    swaks,
                    "--server",
                    f"127.0.0.1:{node.smtp_port}",
                    "--from",
                    "a@shop.test",
                    "--to",
                    f"user{i}@example.org",
                    "--header",
                    f"Subject: swaks {i}",
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )

        def dumped() -> bytes:
            return b"".join(p.read_bytes() for p in dump.iterdir())

        # smtp-sink creates a dump file before it has written it: wait for the content.
        wait_until(
            lambda: all(f"Subject: swaks {i}".encode() in dumped() for i in range(5)),
            30,
            "5 messages at smtp-sink",
        )
        for i in range(5):
            assert f"X-Rcpt-Args: <user{i}@example.org>".encode() in dumped()
    finally:
        sink.terminate()
        sink.wait(10)


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtplb", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_names_the_bad_key_and_never_tracebacks(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[pools]]\nname = "p"\nstrategy = "random"\n'
        '[[pools.members]]\nname = "a"\nrelay = "127.0.0.1:25"\n'
    )
    result = run_check(bad)
    assert result.returncode == 1
    assert "pools[0].strategy: unknown strategy 'random'" in result.stderr
    garbage = tmp_path / "garbage.toml"
    garbage.write_text("this is [not TOML\n")
    result = run_check(garbage)
    assert result.returncode == 1
    assert "not valid TOML" in result.stderr and "Traceback" not in result.stderr
    good = tmp_path / "good.toml"
    good.write_text(bad.read_text().replace('"random"', '"weighted"'))
    assert run_check(good).returncode == 0
