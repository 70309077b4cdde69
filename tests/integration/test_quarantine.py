"""Reputation over real sockets: two members, the upstream of one blocks it with
550 5.7.1. The blocked member is quarantined after at most 30 attempts, every
message is delivered through the other (a policy block is retried at once on
another member, never bounced), and after the cool-down it comes back on probation."""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smtplb.sink.profile import DomainRule, SinkProfile
from smtplb.sink.server import ThreadedSink
from smtplb.smtp.reply import Reply
from tests.integration.conftest import Smtplb, relay_config, wait_until

BLOCK = Reply(
    550, "5.7.1", "Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org"
)


def _member(node: Smtplb, name: str) -> dict[str, Any]:
    status, doc = node.api("/api/v1/members")
    assert status == 200
    member: dict[str, Any] = next(m for m in doc["members"] if m["name"] == name)
    return member


def test_a_blocked_member_is_quarantined_and_comes_back_on_probation(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    good = sinks()
    blocking = sinks(SinkProfile(rules={"*": DomainRule(accept=0, reject=1, reject_reply=BLOCK)}))
    text, smtp_port, http_port = relay_config(tmp_path / "var", [good.port, blocking.port])
    text += (
        "[reputation]\nmin_volume = 20\npolicy_block_quarantine = 0.05\n"
        'quarantine = "3s"\nprobation = 10\n'
    )
    node = smtplb(text, smtp_port, http_port).start()

    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        for i in range(200):
            client.sendmail("app@shop.test", [f"user{i}@example.org"], b"Subject: x\r\n\r\nx\r\n")
    assert good.wait_for(200, timeout=60), good.counts
    blocked_attempts = blocking.counts["rejected"]

    wait_until(
        lambda: sum(r["event"] == "delivered" for r in node.delivery_log()) == 200,
        10,
        "200 delivered records in the log",
    )
    log = node.delivery_log()
    quarantined = [r for r in log if r["event"] == "quarantined"]
    assert quarantined[0]["member"] == "relay-2" and "policy_block" in quarantined[0]["response"]
    attempts = int(re.search(r"over (\d+) attempts", quarantined[0]["response"])[1])  # type: ignore[index]
    print(
        f"quarantined after {attempts} attempts; the blocking sink refused {blocked_attempts}"
        f" in all (with those in flight and on probation); 200 delivered via the other"
    )
    assert attempts <= 30
    assert not [r for r in log if r["event"] == "bounced"]
    # (under load the cool-down may be over already)
    assert _member(node, "relay-2")["reputation"]["state"] in ("quarantined", "probation")
    assert _member(node, "relay-1")["reputation"]["state"] == "ok"
    assert len({r["recipient"] for r in log if r["event"] == "delivered"}) == 200

    started = time.monotonic()
    try:
        _probation(node)
    except Exception:
        print("".join(node.output[-60:]))
        raise
    print(f"probation after {time.monotonic() - started:.1f}s more")


def _probation(node: Smtplb) -> None:
    wait_until(
        lambda: _member(node, "relay-2")["reputation"]["state"] == "probation",
        15,
        "probation after the cool-down",
    )
    wait_until(lambda: any(r["event"] == "probation" for r in node.delivery_log()), 5, "the event")


def test_a_recipient_blocked_by_every_member_bounces_and_is_not_suppressed(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    blocking = SinkProfile(rules={"*": DomainRule(accept=0, reject=1, reject_reply=BLOCK)})
    first, second = sinks(blocking), sinks(blocking)
    node = smtplb(*relay_config(tmp_path / "var", [first.port, second.port])).start()
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        client.sendmail("app@shop.test", ["someone@example.org"], b"Subject: x\r\n\r\nx\r\n")
    wait_until(lambda: any(r["event"] == "bounced" for r in node.delivery_log()), 15, "the bounce")
    events = [
        (r["event"], r.get("member"))
        for r in node.delivery_log()
        if r.get("recipient") == "someone@example.org"
    ]
    assert sorted(events[1:]) == [("bounced", "relay-2"), ("failover", "relay-1")] or sorted(
        events[1:]
    ) == [("bounced", "relay-1"), ("failover", "relay-2")], events
    assert first.counts["rejected"] >= 1 and second.counts["rejected"] >= 1  # (+ the DSN's)
    _, listed = node.api("/api/v1/suppressions")
    assert listed["total"] == 0  # a block says nothing about the address
