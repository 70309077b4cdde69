"""Issue 16 acceptance: several smtplb nodes (processes, each with its own data_dir and
spool) sharing their limits through a real ``redis-server`` the test starts."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtplb.sink.profile import ClientRule, SinkProfile
from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, free_port, wait_until
from tests.integration.redisserver import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.integration.test_balancing_acceptance import send_all
from tests.integration.test_providers_acceptance import _max_in_window

NEW_IP, WARM_IP = "127.0.0.3", "127.0.0.2"
TWO_IPS = f"""
  [[pools.members]]
  name = "ip-2"
  source_ip = "{WARM_IP}"
  [[pools.members]]
  name = "ip-3"
  source_ip = "{NEW_IP}"
"""


def node_config(
    workdir: Path,
    name: str,
    sink_port: int,
    redis_url: str | None,
    *,
    extra: str = "",
    members: str | None = None,
    workers: int = 1,
    strategy: str = "round_robin",
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
workers = {workers}
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
strategy = "{strategy}"
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

    def make(count: int, sink_port: int, redis_url: str | None, **kw: Any) -> list[Smtplb]:
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


@pytest.mark.parametrize(
    ("shared", "workers"),
    [(True, 1), (True, 2), (False, 1)],
    ids=["redis", "redis-2-workers", "embedded"],
)
def test_two_nodes_share_a_warmup_cap_of_30(
    shared: bool,
    workers: int,
    redis_server: RedisServer,  # noqa: F811
    sinks: Callable[..., ThreadedSink],
    nodes: Callable[..., list[Smtplb]],
) -> None:
    sink = sinks()
    a, b = nodes(2, sink.port, redis_server.url if shared else None, workers=workers)
    if workers > 1:
        wait_until(
            lambda: all(
                sum("smtplb listening" in ln for ln in n.output) == workers for n in (a, b)
            ),
            20,
            "every worker listening",
        )
    accepted = send_to_each([a, b], 100)
    assert len(accepted) == 200
    assert sink.wait_for(200, 90), sink.counts
    got = sorted(m.message_id or "" for m in sink.received)
    assert got == sorted(accepted)  # all 200 arrive, once
    by_ip = Counter(m.envelope.client_ip for m in sink.received)
    label = f"shared in Redis, {workers} worker(s) a node" if shared else "embedded, per node"
    print(f"warm-up cap 30, 2 nodes × 100 ({label}): received per source IP {dict(by_ip)}")
    if shared:
        assert 0 < by_ip[NEW_IP] <= 30
        # The plan any node prints reads the cluster's counts.
        out = subprocess.run(
            [sys.executable, "-m", "smtplb", "warmup", "plan", "new", "-c", str(b.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert f"new × other: today day 1, sent {by_ip[NEW_IP]}" in out, out
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
    trio = nodes(3, sink.port, redis_server.url, extra=extra, members=TWO_IPS)
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


def gauge(node: Smtplb, name: str) -> float | None:
    with urllib.request.urlopen(f"{node.api_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def shared(node: Smtplb) -> bool:
    return (
        gauge(node, "smtplb_cluster_redis_up") == 1 and gauge(node, "smtplb_cluster_fallback") == 0
    )


def test_redis_killed_under_load_nothing_lost_caps_held_shared_again_after(
    redis_server: RedisServer,  # noqa: F811
    sinks: Callable[..., ThreadedSink],
    nodes: Callable[..., list[Smtplb]],
) -> None:
    sink = sinks()
    pair = nodes(2, sink.port, redis_server.url)
    accepted: list[list[str]] = [[], []]
    refused: list[str] = []

    def load(i: int, node: Smtplb) -> None:
        with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=30) as client:
            for j in range(150):
                mid = f"<k{i}-{j}@shop.test>"
                body = f"Message-ID: {mid}\r\nSubject: {j}\r\n\r\nhello\r\n"
                try:
                    client.sendmail("app@shop.test", [f"n{i}u{j}@example.org"], body)
                except smtplib.SMTPException as exc:
                    refused.append(f"{mid}: {exc}")
                    continue
                accepted[i].append(mid)
                time.sleep(0.04)  # a steady stream, not a burst: Redis dies mid-way

    senders = [threading.Thread(target=load, args=(i, n)) for i, n in enumerate(pair)]
    for t in senders:
        t.start()
    wait_until(lambda: len(sink.received) >= 20, 60, "20 delivered before the kill")
    redis_server.kill()
    killed_at = len(sink.received)
    new_at_kill = sum(m.envelope.client_ip == NEW_IP for m in sink.received)
    wait_until(
        lambda: all(any("Redis at" in ln and "unreachable" in ln for ln in n.output) for n in pair),
        20,
        "both nodes to log the fallback",
    )
    assert not any(shared(n) for n in pair)
    wait_until(lambda: len(sink.received) >= killed_at + 40, 60, "40 more delivered, Redis down")
    during = len(sink.received) - killed_at
    new_during = sum(m.envelope.client_ip == NEW_IP for m in sink.received) - new_at_kill
    redis_server.start()  # the same port, empty (no persistence): counts are reconciled
    restarted = time.monotonic()
    wait_until(lambda: all(shared(n) for n in pair), 10, "shared again within 10 s")
    back_after = time.monotonic() - restarted
    for t in senders:
        t.join(120)
    sent = [mid for part in accepted for mid in part]
    assert sink.wait_for(len(sent), 90), sink.counts
    got = sorted(m.message_id or "" for m in sink.received)
    by_ip = Counter(m.envelope.client_ip for m in sink.received)
    day = int(time.time() // 86400)
    counted = redis_server.client().hget(f"smtplb:warmup:new:other:day:{day}", "sent")
    print(
        f"Redis SIGKILLed under load: accepted {len(sent)}, refused {len(refused)},"
        f" delivered {len(got)} ({during} while Redis was down, {new_during} of them by"
        f" 'new' after {new_at_kill} before); received per source IP"
        f" {dict(by_ip)}; shared again {back_after:.1f} s after the restart; the restarted"
        f" Redis counts {int(counted or 0)} taken by 'new' today (reconciled)"
    )
    assert refused == [] and len(sent) == 300
    assert got == sorted(sent)  # 0 lost, 0 duplicated
    assert by_ip[NEW_IP] <= 30  # the cap held through the outage
    assert int(counted or 0) >= by_ip[NEW_IP]  # what was sent is counted again
    for n in pair:
        text = "".join(n.output)
        assert text.count("unreachable") == 1 and text.count("answers again") == 1, text[-3000:]


def test_a_suspension_on_one_node_holds_on_every_node(
    redis_server: RedisServer,  # noqa: F811
    nodes: Callable[..., list[Smtplb]],
) -> None:
    # The Gmail-like sink answers 421 4.7.28 to 127.0.0.2: the built-in rule suspends
    # that member for gmail. Node a sees it first; node b must not try it at all.
    profile = SinkProfile(clients={WARM_IP: ClientRule(throttle=True)})
    extra = '[[providers]]\nname = "gmail"\ndomains = ["workspace.test"]\n'
    with ThreadedSink("127.0.0.1", 0, profile) as sink:
        a, b = nodes(2, sink.port, redis_server.url, extra=extra, members=TWO_IPS)
        send_all(a.smtp_port, [f"a{i}@workspace.test" for i in range(10)], clients=2, tag="a")
        assert sink.wait_for(10, 60), sink.counts
        throttled = sink.client_counts["throttled"]
        assert throttled >= 1

        def suspended_on(node: Smtplb) -> bool:
            gmail = next(
                p for p in node.api("/api/v1/providers")[1]["providers"] if p["name"] == "gmail"
            )
            return any(m["member"] == "ip-2" and m["suspended"] for m in gmail["members"])

        wait_until(lambda: suspended_on(b), 5, "node b to hold node a's suspension")
        send_all(b.smtp_port, [f"b{i}@workspace.test" for i in range(20)], clients=2, tag="b")
        assert sink.wait_for(30, 60), sink.counts
        print(
            f"suspension shared: 421s from 127.0.0.2 {throttled} (node a), then"
            f" {sink.client_counts['throttled'] - throttled} while node b sent 20"
        )
        assert sink.client_counts["throttled"] == throttled  # node b never tried ip-2
        assert {m.envelope.client_ip for m in sink.received} == {NEW_IP}


def test_a_pause_or_quarantine_on_one_node_holds_on_every_node(
    redis_server: RedisServer,  # noqa: F811
    sinks: Callable[..., ThreadedSink],
    nodes: Callable[..., list[Smtplb]],
) -> None:
    sink = sinks()
    a, b = nodes(2, sink.port, redis_server.url, members=TWO_IPS)

    def view(node: Smtplb, name: str) -> dict[str, Any]:
        members = node.api("/api/v1/members")[1]["members"]
        found: dict[str, Any] = next(m for m in members if m["name"] == name)
        return found

    assert a.api("/api/v1/members/ip-2/pause", "POST")[0] == 200
    wait_until(lambda: view(b, "ip-2")["paused"], 5, "node b to hold node a's pause")
    assert b.api("/api/v1/members/ip-3/quarantine", "POST")[0] == 200
    wait_until(
        lambda: view(a, "ip-3")["reputation"]["state"] == "quarantined",
        5,
        "node a to hold node b's quarantine",
    )
    assert a.api("/api/v1/members/ip-2/resume", "POST")[0] == 200
    assert b.api("/api/v1/members/ip-3/release", "POST")[0] == 200
    wait_until(lambda: not view(b, "ip-2")["paused"], 5, "node b to resume ip-2")
    wait_until(lambda: view(a, "ip-3")["reputation"]["state"] == "ok", 5, "node a to release")
    send_all(b.smtp_port, [f"u{i}@example.org" for i in range(10)], clients=2, tag="p")
    assert sink.wait_for(10, 30)
    assert {m.envelope.client_ip for m in sink.received} == {WARM_IP, NEW_IP}

    def logged() -> list[tuple[str, str]]:
        events = ("member_paused", "member_resumed")
        return [(r["event"], r["response"]) for r in b.delivery_log() if r["event"] in events]

    wait_until(lambda: len(logged()) == 2, 5, "node b's delivery log")  # (flushed every 0.5 s)
    print(f"node b's log of node a's pause: {logged()}")
    assert [event for event, _ in logged()] == ["member_paused", "member_resumed"]


def test_a_suppression_on_one_node_is_refused_at_every_node(
    redis_server: RedisServer,  # noqa: F811
    sinks: Callable[..., ThreadedSink],
    nodes: Callable[..., list[Smtplb]],
) -> None:
    sink = sinks()
    a, b = nodes(2, sink.port, redis_server.url, members=TWO_IPS)
    status, _ = a.api("/api/v1/suppressions", "POST", {"addresses": ["gone@example.org"]})
    assert status in (200, 201)

    def refused_by_b() -> bool:
        with smtplib.SMTP("127.0.0.1", b.smtp_port, timeout=10) as client:
            client.ehlo()
            client.mail("app@shop.test")
            code, _ = client.rcpt("gone@example.org")
            return code == 550

    wait_until(refused_by_b, 5, "node b to refuse the address node a suppressed")
    listed = b.api("/api/v1/suppressions")[1]["suppressions"]
    assert [e["address"] for e in listed] == ["gone@example.org"]
    assert b.api("/api/v1/suppressions/gone@example.org", "DELETE")[0] in (200, 204)
    wait_until(lambda: a.api("/api/v1/suppressions")[1]["suppressions"] == [], 5, "a removal")


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "embedded"])
def test_a_member_blocked_under_min_volume_on_each_node_is_quarantined_by_their_sum(
    shared: bool,
    redis_server: RedisServer,  # noqa: F811
    nodes: Callable[..., list[Smtplb]],
) -> None:
    # The upstream refuses 127.0.0.2 with 550 5.7.1 (a policy block; retried at once on
    # ip-3). Failover tries ip-2 first: 12 policy blocks per node, under min_volume 20
    # on each node, 24 over it for the cluster.
    profile = SinkProfile(clients={WARM_IP: ClientRule(block=True)})
    extra = '[reputation]\nmin_volume = 20\npolicy_block_quarantine = 0.05\nquarantine = "1h"\n'
    url = redis_server.url if shared else None
    with ThreadedSink("127.0.0.1", 0, profile) as sink:
        a, b = nodes(2, sink.port, url, extra=extra, members=TWO_IPS, strategy="failover")

        def state(node: Smtplb) -> str:
            members = node.api("/api/v1/members")[1]["members"]
            return str(next(m for m in members if m["name"] == "ip-2")["reputation"]["state"])

        def quarantined() -> list[dict[str, Any]]:
            return [r for n in (a, b) for r in n.delivery_log() if r["event"] == "quarantined"]

        sent = send_all(a.smtp_port, [f"a{i}@example.org" for i in range(12)], clients=2, tag="a")
        assert sink.wait_for(12, 60), sink.counts
        blocked_a = sink.client_counts["blocked"]
        assert state(a) == "ok" and blocked_a <= 12  # node a alone: under min_volume
        sent += send_all(b.smtp_port, [f"b{i}@example.org" for i in range(12)], clients=2, tag="b")
        assert sink.wait_for(24, 60), sink.counts
        blocked = sink.client_counts["blocked"]
        print(f"policy blocks of ip-2: {blocked_a} via node a, {blocked - blocked_a} via node b")
        assert len(sent) == 24 and {m.envelope.client_ip for m in sink.received} == {NEW_IP}
        if shared:
            wait_until(lambda: state(a) == state(b) == "quarantined", 10, "both to quarantine")
            wait_until(lambda: len(quarantined()) >= 1, 5, "the quarantined event")
            events = quarantined()
            said = [(r["member"], r["response"]) for r in events]
            print(f"quarantined events in the cluster: {said}")
            assert len(events) == 1 and events[0]["member"] == "ip-2"
        else:
            assert state(a) == state(b) == "ok"  # each node judges its own 12
            assert quarantined() == []
