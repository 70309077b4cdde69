"""Bulk-sender guardrails through `smtplb run`: one-click unsubscribe for bulk and
marketing mail (SPEC §2.5), over SMTP and the HTTP API."""

from __future__ import annotations

import smtplib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config, wait_until
from tests.integration.dnsserver import DnsServer, Zone

pytestmark = pytest.mark.integration

HEAD = b"From: news@shop.test\r\nTo: someone@example.org\r\nSubject: offers\r\n"
BULK = b"Precedence: bulk\r\n"
UNSUBSCRIBE = (
    b"List-Unsubscribe: <https://shop.test/unsubscribe/t0k3n>,\r\n"
    b"    <mailto:unsubscribe@shop.test?subject=t0k3n>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
)


def metric(node: Smtplb, check: str, action: str = "warn") -> float | None:
    with urllib.request.urlopen(node.api_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    line = f'smtplb_compliance_problems_total{{action="{action}",check="{check}"}} '
    for row in text.splitlines():
        if row.startswith(line):
            return float(row[len(line) :])
    return None


def config(tmp_path: Path, sink: ThreadedSink, mode: str) -> tuple[str, int, int]:
    text, smtp_port, http_port = relay_config(tmp_path / "var", [sink.port])
    return text + f'[compliance]\nlist_unsubscribe = "{mode}"\n', smtp_port, http_port


def test_reject_bulk_without_one_click_unsubscribe(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    sink = sinks()
    node = smtplb(*config(tmp_path, sink, "reject")).start()
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("news@shop.test", ["someone@example.org"], HEAD + BULK + b"\r\nhi\r\n")
        code, text = refused.value.smtp_code, refused.value.smtp_error.decode()
        assert code == 550 and text.startswith("5.7.1 "), text
        assert "bulk mail needs a List-Unsubscribe header" in text
        assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in text
        # https link without the Post header: said so
        half = HEAD + BULK + UNSUBSCRIBE.split(b"List-Unsubscribe-Post")[0]
        with pytest.raises(smtplib.SMTPDataError) as again:
            client.sendmail("news@shop.test", ["someone@example.org"], half + b"\r\nhi\r\n")
        assert "no List-Unsubscribe-Post" in again.value.smtp_error.decode()
        # the same session goes on: with both headers the message is taken
        client.sendmail(
            "news@shop.test", ["someone@example.org"], HEAD + BULK + UNSUBSCRIBE + b"\r\nhi\r\n"
        )
        # transactional mail is not concerned
        client.sendmail("app@shop.test", ["someone@example.org"], HEAD + b"\r\nyour receipt\r\n")
    assert sink.wait_for(2, timeout=10)
    assert UNSUBSCRIBE in sink.received[0].data

    status, body = node.api(
        "/api/v1/messages",
        "POST",
        {
            "from": "news@shop.test",
            "to": ["a@example.org"],
            "subject": "s",
            "text": "t",
            "headers": {"Precedence": "bulk"},
        },
    )
    assert status == 422 and "5.7.1" in body["detail"], body


def test_warn_accepts_logs_and_counts(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    sink = sinks()
    node = smtplb(*config(tmp_path, sink, "warn")).start()
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        client.sendmail("news@shop.test", ["someone@example.org"], HEAD + BULK + b"\r\nhi\r\n")
    assert sink.wait_for(1, timeout=10)
    assert any("compliance:" in line and "List-Unsubscribe" in line for line in node.output)
    assert metric(node, "list_unsubscribe") == 1.0


def test_from_domain_without_dmarc_is_warned_about_once(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    zone = (
        Zone()
        .txt("_dmarc.shop.test", "v=DMARC1; p=none")
        .nxdomain("shop.test")
        .nxdomain("nodmarc.test")
    )
    sink = sinks()
    with DnsServer(zone) as dns:
        text, smtp_port, http_port = config(tmp_path, sink, "warn")
        text += f'[dns]\nnameservers = ["{dns.address}"]\n'
        node = smtplb(text, smtp_port, http_port).start()
        with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
            for sender in ("news@nodmarc.test", "news@nodmarc.test", "news@shop.test"):
                head = HEAD.replace(b"news@shop.test", sender.encode())
                client.sendmail(
                    sender, ["someone@example.org"], head + BULK + UNSUBSCRIBE + b"\r\n.\r\n"
                )
        assert sink.wait_for(3, timeout=10)
        wait_until(
            lambda: metric(node, "dmarc_missing") == 1.0, 10, "the DMARC warning to be counted"
        )
    warnings = [line for line in node.output if "publishes no DMARC record" in line]
    assert len(warnings) == 1 and "From domain nodmarc.test" in warnings[0], warnings
