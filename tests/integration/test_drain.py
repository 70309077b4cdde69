"""Drain and its undo over real sockets, through the CLI verb and the HTTP API."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config, wait_until


def cli(node: Smtplb, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtplb", *args, "--api", node.api_url],
        capture_output=True,
        text=True,
        timeout=30,
    )


def greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return s.recv(1024)


def send_one(port: int, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail("a@shop.test")
        client.rcpt(rcpt)
        return client.data(b"Subject: drain test\r\n\r\nhello\r\n")


def test_drain_verb_then_off_refuses_then_takes_mail_again(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    up = sinks()
    node = smtplb(*relay_config(tmp_path / "var", [up.port])).start()
    assert node.api("/readyz") == (200, {"status": "ready"})

    drained = cli(node, "drain")
    assert drained.returncode == 0, drained.stderr
    assert node.api("/readyz") == (503, {"status": "draining"})
    assert greeting(node.smtp_port).startswith(b"421 4.3.2")
    status, problem = node.api(
        "/api/v1/messages", "POST", {"from": "a@shop.test", "to": ["b@example.org"], "text": "x"}
    )
    assert status == 503 and problem["title"] == "Draining"

    undone = cli(node, "drain", "--off")
    assert undone.returncode == 0, undone.stderr
    assert node.api("/readyz") == (200, {"status": "ready"})
    assert greeting(node.smtp_port).startswith(b"220 ")
    code, text = send_one(node.smtp_port, "b@example.org")
    assert code == 250, text
    assert up.wait_for(1, 20)


def test_undo_by_http_delete_reaches_every_worker(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    up = sinks()
    text, smtp_port, http_port = relay_config(tmp_path / "var", [up.port], workers=2)
    node = smtplb(text, smtp_port, http_port).start()
    wait_until(
        lambda: sum("smtplb listening" in line for line in node.output) == 2, 20, "both workers"
    )

    def greetings(count: int = 20) -> set[bytes]:
        # the kernel spreads connections over both workers' listeners
        return {greeting(node.smtp_port)[:3] for _ in range(count)}

    assert node.api("/api/v1/drain", "POST") == (200, {"draining": True})
    assert node.api("/readyz")[0] == 503
    wait_until(lambda: greetings() == {b"421"}, 10, "both workers to refuse")

    assert node.api("/api/v1/drain", "DELETE") == (200, {"draining": False})
    assert node.api("/readyz") == (200, {"status": "ready"})
    wait_until(lambda: greetings() == {b"220"}, 10, "both workers to take mail again")
    for i in range(6):
        code, reply = send_one(node.smtp_port, f"w{i}@example.org")
        assert code == 250, reply
    assert up.wait_for(6, 20)
