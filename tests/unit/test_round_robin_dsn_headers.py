from __future__ import annotations

import email
import email.utils
from collections import Counter
from dataclasses import dataclass

import pytest

from smtplb.balancing import PickRequest
from smtplb.balancing.weighted import RoundRobin
from smtplb.delivery.dsn import FailedRecipient, build_dsn
from smtplb.intake.headers import parse_headers, prepare_message, rfc5322_date, split_message
from smtplb.model import Envelope
from smtplb.smtp.framing import plain_lines


@dataclass
class Cand:
    name: str
    weight: float = 1.0
    load: int = 0
    ramp: float = 1.0
    full: bool = False


def test_round_robin_is_even_and_skips_ineligible() -> None:
    rr = RoundRobin(["a", "b", "c"])
    members = [Cand("a"), Cand("b"), Cand("c")]
    picks = Counter(rr.pick(members, PickRequest()).name for _ in range(300))  # type: ignore[union-attr]
    assert picks == {"a": 100, "b": 100, "c": 100}
    seq = [rr.pick([members[0], members[2]], PickRequest()).name for _ in range(4)]  # type: ignore[union-attr]
    assert sorted(seq) == ["a", "a", "c", "c"]
    assert rr.pick([], PickRequest()) is None


def test_prepare_message_adds_trace_and_missing_headers_only() -> None:
    env = Envelope("a@x.test", ["b@y.test"], helo="client.test", client_ip="127.0.0.1")
    body = (
        b"Subject: hi\r\nList-Unsubscribe: <https://x.test/u?a=1>,\r\n <mailto:u@x.test>\r\n"
        b"\r\nbody\r\n.. not stuffed\r\n"
    )
    out, _, msgid, plain = prepare_message(body, env, "relay.test", "Q1", 1_700_000_000)
    assert not plain  # the envelope does not say the body was read plain
    assert out.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby relay.test")
    assert out.endswith(body.split(b"\r\n\r\n", 1)[1])
    assert b"List-Unsubscribe: <https://x.test/u?a=1>,\r\n <mailto:u@x.test>\r\n" in out
    assert msgid.startswith("<") and msgid.endswith("@relay.test>")
    assert b"Message-ID: " + msgid.encode() in out and b"\r\nDate: " in out
    parsed = dict(parse_headers(split_message(out)[0]))
    assert parsed["subject"] == "hi"
    same, _, kept, _ = prepare_message(
        b"Message-ID: <k@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nx\r\n",
        env,
        "relay.test",
        "Q2",
        0,
    )
    assert kept == "<k@x>" and same.count(b"Message-ID") == 1 and same.count(b"Date:") == 1


@pytest.mark.parametrize(
    "body",
    [
        b"Subject: hi\r\n\r\nbody\r\n",
        b"Subject: hi\r\n",  # no blank line: one is added
        b"",
    ],
)
def test_prepare_message_keeps_a_plain_body_plain(body: bytes) -> None:
    env = Envelope("a@x.test", ["b@y.test"], helo="client.test", client_ip="127.0.0.1")
    env.plain_lines = True
    out, _, _, plain = prepare_message(body, env, "relay.test", "Q1", 1_700_000_000)
    assert plain and plain_lines(out)
    env.plain_lines = False
    assert not prepare_message(body, env, "relay.test", "Q1", 1_700_000_000)[3]


def test_dsn_is_a_multipart_report() -> None:
    dsn = build_dsn(
        reporting_mta="relay.test",
        original_sender="a@x.test",
        original_queue_id="Q1",
        original_content=b"Subject: original\r\nMessage-ID: <o@x>\r\n\r\nsecret body\r\n",
        arrival_date=0,
        recipients=[FailedRecipient("b@y.test", "failed", "5.1.1", "smtp; 550 5.1.1 unknown")],
        now=10,
        expired=False,
    )
    msg = email.message_from_bytes(dsn)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = [p.get_content_type() for p in msg.get_payload()]  # type: ignore[union-attr]
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert b"Final-Recipient: rfc822; b@y.test" in dsn and b"Status: 5.1.1" in dsn
    assert b"secret body" not in dsn  # only the headers go back


def test_the_date_of_trace_headers_is_formatdate_s_whole_second() -> None:
    for now in (0.0, 1.9, 1_700_000_000.999, 1_700_000_001.0):
        assert rfc5322_date(now) == email.utils.formatdate(now, localtime=False)
