"""Nodes know each other (issue 16, item 4): heartbeats in a real Redis, two smtplb
nodes as processes, each listing both in GET /api/v1/cluster."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, free_port, relay_config, wait_until
from tests.integration.redisserver import RedisServer
from tests.integration.test_balancing_acceptance import send_all


def node_config(workdir: Path, name: str, upstream: int, redis: str) -> tuple[str, int, int]:
    text, smtp_port, http_port = relay_config(workdir / "var", [upstream])
    return text + f'[cluster]\nredis = "{redis}"\nnode = "{name}"\n', smtp_port, http_port


def listed(node: Smtplb) -> dict[str, dict[str, Any]]:
    status, body = node.api("/api/v1/cluster")
    assert status == 200, body
    return {n["node"]: n for n in body["nodes"]}


def test_two_nodes_sharing_a_redis_each_list_both(
    tmp_path: Path, sinks: Callable[..., ThreadedSink]
) -> None:
    upstream = sinks()
    with RedisServer() as redis:
        nodes = []
        for name in ("node-a", "node-b"):
            workdir = tmp_path / name
            workdir.mkdir()
            nodes.append(Smtplb(workdir, *node_config(workdir, name, upstream.port, redis.url)))
        try:
            for node in nodes:
                node.start()
            for node in nodes:
                wait_until(lambda n=node: set(listed(n)) == {"node-a", "node-b"}, 15, "both")  # type: ignore[misc]
            a = listed(nodes[0])
            assert a["node-a"]["self"] and not a["node-b"]["self"]
            assert a["node-b"]["smtp"] == [f"127.0.0.1:{nodes[1].smtp_port}"]
            assert a["node-b"]["health"] == {"up": 1} and a["node-b"]["age"] < 10
            assert nodes[1].api("/api/v1/cluster")[1]["redis"] == "up"

            # A node's traffic shows in the others' view with its next heartbeat.
            send_all(nodes[1].smtp_port, [f"c{i}@example.org" for i in range(10)], clients=2)
            assert upstream.wait_for(10, 30)
            wait_until(
                lambda: listed(nodes[0])["node-b"]["rate_per_minute"] == 10, 10, "node-b's rate"
            )

            # A node that stops leaves the list at once (its heartbeat is deleted).
            assert nodes[1].stop() == 0
            wait_until(lambda: set(listed(nodes[0])) == {"node-a"}, 5, "node-b gone")
        finally:
            for node in nodes:
                node.stop()


def test_without_redis_the_cluster_is_this_node_alone(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    upstream = sinks()
    node = smtplb(*relay_config(tmp_path / "var", [upstream.port])).start()
    status, body = node.api("/api/v1/cluster")
    assert status == 200 and body["redis"] == "off"
    assert [(n["node"], n["self"]) for n in body["nodes"]] == [(body["node"], True)]
    assert node.stop() == 0


def test_an_unreachable_redis_leaves_the_node_running_and_alone_in_its_view(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    upstream = sinks()
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    node = smtplb(*node_config(tmp_path, "lonely", upstream.port, dead)).start()
    wait_until(lambda: node.api("/api/v1/cluster")[1]["redis"] == "down", 10, "Redis down")
    assert list(listed(node)) == ["lonely"]
    assert any(
        "Redis at redis://127.0.0.1:" in line and "unreachable" in line for line in node.output
    )
    assert any("heartbeats of node lonely paused" in line for line in node.output)
    send_all(node.smtp_port, ["x@example.org"])
    assert upstream.wait_for(1, 10)  # mail flows without Redis
    assert node.stop() == 0
