"""The dashboard (SPEC §2.6) in a real headless Chromium, driven by Playwright.

Chromium is Debian's (/usr/bin/chromium), never a downloaded build. Set
SMTPLB_SCREENSHOT=1 to refresh docs/dashboard.png (1400×900) from this run.
"""

from __future__ import annotations

import os
import re
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from smtplb.sink.profile import DomainRule, SinkProfile
from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, free_port, relay_config, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
WAIT_MS = 15_000  # health checks, deliveries and a 1 s poll all have to happen


@pytest.fixture
def page() -> Iterator[Page]:
    """A 1400×900 page in headless Chromium; fails (never skips) without the tools."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is required: apt-get install chromium (bash .ci/run does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the playwright package is required: .venv/bin/pip install -e '.[dev]' "
            "(it drives Debian's chromium; do not run `playwright install`)"
        )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            yield context.new_page()
            context.close()
        finally:
            browser.close()


def test_dashboard_shows_members_and_updates_without_reload(
    tmp_path: Path,
    sinks: Callable[..., ThreadedSink],
    smtplb: Callable[..., Smtplb],
    page: Page,
) -> None:
    from playwright.sync_api import expect

    rules = {"*": DomainRule(latency=0.02), "greylist.example": DomainRule(accept=0, defer=1)}
    sink = sinks(SinkProfile(rules=rules, unknown_users=frozenset({"nobody@example.org"})))
    dead_port = free_port()  # nothing listens: relay-2 goes down on its health checks
    config = relay_config(tmp_path / "var", [sink.port, dead_port], health={"interval": "250ms"})
    node = smtplb(*config).start()

    js_errors: list[str] = []
    page.on("pageerror", lambda exc: js_errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and js_errors.append(msg.text))
    response = page.goto(node.api_url + "/")
    # Served under a strict CSP: a blocked inline script or style would show in js_errors.
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.evaluate("window.loadMarker = 'set at first load'")
    loaded_at = page.evaluate("window.smtplbDashboard.loadedAt")

    expect(page.locator("#hostname")).to_have_text("relay.smtplb.test")

    def member(name: str) -> Locator:
        return page.locator(f'[data-pool="main"] [data-member="{name}"]')

    expect(member("relay-1").locator('[data-field="health"]')).to_have_text("up")
    expect(member("relay-2").locator('[data-field="health"]')).to_have_text(
        re.compile(r"^(down|ejected)$"), timeout=WAIT_MS
    )
    expect(member("relay-2").locator(".pill")).to_have_attribute(
        "data-health", re.compile(r"^(down|ejected)$")
    )
    delivered = page.locator('[data-kpi="delivered"]')
    expect(delivered).to_have_attribute("data-value", "0")
    polls_before = page.evaluate("window.smtplbDashboard.polls")

    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        for i in range(3):
            client.sendmail("app@shop.test", [f"user{i}@example.org"], b"Subject: hi\r\n\r\nhi\r\n")
        # Null senders, so no DSN comes back through the sink to skew the counts.
        client.sendmail("", ["nobody@example.org"], b"Subject: bounce\r\n\r\nx\r\n")
        client.sendmail("", ["later@greylist.example"], b"Subject: defer\r\n\r\nx\r\n")
    wait_until(lambda: len(sink.received) >= 3, 15, "three deliveries at the sink")

    expect(delivered).to_have_attribute("data-value", "3", timeout=WAIT_MS)
    expect(delivered.locator(".kpi-value")).to_have_text("3")
    expect(page.locator('[data-kpi="bounced"]')).to_have_attribute("data-value", "1")
    expect(member("relay-1").locator('[data-field="delivered"]')).to_have_text("3")
    expect(page.locator('[data-queue-state="deferred"]')).to_have_attribute(
        "data-value", "1", timeout=WAIT_MS
    )
    expect(page.locator('#errors li[data-event="bounced"]').first).to_contain_text("5.1.1")
    expect(page.locator('#errors li[data-event="deferred"]').first).to_contain_text("relay-1")

    # The cluster panel: without [cluster] redis, this node alone, marked.
    expect(page.locator('#cluster tr[data-self="true"]')).to_have_count(1)
    expect(page.locator("#cluster tr[data-node]")).to_have_count(1)
    expect(page.locator("#cluster-redis")).to_have_attribute("data-redis", "off")

    # Same document throughout: the numbers changed by polling, not by reloading.
    assert page.evaluate("window.loadMarker") == "set at first load"
    assert page.evaluate("window.smtplbDashboard.loadedAt") == loaded_at
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert page.evaluate("window.smtplbDashboard.polls") > polls_before
    assert js_errors == []

    if os.environ.get("SMTPLB_SCREENSHOT") == "1":
        save_screenshot(page, node)


def save_screenshot(page: Page, node: Smtplb) -> None:
    """Spread some traffic over 40 seconds so the chart has a shape, then save the picture."""
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        for n, batch in enumerate((6, 11, 8, 14, 9, 16, 12, 10)):
            end = page.evaluate("window.smtplbDashboard.last.series.end")
            page.wait_for_function(f"window.smtplbDashboard.last.series.end >= {end + 5}")
            rcpts = [f"user{n}.{i}@example.org" for i in range(batch)]
            client.sendmail("app@shop.test", rcpts, b"Subject: hi\r\n\r\nhi\r\n")
            if n % 3 == 1:
                client.sendmail("", ["nobody@example.org"], b"Subject: bounce\r\n\r\nx\r\n")
    page.wait_for_function("window.smtplbDashboard.last.queue.queued === 0")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
