"""Parsing complaints: the RFC 5965 appendix B report, one of ours, JSON events."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtplb.reputation.feedback import FeedbackError, arf_report, parse_arf, parse_event

DATA = Path(__file__).parent.parent / "data"


def test_rfc5965_appendix_b() -> None:
    fb = parse_arf((DATA / "arf_rfc5965_b.eml").read_bytes().replace(b"\n", b"\r\n"))
    assert fb.recipient == "user@example.com"
    assert fb.feedback_type == "abuse"
    assert fb.sender == "somespammer@example.net"
    assert fb.message_id == "8787KJKJ3K4J3K4J3K4J3.mail@example.net"
    assert fb.queue_id is None  # not relayed by smtplb


def test_our_queue_id_comes_from_the_received_header() -> None:
    original = (
        b"Received: from app ([127.0.0.1])\r\n\tby relay.test (smtplb) with ESMTP id "
        b"0192ABCDEF0123456789;\r\n\tMon, 30 Nov 2026 16:00:00 +0000\r\n"
        b"From: a@shop.test\r\nTo: Someone <Some.One@example.org>\r\n"
        b"Message-ID: <m1@shop.test>\r\n\r\nbody\r\n"
    )
    fb = parse_arf(arf_report(original, feedback_type="abuse"))
    assert (fb.recipient, fb.queue_id, fb.message_id) == (
        "some.one@example.org",
        "0192ABCDEF0123456789",
        "<m1@shop.test>",
    )


def test_unusable_reports_name_what_is_missing() -> None:
    with pytest.raises(FeedbackError, match="multipart/report"):
        parse_arf(b"Subject: hi\r\n\r\nnot a report\r\n")
    report = arf_report(b"Subject: x\r\n\r\nno recipient\r\n")
    with pytest.raises(FeedbackError, match="Original-Rcpt-To"):
        parse_arf(report)


def test_json_events() -> None:
    fb = parse_event({"type": "complaint", "recipient": "<X@Example.org>", "queue_id": "Q1"})
    assert (fb.recipient, fb.queue_id, fb.source) == ("x@example.org", "Q1", "json")
    with pytest.raises(FeedbackError, match="recipient"):
        parse_event({"type": "complaint"})
    with pytest.raises(FeedbackError, match="type"):
        parse_event({"type": "bounce", "recipient": "x@example.org"})
