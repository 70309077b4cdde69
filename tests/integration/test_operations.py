"""Operator controls over real sockets: pause/resume, drain, SIGTERM, SIGHUP, expiry + DSN."""

from __future__ import annotations

import email
import re
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from smtplb.sink.profile import DomainRule, SinkProfile
from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, free_port, relay_config, wait_until
from tests.integration.test_balancing_acceptance import send_all


def cli(node: Smtplb, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtplb", *args, "--api", node.api_url],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_pause_survives_restart_and_resume_brings_traffic_back(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    ups = [sinks(), sinks()]
    node = smtplb(*relay_config(tmp_path / "var", [s.port for s in ups])).start()
    assert cli(node, "members", "pause", "relay-1").returncode == 0
    send_all(node.smtp_port, [f"a{i}@example.org" for i in range(20)], tag="paused")
    assert ups[1].wait_for(20, 20)
    assert len(ups[0].received) == 0
    assert node.stop() == 0
    node.start()
    listing = cli(node, "members", "list")
    assert listing.returncode == 0
    assert any(
        ln.split()[:3] == ["relay-1", "main", "paused"] for ln in listing.stdout.splitlines()
    )
    assert cli(node, "members", "resume", "relay-1").returncode == 0
    send_all(node.smtp_port, [f"b{i}@example.org" for i in range(20)], tag="resumed")
    assert ups[0].wait_for(1, 20)  # relay-1 takes traffic again
    paused = [r for r in node.delivery_log() if r["event"] == "member_paused"]
    assert [r["member"] for r in paused] == ["relay-1"]


def test_drain_refuses_intake_keeps_delivering_and_sigterm_exits_cleanly(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    port = free_port()
    node = smtplb(*relay_config(tmp_path / "var", [port])).start()
    send_all(node.smtp_port, [f"q{i}@example.org" for i in range(10)], clients=1, tag="q")
    assert node.api("/readyz")[0] == 200
    assert node.api("/api/v1/drain", "POST")[0] == 200
    assert node.api("/readyz") == (503, {"status": "draining"})
    with socket.create_connection(("127.0.0.1", node.smtp_port), timeout=10) as s:
        assert s.recv(1024).startswith(b"421 4.3.2")
    sink = sinks(port=port)  # the upstream comes back: queued mail still flows
    assert sink.wait_for(10, 30)
    assert node.stop() == 0
    assert "Traceback" not in "".join(node.output)


def test_sighup_reload_adds_a_member(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    first, second = sinks(), sinks()
    text, smtp_port, http_port = relay_config(tmp_path / "var", [first.port])
    node = smtplb(text, smtp_port, http_port).start()
    extra = f'[[pools.members]]\nname = "relay-new"\nrelay = "127.0.0.1:{second.port}"\n'
    node.config_path.write_text(text + extra)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: any(m["name"] == "relay-new" for m in node.api("/api/v1/members")[1]["members"]),
        10,
        "the reloaded member",
    )
    send_all(node.smtp_port, [f"r{i}@example.org" for i in range(40)], tag="reload")
    wait_until(lambda: len(first.received) + len(second.received) >= 40, 30, "40 deliveries")
    assert len(second.received) > 0 and len(first.received) > 0


def test_expired_mail_bounces_to_the_sender_with_a_dsn(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    dead = free_port()
    bounces = sinks()
    text, smtp_port, http_port = relay_config(
        tmp_path / "var", [dead], delivery={"max_lifetime": "3s"}
    )
    text += (
        f'[[pools]]\nname = "bounces"\n[[pools.members]]\nname = "b"\n'
        f'relay = "127.0.0.1:{bounces.port}"\n'
        f'[[routes]]\npool = "bounces"\nmatch = {{ recipient_domain = "shop.test" }}\n'
        f'[[routes]]\npool = "main"\n'
    )
    node = smtplb(text, smtp_port, http_port).start()
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as c:
        c.sendmail(
            "app@shop.test",
            ["lost@example.org"],
            "Message-ID: <exp@shop.test>\r\nSubject: will expire\r\n\r\nbody\r\n",
        )
    assert bounces.wait_for(1, 60)
    dsn = bounces.received[0]
    assert dsn.mail_from == "" and dsn.rcpt_to == ["app@shop.test"]
    report = email.message_from_bytes(dsn.data)
    assert report.get_content_type() == "multipart/report"
    assert b"Final-Recipient: rfc822; lost@example.org" in dsn.data
    assert b"Status: 4.4.7" in dsn.data and b"Message-ID: <exp@shop.test>" in dsn.data

    def expired() -> list[str]:
        return [r["recipient"] for r in node.delivery_log() if r["event"] == "expired"]

    wait_until(lambda: bool(expired()), 10, "the expired record in the delivery log")
    assert expired() == ["lost@example.org"]


def test_priority_lane_overtakes_a_bulk_backlog(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    slow = sinks(SinkProfile(rules={"*": DomainRule(latency=0.3)}))
    node = smtplb(
        *relay_config(tmp_path / "var", [slow.port], member={"max_connections": 1})
    ).start()
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as c:
        for i in range(15):
            c.sendmail(
                "news@shop.test",
                [f"reader{i}@example.org"],
                f"Precedence: bulk\r\nSubject: newsletter {i}\r\n\r\nbuy\r\n",
            )
        c.sendmail(
            "auth@shop.test", ["user@example.org"], "Subject: your password reset\r\n\r\ncode\r\n"
        )
    assert slow.wait_for(16, 30)
    order = [m.rcpt_to[0] for m in slow.received]
    # One bulk message may already be on the wire; the reset goes next, not 16th.
    assert order.index("user@example.org") <= 2, order


def test_queue_show_explains_route_choice_and_skips(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    ups = [sinks(), sinks(), sinks()]
    ports = [ups[0].port, ups[1].port, free_port()]  # relay-3 has no upstream: down
    node = smtplb(*relay_config(tmp_path / "var", ports, health={"interval": "0.2s"})).start()
    assert cli(node, "members", "pause", "relay-1").returncode == 0
    wait_until(
        lambda: "down" in cli(node, "members", "list").stdout, 10, "relay-3 to be marked down"
    )
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as c:
        c.ehlo()
        c.mail("app@shop.test")
        c.rcpt("someone@example.org")
        code, reply = c.data(b"Subject: traced\r\n\r\nhi\r\n")
    assert code == 250
    queue_id = reply.decode().rsplit(" ", 1)[1]
    assert ups[1].wait_for(1, 10)
    shown = cli(node, "queue", "show", queue_id)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "routed someone@example.org: no route matched: first pool → pool main" in out
    assert "round_robin chose relay-2 in pool main (high lane)" in out
    assert "skipped relay-1: paused" in out and "skipped relay-3: down" in out
    assert re.search(r"relay-2 \(127\.0\.0\.1:\d+\): someone@example.org → 250 ", out), out
