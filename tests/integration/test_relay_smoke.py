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


def test_bodies_with_and_without_dot_lines_arrive_intact(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    """Intake tells delivery when a body had no line starting with a dot (it is sent
    as it is, unread); a body with one is stuffed again on the way out. Either way
    the upstream reads what the client sent, also past the 64 KB pieces of the reader,
    and through the HTTP door, whose content delivery always checks and stuffs."""
    sink = sinks()
    node = smtplb(*relay_config(tmp_path / "var", [sink.port])).start()
    lines = [b"%070d\r\n" % i for i in range(3000)]  # 216 KB: several reader pieces
    dotted = list(lines)
    for at in (0, 1260, 1261, 2520, -1):  # near where the reader cuts a piece
        dotted[at] = b"." + dotted[at]
    bodies = {
        "plain@shop.test": b"Subject: plain\r\n\r\n" + b"".join(lines),
        "dots@shop.test": b"Subject: dots\r\n\r\n" + b"".join(dotted),
        "lone@shop.test": b"Subject: lone\r\n\r\n.\r\n..\r\n. \r\nend\r\n",
        "first@shop.test": b".Subject: a dot first\r\n\r\nx\r\n",
    }
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        for sender, body in bodies.items():
            client.sendmail(sender, ["user@example.org"], body)
    raw = "Subject: via http\n\n.leading dot\nbare LF lines\r\n..two\n"
    status, _ = node.api(
        "/api/v1/messages", "POST", {"from": "http@shop.test", "to": ["u@example.org"], "raw": raw}
    )
    assert status == 202
    assert sink.wait_for(len(bodies) + 1, timeout=20)
    got = {m.mail_from: m.data for m in sink.received}
    for sender, body in bodies.items():
        assert got[sender].startswith(b"Received: from ") and got[sender].endswith(body), sender
    http = got["http@shop.test"]
    assert http.endswith(b"\r\n\r\n.leading dot\r\nbare LF lines\r\n..two\r\n")
    assert http.count(b"\n") == http.count(b"\r\n")  # no bare LF reached the upstream
