"""A complaint over real sockets: an ARF report about a delivered message, posted
to /api/v1/feedback as multipart/report, gives a `complaint` record naming the
member, counts against it, and suppresses the recipient."""

from __future__ import annotations

import smtplib
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smtplb.reputation.feedback import arf_report
from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config, wait_until


def _post_report(node: Smtplb, report: bytes) -> tuple[int, Any]:
    import json

    req = urllib.request.Request(
        node.api_url + "/api/v1/feedback",
        data=report,
        method="POST",
        headers={"Content-Type": "multipart/report; report-type=feedback-report"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def test_arf_report_for_a_delivered_message(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    sink = sinks()
    node = smtplb(*relay_config(tmp_path / "var", [sink.port])).start()
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        client.sendmail(
            "news@shop.test",
            ["reader@example.org"],
            b"From: news@shop.test\r\nTo: reader@example.org\r\nSubject: offer\r\n\r\nbuy\r\n",
        )
    assert sink.wait_for(1, timeout=10)
    delivered = sink.received[0].data  # as the provider got it, Received header and all
    wait_until(
        lambda: node.api("/api/v1/queue?state=delivered")[1]["messages"] != [],
        10,
        "the delivery recorded in the spool",
    )

    status, answer = _post_report(node, arf_report(delivered, recipient="reader@example.org"))
    assert status == 200
    assert answer["matched"] and answer["member"] == "relay-1" and answer["suppressed"]

    wait_until(
        lambda: any(r["event"] == "complaint" for r in node.delivery_log()), 10, "the record"
    )
    (record,) = [r for r in node.delivery_log() if r["event"] == "complaint"]
    assert record["member"] == "relay-1" and record["pool"] == "main"
    assert record["recipient"] == "reader@example.org" and record["provider"] == "other"
    assert record["queue_id"] == answer["queue_id"] and record["class"]
    status, listed = node.api("/api/v1/suppressions?address=reader@example.org")
    assert listed["suppressions"][0]["source"] == "complaint"
    _, members = node.api("/api/v1/members")
    providers = members["members"][0]["reputation"]["providers"]
    assert providers["other"]["complaint_rate"] == 1.0  # one complaint, one delivery


def test_arf_mail_to_the_feedback_address_is_consumed_not_relayed(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    sink = sinks()
    text, smtp_port, http_port = relay_config(tmp_path / "var", [sink.port])
    text += '[reputation]\nfeedback_addresses = ["fbl@relay.smtplb.test"]\n'
    node = smtplb(text, smtp_port, http_port).start()
    original = b"From: news@shop.test\r\nTo: reader@example.org\r\nSubject: offer\r\n\r\nbuy\r\n"
    report = arf_report(original, recipient="reader@example.org")
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        client.sendmail("fbl@provider.test", ["FBL@relay.smtplb.test"], report)
    wait_until(
        lambda: any(r["event"] == "complaint" for r in node.delivery_log()), 10, "the record"
    )
    _, listed = node.api("/api/v1/suppressions?address=reader@example.org")
    assert listed["suppressions"][0]["source"] == "complaint"
    assert sink.received == [] and sink.counts.get("accepted", 0) == 0
