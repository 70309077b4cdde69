"""Issue 16 acceptance: several smtplb nodes (processes, each with its own data_dir and
spool) sharing their limits through a real ``redis-server`` the test starts."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, free_port, wait_until
from tests.integration.redisserver import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.integration.test_balancing_acceptance import send_all
from tests.integration.test_providers_acceptance import _max_in_window

NEW_IP, WARM_IP = "127.0.0.3", "127.0.0.2"


def node_config(
    workdir: Path,
    name: str,
    sink_port: int,
    redis_url: str | None,
    *,
    extra: str = "",
    members: str | None = None,
) -> tuple[str, int, int]:
    smtp_port, http_port = free_port(), free_port()
    cluster = f'[cluster]\nnode = "{name}"\n' + (f'redis = "{redis_url}"\n' if redis_url else "")
    members = (
        members
        or f"""
  [[pools.members]]
  name = "warm"
  source_ip = "{WARM_IP}"
  [[pools.members]]
  name = "new"
  source_ip = "{NEW_IP}"
  warmup = true
"""
    )
    text = f"""
data_dir = "{workdir / "var"}"
hostname = "{name}.smtplb.test"
[smtp]
listen = ["127.0.0.1:{smtp_port}"]
[http]
listen = "127.0.0.1:{http_port}"
[delivery]
retry_base = "1s"
retry_max = "2s"
[warmup]
schedule = [30, 60]
max_hourly_share = 1.0
[[pools]]
name = "ips"
strategy = "round_robin"
{members}
[static_routes]
"example.org" = "127.0.0.1:{sink_port}"
"workspace.test" = "127.0.0.1:{sink_port}"
{extra}
{cluster}
"""
    return text, smtp_port, http_port


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[..., list[Smtplb]]]:
    started: list[Smtplb] = []

    def make(count: int, sink_port: int, redis_url: str | None, **kw: str) -> list[Smtplb]:
        out = []
        for i in range(count):
            name = f"node-{chr(ord('a') + i)}"
            workdir = tmp_path / name
            workdir.mkdir()
            node = Smtplb(workdir, *node_config(workdir, name, sink_port, redis_url, **kw))
            started.append(node)
            out.append(node.start())
        return out

    yield make
    for node in started:
        node.stop()


def send_to_each(nodes: list[Smtplb], per_node: int, domain: str = "example.org") -> list[str]:
    """``per_node`` messages through each node at once; the Message-IDs accepted."""
    accepted: list[list[str]] = [[] for _ in nodes]

    def run(i: int, node: Smtplb) -> None:
        rcpts = [f"n{i}u{j}@{domain}" for j in range(per_node)]
        accepted[i] = send_all(node.smtp_port, rcpts, clients=4, tag=f"n{i}")

    threads = [threading.Thread(target=run, args=(i, n)) for i, n in enumerate(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return [mid for part in accepted for mid in part]


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "embedded"])
def test_two_nodes_share_a_warmup_cap_of_30(
    shared: bool,
    redis_server: RedisServer,  # noqa: F811
    sinks: Callable[..., ThreadedSink],
    nodes: Callable[..., list[Smtplb]],
) -> None:
    sink = sinks()
    a, b = nodes(2, sink.port, redis_server.url if shared else None)
    accepted = send_to_each([a, b], 100)
    assert len(accepted) == 200
    assert sink.wait_for(200, 90), sink.counts
    got = sorted(m.message_id or "" for m in sink.received)
    assert got == sorted(accepted)  # all 200 arrive, once
    by_ip = Counter(m.envelope.client_ip for m in sink.received)
    label = "shared in Redis" if shared else "embedded, per node"
    print(f"warm-up cap 30, 2 nodes × 100 ({label}): received per source IP {dict(by_ip)}")
    if shared:
        assert 0 < by_ip[NEW_IP] <= 30
    else:
        assert by_ip[NEW_IP] > 30  # each node its own 30: the mistake that burns an IP


def test_three_nodes_share_a_rate_of_120_per_minute(
    redis_server: RedisServer,  # noqa: F811
    sinks: Callable[..., ThreadedSink],
    nodes: Callable[..., list[Smtplb]],
) -> None:
    sink = sinks()
    extra = """
[[providers]]
name = "gmail"
domains = ["workspace.test"]
rate = "120/m"
"""
    members = f"""
  [[pools.members]]
  name = "ip-2"
  source_ip = "{WARM_IP}"
  [[pools.members]]
  name = "ip-3"
  source_ip = "{NEW_IP}"
"""
    trio = nodes(3, sink.port, redis_server.url, extra=extra, members=members)
    before = redis_server.commandstats()
    started = time.monotonic()
    accepted = send_to_each(trio, 100, domain="workspace.test")
    assert len(accepted) == 300
    wait_until(lambda: time.monotonic() - started > 40, 60, "40 seconds of sending")
    received = sink.received
    per_ip: dict[str, list[float]] = {}
    for m in received:
        per_ip.setdefault(m.envelope.client_ip, []).append(m.ts)
    worst = {ip: _max_in_window(ts, 10.0) for ip, ts in per_ip.items()}
    sent = redis_server.sent_since(before)
    ops = sum(sent.values())
    print(
        f"rate 120/m per member, 3 nodes: {len(received)} delivered in ~40 s;"
        f" most in any 10 s window per source IP: {worst}; Redis commands sent {ops}"
        f" ({ops / max(1, len(received)):.2f} per delivered message: {sent})"
    )
    assert set(worst) == {WARM_IP, NEW_IP}
    assert max(worst.values()) <= 25
    assert len(received) >= 100  # both members near their rate (≈ 4 a second in all)
    # One reservation per message, whatever the number of nodes competing for it; the
    # rest is each worker registering every few seconds.
    assert ops <= 1.6 * len(received)
