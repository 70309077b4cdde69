"""Several worker processes on one node: one port, shards, one operator view."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

from smtplb.config import usable_cores
from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, free_port, relay_config, tool, wait_until
from tests.integration.test_balancing_acceptance import send_all
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
