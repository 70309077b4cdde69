"""``smtplb queue show`` traces survive a restart (issue 10, item 11): the steps
are stored in the spool with the results (no commit of their own)."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config, wait_until
from tests.integration.test_operations import cli


def test_queue_show_trace_survives_a_restart(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    upstream = sinks()
    node = smtplb(*relay_config(tmp_path / "var", [upstream.port])).start()
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as c:
        c.ehlo()
        c.mail("app@shop.test")
        c.rcpt("someone@example.org")
        code, reply = c.data(b"Subject: traced\r\n\r\nhi\r\n")
    assert code == 250
    queue_id = reply.decode().rsplit(" ", 1)[1]
    assert upstream.wait_for(1, 10)
    wait_until(lambda: "delivered" in cli(node, "queue", "show", queue_id).stdout, 10, "delivered")
    before = cli(node, "queue", "show", queue_id).stdout
    assert "routed someone@example.org" in before and "chose relay-1" in before
    assert node.stop() == 0
    node.start()
    after = cli(node, "queue", "show", queue_id)
    assert after.returncode == 0, after.stderr
    assert "routed someone@example.org: no route matched: first pool → pool main" in after.stdout
    assert "chose relay-1 in pool main" in after.stdout
    assert "relay-1 (127.0.0.1:" in after.stdout and "→ 250 " in after.stdout
    assert after.stdout == before
