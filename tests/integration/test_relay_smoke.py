from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config


def test_message_goes_through_to_a_relay_member(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    sink = sinks()
    node = smtplb(*relay_config(tmp_path / "var", [sink.port])).start()
    body = b"Subject: hello\r\nMessage-ID: <m1@test>\r\n\r\nline one\r\n.leading dot\r\n"
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        client.sendmail("app@shop.test", ["user@example.org"], body)
    assert sink.wait_for(1, timeout=10)
    got = sink.received[0]
    assert got.mail_from == "app@shop.test" and got.rcpt_to == ["user@example.org"]
    assert got.data.startswith(b"Received: from ")
    assert got.data.endswith(body)
