"""Issue 5 acceptance: delivery log, metrics, member API, injection with API keys, webhooks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from smtplb.sink.profile import SinkProfile
from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config, wait_until
from tests.integration.test_balancing_acceptance import send_all

KEY = "test-key-0123456789"


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


class HookReceiver:
    """A webhook endpoint that fails its first ``fail_first`` requests with 500."""

    def __init__(self, fail_first: int) -> None:
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.cond:
                    receiver.requests += 1
                    if receiver.requests <= fail_first:
                        self.send_response(500)
                    else:
                        receiver.events.extend(json.loads(body))
                        self.send_response(204)
                    receiver.cond.notify_all()
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def hook() -> Iterator[HookReceiver]:
    receiver = HookReceiver(fail_first=2)
    yield receiver
    receiver.close()


def test_operator_view_counts_agree_everywhere(
    tmp_path: Path,
    sinks: Callable[..., ThreadedSink],
    smtplb: Callable[..., Smtplb],
    hook: HookReceiver,
) -> None:
    bad = [f"gone{i}@example.org" for i in range(20)]
    profile = SinkProfile(unknown_users=frozenset(bad))
    ups = [sinks(profile), sinks(profile)]
    text, smtp_port, http_port = relay_config(
        tmp_path / "var", [s.port for s in ups], http={"api_keys": [KEY]}
    )
    text += f'[[webhooks]]\nurl = "{hook.url}"\nevents = ["bounced"]\nretry_base = "0.2s"\n'
    node = smtplb(text, smtp_port, http_port).start()
    good = [f"user{i}@example.org" for i in range(181)]
    send_all(node.smtp_port, good + bad, clients=3, tag="ops")

    def outcomes() -> list[dict[str, Any]]:
        return [r for r in node.delivery_log() if r.get("sender") == "app@shop.test"]

    wait_until(
        lambda: sum(r["event"] in ("delivered", "bounced") for r in outcomes()) >= 201,
        60,
        "201 final outcomes in the delivery log",
    )
    records = outcomes()
    delivered = [r for r in records if r["event"] == "delivered"]
    bounced = [r for r in records if r["event"] == "bounced"]
    print(
        f"delivery log: {len(delivered)} delivered, {len(bounced)} bounced "
        f"{sorted({r['enhanced_code'] for r in bounced})}"
    )
    assert len(delivered) == 181
    assert len(bounced) == 20
    assert {r["enhanced_code"] for r in bounced} == {"5.1.1"}
    assert sorted(r["recipient"] for r in bounced) == sorted(bad)
    for r in delivered:
        assert r["member"] in ("relay-1", "relay-2") and r["code"] == 250
        assert isinstance(r["latency_ms"], float) and r["upstream"]

    # Each bounce sends one DSN (null sender) to app@shop.test, delivered like any mail.
    wait_until(lambda: sum(len(s.received) for s in ups) >= 181 + 20, 30, "DSNs")
    dsns = [m for s in ups for m in s.received if m.mail_from == ""]
    assert len(dsns) == 20 and all(m.rcpt_to == ["app@shop.test"] for m in dsns)

    # `smtplb logs analyze --json` counts the same: 181 + 20 DSNs delivered, 20 hard bounces.
    wait_until(
        lambda: sum(r["event"] == "delivered" for r in node.delivery_log()) >= 201,
        10,
        "the DSN deliveries in the log",
    )
    log_path = tmp_path / "var" / "logs" / "delivery.jsonl"
    analyzed = subprocess.run(
        [sys.executable, "-m", "smtplb", "logs", "analyze", "--json", str(log_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    overall = json.loads(analyzed.stdout)["overall"]
    print(
        f"logs analyze --json: delivered {overall['delivered']} (181 + 20 DSNs), "
        f"hard bounces {overall['hard_bounces']}, received {overall['received']}"
    )
    assert (overall["delivered"], overall["hard_bounces"]) == (181 + 20, 20)
    assert overall["soft_bounces"] == 0 and overall["received"] == 201 + 20

    # /metrics agrees with what each sink accepted (test mail and DSNs alike).
    with urllib.request.urlopen(f"{node.api_url}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    for n, sink in enumerate(ups, start=1):
        name = f"relay-{n}"
        print(
            f"{name}: metrics delivered "
            f"{metric(metrics, 'smtplb_messages_total', member=name, outcome='delivered'):g}"
            f", sink received {len(sink.received)}"
        )
        assert metric(metrics, "smtplb_messages_total", member=name, outcome="delivered") == len(
            sink.received
        )
        assert metric(metrics, "smtplb_member_up", member=name) == 1
    assert metric(metrics, "smtplb_messages_total", outcome="bounced") == 20

    status, members = node.api("/api/v1/members", key=KEY)
    assert status == 200
    assert {(m["name"], m["health"]) for m in members["members"]} == {
        ("relay-1", "up"),
        ("relay-2", "up"),
    }
    assert node.api("/api/v1/members")[0] == 401
    assert node.api("/api/v1/members", key="wrong")[0] == 401

    message = {
        "from": "api@shop.test",
        "to": ["inject@example.org"],
        "subject": "via API",
        "text": "hello from the API",
    }
    status, problem = node.api("/api/v1/messages", "POST", message)
    assert status == 401 and problem["status"] == 401
    status, body = node.api("/api/v1/messages", "POST", message, key=KEY)
    assert status == 202 and body["queue_id"]
    wait_until(
        lambda: any(m.rcpt_to == ["inject@example.org"] for s in ups for m in s.received),
        30,
        "the injected message at a sink",
    )
    got = next(m for s in ups for m in s.received if m.rcpt_to == ["inject@example.org"])
    assert b"Subject: via API" in got.data and b"hello from the API" in got.data
    status, problem = node.api("/api/v1/messages", "POST", {"from": "x"}, key=KEY)
    assert status == 422 and problem["title"]

    # Webhooks: the receiver failed twice, the retries got every bounce through.
    with hook.cond:
        assert hook.cond.wait_for(lambda: len(hook.events) >= 20, timeout=30)
    assert sorted(e["recipient"] for e in hook.events) == sorted(bad)
    assert hook.requests >= 3
