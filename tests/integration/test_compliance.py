"""Bulk-sender guardrails through `smtplb run`: one-click unsubscribe for bulk and
marketing mail (SPEC §2.5), over SMTP and the HTTP API."""

from __future__ import annotations

import smtplib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config

pytestmark = pytest.mark.integration

HEAD = b"From: news@shop.test\r\nTo: someone@example.org\r\nSubject: offers\r\n"
BULK = b"Precedence: bulk\r\n"
UNSUBSCRIBE = (
    b"List-Unsubscribe: <https://shop.test/unsubscribe/t0k3n>,\r\n"
    b"    <mailto:unsubscribe@shop.test?subject=t0k3n>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
)


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
    with urllib.request.urlopen(node.api_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'smtplb_compliance_problems_total{action="warn",check="list_unsubscribe"} 1.0' in text
