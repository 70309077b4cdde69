"""Several worker processes on one node: one port, shards, one operator view."""

from __future__ import annotations

import contextlib
import json
import smtplib
import socketserver
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from smtplb.config import usable_cores
from smtplb.sink.profile import DomainRule, SinkProfile
from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, free_port, relay_config, tool, wait_until
from tests.integration.test_balancing_acceptance import health, send_all
from tests.integration.test_operations import cli
from tests.integration.test_operator_view import metric


def test_two_workers_share_the_port_and_answer_as_one_node(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    smtp_source = tool("smtp-source")
    ups = [sinks(), sinks()]
    text, smtp_port, http_port = relay_config(tmp_path / "var", [s.port for s in ups], workers=2)
    node = smtplb(text, smtp_port, http_port).start()
    wait_until(
        lambda: sum("smtplb listening" in line for line in node.output) == 2, 20, "both workers"
    )
    subprocess.run(
        [
            smtp_source,
            "-s",
            "10",
            "-m",
            "600",
            "-f",
            "a@shop.test",
            "-t",
            "b@example.org",
            f"127.0.0.1:{node.smtp_port}",
        ],
        check=True,
        timeout=120,
    )
    wait_until(lambda: sum(len(s.received) for s in ups) >= 600, 60, "600 deliveries")
    # Both workers took connections: each shard delivered some of the mail.
    per_shard = []
    for shard in ("spool.db", "spool-1.db"):
        uri = f"file:{tmp_path / 'var' / shard}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            per_shard.append(db.execute("SELECT count(*) FROM recipients").fetchone()[0])
    assert sum(per_shard) == 600 and all(count > 0 for count in per_shard), per_shard
    # Delivery results reach the spool with the next commit (at most lazy_delay later).
    wait_until(
        lambda: node.api("/api/v1/queue?limit=0")[1]["stats"]["delivered"] == 600,
        10,
        "600 delivered in the spools",
    )
    wait_until(
        lambda: sum(m["delivered"] for m in node.api("/api/v1/members")[1]["members"]) == 600,
        10,
        "the members' counters of both workers",
    )

    def metrics_text() -> str:
        with urllib.request.urlopen(f"{node.api_url}/metrics", timeout=10) as resp:
            return resp.read().decode()

    # worker 1 renders its metrics every METRICS_EVERY (5 s) into its snapshot
    wait_until(
        lambda: metric(metrics_text(), "smtplb_messages_total", outcome="delivered") == 600,
        20,
        "both workers' counters in /metrics",
    )
    metrics = metrics_text()
    assert metric(metrics, "smtplb_member_up", member="relay-1") == 1  # max, not a sum
    snapshot = json.loads((tmp_path / "var" / "run" / "worker-1.json").read_text())
    assert snapshot["worker"] == 1 and sum(m["delivered"] for m in snapshot["members"]) > 0

    # A pause through worker 0's API reaches worker 1.
    assert node.api("/api/v1/members/relay-1/pause", "POST")[0] == 200
    wait_until(
        lambda: all(
            m["paused"]
            for m in json.loads((tmp_path / "var" / "run" / "worker-1.json").read_text())["members"]
            if m["name"] == "relay-1"
        ),
        10,
        "worker 1 to follow the pause",
    )
    before = len(ups[0].received)
    send_all(node.smtp_port, [f"p{i}@example.org" for i in range(60)], clients=6, tag="p")
    wait_until(lambda: sum(len(s.received) for s in ups) >= 660, 30, "60 more deliveries")
    assert len(ups[0].received) == before
    assert node.stop() == 0


def test_lowering_workers_loses_nothing(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    port = free_port()  # upstream down while mail is queued on both shards
    text, smtp_port, http_port = relay_config(tmp_path / "var", [port], workers=2)
    node = smtplb(text, smtp_port, http_port).start()
    wait_until(
        lambda: sum("smtplb listening" in line for line in node.output) == 2, 20, "both workers"
    )
    accepted = send_all(
        node.smtp_port, [f"k{i}@example.org" for i in range(120)], clients=12, tag="keep"
    )
    assert node.stop() == 0
    node.config_path.write_text(
        text.replace("workers = 2", "workers = 1")
    )  # back to one worker: spool-1.db has no owner now
    sink = sinks(port=port)
    node.output.clear()
    node.start()
    wait_until(lambda: len(sink.received) >= 120, 60, "every message after the restart")
    assert {m.message_id for m in sink.received} == set(accepted)
    assert not (tmp_path / "var" / "spool-1.db").exists()


class CheckCounter(socketserver.ThreadingTCPServer):
    """A member that answers health checks (220, EHLO, QUIT) and counts connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.connections = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _CheckHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _CheckHandler(socketserver.StreamRequestHandler):
    server: CheckCounter

    def handle(self) -> None:
        with self.server.lock:
            self.server.connections += 1
        self.wfile.write(b"220 count.test ESMTP\r\n")
        for line in self.rfile:
            if line[:4].upper() == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            self.wfile.write(b"250 count.test\r\n")


def test_two_workers_check_a_member_once_per_node_and_agree_on_its_health(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    checked, other = CheckCounter(), sinks()
    text, smtp_port, http_port = relay_config(
        tmp_path / "var",
        [checked.server_address[1], other.port],
        health={"interval": "1s"},
        workers=2,
    )
    node = smtplb(text, smtp_port, http_port).start()
    wait_until(
        lambda: sum("smtplb listening" in line for line in node.output) == 2, 20, "both workers"
    )
    wait_until(lambda: checked.connections > 0, 10, "the first check")
    # One node's rate of checks (interval 1s, jitter ±10%): about 6 in 6 s; 12 if
    # each worker checked. (A window measured, not a wait for an event.)
    before = checked.connections
    time.sleep(6)
    during = checked.connections - before
    assert 3 <= during <= 8, f"{during} checks in 6 s"

    checked.shutdown()
    checked.server_close()  # refused from now on: worker 0 takes it down, worker 1 follows
    wait_until(lambda: health(node, "relay-1") == "down", 20, "relay-1 down in the API")
    run = tmp_path / "var" / "run"
    wait_until(
        lambda: any(
            m["name"] == "relay-1" and m["health"] == "down"
            for m in json.loads((run / "worker-1.json").read_text())["members"]
        ),
        10,
        "worker 1 to follow worker 0's verdict",
    )
    accepted = send_all(node.smtp_port, [f"h{i}@example.org" for i in range(40)], clients=4)
    wait_until(lambda: len(other.received) >= 40, 30, "40 deliveries through relay-2")
    assert sorted(m.message_id or "" for m in other.received) == sorted(accepted)

    def delivered() -> dict[str, int]:
        return {m["name"]: m["delivered"] for m in node.api("/api/v1/members")[1]["members"]}

    wait_until(lambda: delivered() == {"relay-1": 0, "relay-2": 40}, 10, "the summed counters")
    assert sum("member_down" in line for line in node.output) <= 1  # worker 0's, once
    assert node.stop() == 0


def test_queue_show_finds_the_trace_whichever_worker_handled_the_message(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    # A slow upstream: each delivery takes 6 s, so the dispatch steps are seen while
    # the deliveries are under way (before any commit of theirs on the shard).
    upstream = sinks(SinkProfile(rules={"*": DomainRule(latency=6)}))
    text, smtp_port, http_port = relay_config(
        tmp_path / "var", [upstream.port], member={"max_connections": 40}, workers=2
    )
    node = smtplb(text, smtp_port, http_port).start()
    wait_until(
        lambda: sum("smtplb listening" in line for line in node.output) == 2, 20, "both workers"
    )
    queue_ids = []
    for i in range(20):  # one connection each: the kernel spreads them over both workers
        with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=30) as client:
            client.ehlo()
            client.mail("app@shop.test")
            client.rcpt(f"t{i}@example.org")
            code, reply = client.data(f"Subject: t{i}\r\n\r\nhi\r\n".encode())
        assert code == 250
        queue_ids.append(reply.decode().rsplit(" ", 1)[1])
    shard_1 = tmp_path / "var" / "spool-1.db"
    with contextlib.closing(sqlite3.connect(f"file:{shard_1}?mode=ro", uri=True)) as db:
        on_worker_1 = {row[0] for row in db.execute("SELECT queue_id FROM messages")}
    assert on_worker_1 and on_worker_1 != set(queue_ids), "both workers took messages"

    def steps(queue_id: str) -> list[str]:
        status, body = node.api(f"/api/v1/queue/{queue_id}")
        assert status == 200, (queue_id, body)
        return [step["step"] for step in body["trace"]]

    busy = [q for q in queue_ids if q in on_worker_1][-1]  # the newest: no commit after it
    wait_until(lambda: steps(busy) == ["routed", "dispatch"], 5, "worker 1's delivery under way")
    assert upstream.wait_for(20, 60)
    for queue_id in queue_ids:
        wait_until(
            lambda q=queue_id: steps(q)[:2] == ["routed", "dispatch"] and "attempt" in steps(q),  # type: ignore[misc]
            10,
            f"the trace of {queue_id} ({'worker 1' if queue_id in on_worker_1 else 'worker 0'})",
        )
    shown = cli(node, "queue", "show", busy)
    assert shown.returncode == 0 and "chose relay-1" in shown.stdout, shown
    assert node.stop() == 0


def test_without_a_workers_key_a_node_runs_one_worker_per_core(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    cores = min(64, usable_cores())
    up = sinks()
    text, smtp_port, http_port = relay_config(tmp_path / "var", [up.port], workers=None)
    assert "workers =" not in text
    node = smtplb(text, smtp_port, http_port).start()
    wait_until(
        lambda: sum("smtplb listening" in line for line in node.output) == cores,
        20,
        f"{cores} workers",
    )
    status, overview = node.api("/api/v1/overview")
    assert status == 200
    assert overview["workers"] == cores
    accepted = send_all(node.smtp_port, [f"c{i}@example.org" for i in range(40)], clients=8)
    wait_until(lambda: len(up.received) >= 40, 30, "every message delivered")
    assert {m.message_id for m in up.received} == set(accepted)
