"""Issue 13 acceptance: a warmed and a new egress member in one pool; the new one
sends at most its day-1 cap to each provider, the rest overflows to the warmed
one, and every message arrives, with one worker and with two."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, free_port, relay_config, wait_until
from tests.integration.test_balancing_acceptance import send_all
from tests.integration.test_dashboard_browser import page  # noqa: F401  (the fixture)
from tests.integration.test_operator_view import metric

if TYPE_CHECKING:
    from playwright.sync_api import Page


def _config(data_dir: Path, gmail: int, other: int, workers: int) -> tuple[str, int, int]:
    smtp_port, http_port = free_port(), free_port()
    text = f"""
data_dir = "{data_dir}"
hostname = "relay.smtplb.test"
workers = {workers}
[smtp]
listen = ["127.0.0.1:{smtp_port}"]
[http]
listen = "127.0.0.1:{http_port}"
[delivery]
retry_base = "1s"
retry_max = "2s"
[warmup]
schedule = [25, 50]
max_hourly_share = 1.0
[[pools]]
name = "ips"
strategy = "round_robin"
  [[pools.members]]
  name = "warm"
  source_ip = "127.0.0.2"
  [[pools.members]]
  name = "new"
  source_ip = "127.0.0.3"
  warmup = true
[static_routes]
"gmail.com" = "127.0.0.1:{gmail}"
"example.org" = "127.0.0.1:{other}"
"""
    return text, smtp_port, http_port


@pytest.mark.parametrize("workers", [1, 2])
def test_new_member_sends_at_most_its_cap_per_provider_and_the_rest_overflows(
    workers: int,
    tmp_path: Path,
    sinks: Callable[..., ThreadedSink],
    smtplb: Callable[..., Smtplb],
) -> None:
    gmail, other = sinks(), sinks()
    node = smtplb(*_config(tmp_path / "var", gmail.port, other.port, workers)).start()
    wait_until(
        lambda: sum("smtplb listening" in line for line in node.output) == workers,
        20,
        f"{workers} worker(s)",
    )
    rcpts = [f"g{i}@gmail.com" for i in range(120)] + [f"o{i}@example.org" for i in range(60)]
    accepted = send_all(node.smtp_port, rcpts, clients=12, tag="w")
    assert len(accepted) == 180
    assert gmail.wait_for(120, 60) and other.wait_for(60, 60)

    # Every message arrived once; the new IP sent at most 25 to each provider.
    got = [m.message_id or "" for m in (*gmail.received, *other.received)]
    assert sorted(got) == sorted(accepted)
    by_ip = Counter(
        (sink_name, m.envelope.client_ip)
        for sink_name, sink in (("gmail", gmail), ("other", other))
        for m in sink.received
    )
    print(f"workers={workers}: received per (provider, source IP): {dict(by_ip)}")
    assert by_ip[("gmail", "127.0.0.3")] <= 25 and by_ip[("other", "127.0.0.3")] <= 25
    assert by_ip[("gmail", "127.0.0.3")] + by_ip[("gmail", "127.0.0.2")] == 120
    assert by_ip[("other", "127.0.0.3")] > 0  # the new member did send, up to its cap

    # Visible: per provider day, cap and sent in the API and in the metrics.
    def warmup_view() -> dict[str, dict[str, int]]:
        members = node.api("/api/v1/members")[1]["members"]
        view: dict[str, dict[str, int]] = next(m["warmup"] for m in members if m["name"] == "new")
        return view

    view = warmup_view()
    print(f"workers={workers}: /api/v1/members new.warmup = {view}")
    assert view["gmail"] == {"day": 1, "cap": 25, "sent": by_ip[("gmail", "127.0.0.3")]}
    assert view["other"] == {"day": 1, "cap": 25, "sent": by_ip[("other", "127.0.0.3")]}
    assert next(m["warmup"] for m in node.api("/api/v1/members")[1]["members"]) == {}
    with urllib.request.urlopen(f"{node.api_url}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert metric(metrics, "smtplb_warmup_cap", member="new", provider="gmail") == 25
    assert (
        metric(metrics, "smtplb_warmup_sent", member="new", provider="gmail")
        == view["gmail"]["sent"]
    )
    # The CLI shows the same.
    out = subprocess.run(
        [sys.executable, "-m", "smtplb", "members", "-c", str(node.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "gmail day 1" in out
    assert node.stop() == 0


def test_dashboard_shows_warmup_progress_per_provider(
    tmp_path: Path,
    sinks: Callable[..., ThreadedSink],
    smtplb: Callable[..., Smtplb],
    page: Page,  # noqa: F811  (the fixture imported above)
) -> None:
    from playwright.sync_api import expect

    sink = sinks()
    text, smtp_port, http_port = relay_config(tmp_path / "var", [sink.port, sink.port])
    text = text.replace('name = "relay-2"', 'name = "relay-2"\nwarmup = true')
    node = smtplb(
        text + "[warmup]\nschedule = [2, 4]\nmax_hourly_share = 1.0\n", smtp_port, http_port
    )
    node.start()
    send_all(node.smtp_port, [f"u{i}@example.org" for i in range(6)], clients=2, tag="d")
    assert sink.wait_for(6, 30)
    page.goto(node.api_url + "/")
    bar = page.locator('[data-member="relay-2"] .wu[data-provider="other"]')
    expect(bar).to_have_attribute("data-value", "2/2", timeout=15_000)
    expect(bar).to_have_attribute("data-load", "full")
    expect(bar).to_contain_text("other · day 1 · 2 / 2")
    expect(page.locator('[data-member="relay-1"] .wu')).to_have_count(0)
    assert node.stop() == 0
