"""Egress members: direct delivery to the destination, bound to their own source IP."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, free_port, wait_until


def test_egress_members_bind_their_source_ip_and_follow_static_routes(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    mx = sinks()
    other = sinks()
    smtp_port, http_port = free_port(), free_port()
    text = f"""
workers = 1
data_dir = "{tmp_path / "var"}"
hostname = "relay.smtplb.test"
[smtp]
listen = ["127.0.0.1:{smtp_port}"]
[http]
listen = "127.0.0.1:{http_port}"
[[pools]]
name = "ips"
strategy = "round_robin"
  [[pools.members]]
  name = "ip-2"
  source_ip = "127.0.0.2"
  ehlo = "mta2.smtplb.test"
  [[pools.members]]
  name = "ip-3"
  source_ip = "127.0.0.3"
  ehlo = "mta3.smtplb.test"
[static_routes]
"example.org" = "127.0.0.1:{mx.port}"
".sub.example.net" = "127.0.0.1:{other.port}"
"""
    node = smtplb(text, smtp_port, http_port).start()
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as c:
        for i in range(10):
            c.sendmail("app@shop.test", [f"u{i}@example.org"], f"Subject: {i}\r\n\r\nx\r\n")
        c.sendmail("app@shop.test", ["v@a.sub.example.net"], "Subject: sub\r\n\r\nx\r\n")
    assert mx.wait_for(10, 20) and other.wait_for(1, 20)
    seen = {(m.envelope.client_ip, m.envelope.helo) for m in mx.received}
    assert seen == {("127.0.0.2", "mta2.smtplb.test"), ("127.0.0.3", "mta3.smtplb.test")}
    assert other.received[0].rcpt_to == ["v@a.sub.example.net"]

    def delivered() -> list[dict[str, object]]:
        return [r for r in node.delivery_log() if r["event"] == "delivered"]

    wait_until(lambda: len(delivered()) == 11, 10, "11 delivered records")
    assert {r["source_ip"] for r in delivered()} == {"127.0.0.2", "127.0.0.3"}
