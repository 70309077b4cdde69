"""The complaint budget over real SMTP: a sender domain whose marketing mail drew
complaints over 0.3 % has that mail held (deferred, not bounced) while its transactional
mail still goes; an operator's lift lets the held mail go."""

from __future__ import annotations

import smtplib
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config, wait_until
from tests.integration.test_dashboard_browser import page  # noqa: F401  (a fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Page

SENDER = "news@shop.test"


def _message(rcpt: str, marketing: bool) -> bytes:
    unsubscribe = b"List-Unsubscribe: <mailto:unsub@shop.test>\r\n" if marketing else b""
    return (
        f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: hello\r\n".encode()
        + unsubscribe
        + b"\r\nbody\r\n"
    )


def _send(node: Smtplb, rcpt: str, marketing: bool) -> None:
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        client.sendmail(SENDER, [rcpt], _message(rcpt, marketing))


def _shop(node: Smtplb) -> dict[str, Any] | None:
    _, view = node.api("/api/v1/compliance")
    domains = view["complaint_budget"]["domains"]
    return next((d for d in domains if d["domain"] == "shop.test"), None)


def _budget_events(node: Smtplb) -> list[tuple[str, str]]:
    return [
        (r["sender_domain"], r["state"])
        for r in node.delivery_log()
        if r["event"] == "complaint_budget"
    ]


def test_marketing_mail_over_budget_waits_transactional_goes_and_a_lift_releases(
    tmp_path: Path,
    sinks: Callable[..., ThreadedSink],
    smtplb: Callable[..., Smtplb],
    page: Page,  # noqa: F811  (the fixture imported above)
) -> None:
    sink = sinks()
    text, smtp_port, http_port = relay_config(tmp_path / "var", [sink.port])
    text += '[reputation]\nmin_volume = 10\nwindow = "1h"\n'
    node = smtplb(text, smtp_port, http_port).start()

    for i in range(20):
        _send(node, f"reader{i}@example.org", marketing=True)
    assert sink.wait_for(20, timeout=20)
    wait_until(
        lambda: (_shop(node) or {}).get("delivered") == 20, 15, "20 marketing deliveries counted"
    )
    assert _shop(node) == {
        "domain": "shop.test",
        "state": "ok",
        "delivered": 20,
        "complaints": 0,
        "rate": 0.0,
        "lifted_until": None,
    }

    # one complaint in 20: 5 %, far over the stop point (0.25 %)
    status, _ = node.api(
        "/api/v1/feedback",
        "POST",
        {"type": "complaint", "recipient": "reader0@example.org", "sender": f"<{SENDER}>"},
    )
    assert status == 200
    wait_until(lambda: (_shop(node) or {}).get("state") == "stopped", 15, "shop.test stopped")
    wait_until(lambda: ("shop.test", "stopped") in _budget_events(node), 10, "the event")

    _send(node, "held@example.org", marketing=True)
    _send(node, "receipt@example.org", marketing=False)
    assert sink.wait_for(21, timeout=15)
    wait_until(
        lambda: any(
            r["event"] == "deferred"
            and r["recipient"] == "held@example.org"
            and "complaint budget" in r["response"]
            for r in node.delivery_log()
        ),
        15,
        "the marketing message deferred by the budget",
    )
    assert [m.rcpt_to for m in sink.received[20:]] == [["receipt@example.org"]]
    _, deferred = node.api("/api/v1/queue?state=deferred")
    (held,) = deferred["messages"]
    _, shown = node.api(f"/api/v1/queue/{held['queue_id']}")
    assert "complaint budget: marketing mail of shop.test stopped" in str(shown)
    assert not any(r["event"] == "bounced" for r in node.delivery_log())
    with urllib.request.urlopen(node.api_url + "/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert 'smtplb_complaint_budget{domain="shop.test",state="stopped"} 1.0' in metrics

    # the dashboard's indicator: a badge in the header and the domain in the panel
    page.goto(node.api_url + "/")
    page.locator('#budget tr[data-domain="shop.test"][data-state="stopped"]').wait_for(
        timeout=15_000
    )
    assert page.locator("#budget-badge").inner_text() == "complaint budget: 1 stopped, 0 throttled"

    status, lifted = node.api("/api/v1/compliance/domains/shop.test/lift", "POST")
    assert status == 200 and lifted["domain"] == "shop.test"
    assert node.api("/api/v1/compliance/domains/nobody.test/lift", "POST")[0] == 404
    node.api("/api/v1/queue/retry", "POST")  # due now rather than at its next retry
    assert sink.wait_for(22, timeout=15)
    assert sink.received[21].rcpt_to == ["held@example.org"]
    wait_until(lambda: ("shop.test", "ok") in _budget_events(node), 10, "the lift's event")
    assert (_shop(node) or {}).get("lifted_until")
