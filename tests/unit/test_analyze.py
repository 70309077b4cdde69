"""``smtplb logs analyze``: parsing both log formats, counting, grouping, output."""

from __future__ import annotations

import gzip
import itertools
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from smtplb.cli import main
from smtplb.observability.analyze import (
    Analyzer,
    analyze_lines,
    normalise_reason,
    percentile,
    render_table,
)
from smtplb.observability.log_reader import Verdict, chronological, parse_line
from smtplb.observability.record import DeliveryRecord

# Written the way dispatcher._log_rcpt / _log_job / member_event / sweep_expired and
# service.submit write them.
SMTPLB_LOG = """\
{"ts":1709460900.0,"event":"received","queue_id":"Q1","message_id":"<m1@app>","sender":"news@example.net","recipient":"bob@example.com","recipient_domain":"example.com","pool":"bulk","client_ip":"10.0.0.7","size":4120,"class":"newsletter"}
{"ts":1709460900.0,"event":"received","queue_id":"Q1","message_id":"<m1@app>","sender":"news@example.net","recipient":"alice@example.org","recipient_domain":"example.org","pool":"bulk","client_ip":"10.0.0.7","size":4120,"class":"newsletter"}
{"ts":1709460900.0,"event":"received","queue_id":"Q1","message_id":"<m1@app>","sender":"news@example.net","recipient":"nobody@example.com","recipient_domain":"example.com","pool":"bulk","client_ip":"10.0.0.7","size":4120,"class":"newsletter"}
{"ts":1709460901.0,"event":"received","queue_id":"Q2","message_id":"<m2@app>","sender":"news@example.net","recipient":"carol@example.com","recipient_domain":"example.com","pool":"bulk","client_ip":"10.0.0.7","size":900,"class":"newsletter"}
{"ts":1709460901.0,"event":"received","queue_id":"Q2","message_id":"<m2@app>","sender":"news@example.net","recipient":"dave@example.org","recipient_domain":"example.org","pool":"bulk","client_ip":"10.0.0.7","size":900,"class":"newsletter"}
{"ts":1709460901.0,"event":"received","queue_id":"Q3","message_id":"<m3@app>","sender":"news@example.net","recipient":"erin@blocked.example","recipient_domain":"blocked.example","pool":"bulk","client_ip":"10.0.0.7","size":900,"class":"newsletter"}
{"ts":1709460901.2,"event":"delivered","queue_id":"Q1","message_id":"<m1@app>","sender":"news@example.net","recipient":"bob@example.com","recipient_domain":"example.com","provider":null,"pool":"bulk","member":"m1","source_ip":"192.0.2.10","upstream":"mx.example.com:25","code":250,"enhanced_code":"2.0.0","response":"Ok: queued as 4TqLm36Bq1z9sXY","latency_ms":120.0,"delay_ms":300.0,"attempt":1,"class":"newsletter","variant":null}
{"ts":1709460901.3,"event":"deferred","queue_id":"Q1","message_id":"<m1@app>","sender":"news@example.net","recipient":"alice@example.org","recipient_domain":"example.org","provider":null,"pool":"bulk","member":"m2","source_ip":"192.0.2.11","upstream":"mx.example.org:25","code":451,"enhanced_code":"4.7.1","response":"Try again later","latency_ms":80.0,"delay_ms":400.0,"attempt":1,"class":"newsletter","variant":null}
{"ts":1709460901.4,"event":"bounced","queue_id":"Q1","message_id":"<m1@app>","sender":"news@example.net","recipient":"nobody@example.com","recipient_domain":"example.com","provider":null,"pool":"bulk","member":"m1","source_ip":"192.0.2.10","upstream":"mx.example.com:25","code":550,"enhanced_code":"5.1.1","response":"<nobody@example.com>: Recipient address rejected: User unknown","latency_ms":90.0,"delay_ms":500.0,"attempt":1,"class":"newsletter","variant":null}
{"ts":1709460901.5,"event":"failover","queue_id":"Q2","message_id":"<m2@app>","sender":"news@example.net","recipient":"carol@example.com","recipient_domain":"example.com","pool":"bulk","member":"m2","source_ip":"192.0.2.11","response":"connect: Connection refused","attempt":1,"class":"newsletter"}
{"ts":1709460901.6,"event":"bounced","queue_id":"Q2","message_id":"<m2@app>","sender":"news@example.net","recipient":"carol@example.com","recipient_domain":"example.com","provider":null,"pool":"bulk","member":"m2","source_ip":"192.0.2.11","upstream":"mx.example.com:25","code":550,"enhanced_code":"5.7.1","response":"Message blocked by policy","latency_ms":95.0,"delay_ms":600.0,"attempt":1,"class":"newsletter","variant":null}
{"ts":1709460901.7,"event":"deferred","queue_id":"Q2","message_id":"<m2@app>","sender":"news@example.net","recipient":"dave@example.org","recipient_domain":"example.org","provider":null,"pool":"bulk","member":"m2","source_ip":"192.0.2.11","upstream":"mx.example.org:25","code":421,"enhanced_code":"4.4.2","response":"Connection dropped","latency_ms":70.0,"delay_ms":700.0,"attempt":1,"class":"newsletter","variant":null}
{"ts":1709460902.0,"event":"member_down","pool":"bulk","member":"m2","response":"3 consecutive failures"}
{"ts":1709460961.0,"event":"delivered","queue_id":"Q1","message_id":"<m1@app>","sender":"news@example.net","recipient":"alice@example.org","recipient_domain":"example.org","provider":null,"pool":"bulk","member":"m1","source_ip":"192.0.2.10","upstream":"mx.example.org:25","code":250,"enhanced_code":"2.0.0","response":"Ok","latency_ms":200.0,"delay_ms":60000.0,"attempt":2,"class":"newsletter","variant":null}
{"ts":1709460962.0,"event":"suppressed","queue_id":"Q3","recipient":"erin@blocked.example","recipient_domain":"blocked.example","pool":"bulk","class":"newsletter"}
{"ts":1709547301.0,"event":"expired","queue_id":"Q2","message_id":"<m2@app>","sender":"news@example.net","recipient":"dave@example.org","recipient_domain":"example.org","code":421,"enhanced_code":"4.4.2","response":"Connection dropped"}
{"ts":1709547400.0,"event":"complaint","queue_id":"Q1","recipient":"bob@example.com","recipient_domain":"example.com","pool":"bulk","member":"m1","class":"newsletter"}
{"ts":1709547401.0,"event":"delivered","code":"two-fifty"}
{"ts":17095474

"""  # noqa: E501

# Postfix 3.7 via syslog: classic timestamps, then RFC 3339 ones (rsyslog high precision).
POSTFIX_LOG = """\
Mar  3 10:15:00 mx1 postfix/smtpd[23401]: connect from app1.example.net[10.0.0.7]
Mar  3 10:15:00 mx1 postfix/smtpd[23401]: 4F9D195432: client=app1.example.net[10.0.0.7]
Mar  3 10:15:00 mx1 postfix/cleanup[23405]: 4F9D195432: message-id=<20240303101500.1@app1.example.net>
Mar  3 10:15:00 mx1 postfix/qmgr[1201]: 4F9D195432: from=<news@example.net>, size=4120, nrcpt=3 (queue active)
Mar  3 10:15:00 mx1 postfix/smtpd[23401]: disconnect from app1.example.net[10.0.0.7] ehlo=1 mail=1 rcpt=3 data=1 quit=1 commands=7
Mar  3 10:15:01 mx1 postfix/smtp[23456]: 4F9D195432: to=<bob@example.com>, relay=mx.example.com[93.184.216.34]:25, delay=1.4, delays=0.05/0.01/0.6/0.74, dsn=2.0.0, status=sent (250 2.0.0 OK  1709460901 x12si123456qkb.123 - gsmtp)
Mar  3 10:15:01 mx1 postfix/smtp[23456]: 4F9D195432: to=<nobody@example.com>, relay=mx.example.com[93.184.216.34]:25, delay=1.5, delays=0.05/0.01/0.6/0.84, dsn=5.1.1, status=bounced (host mx.example.com[93.184.216.34] said: 550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in virtual mailbox table (in reply to RCPT TO command))
Mar  3 10:15:02 mx1 postfix/smtp[23457]: 4F9D195432: to=<carol@example.org>, relay=mx.example.org[198.51.100.7]:25, delay=2, delays=0.05/0.01/0.9/1, dsn=4.2.1, status=deferred (host mx.example.org[198.51.100.7] said: 450 4.2.1 <carol@example.org>: Recipient address rejected: Mailbox busy (in reply to RCPT TO command))
Mar  3 10:15:02 mx1 postfix/cleanup[23405]: 5A1B295433: message-id=<20240303101502.5A1B295433@mx1.example.net>
Mar  3 10:15:02 mx1 postfix/bounce[23460]: 4F9D195432: sender non-delivery notification: 5A1B295433
Mar  3 10:15:02 mx1 postfix/qmgr[1201]: 5A1B295433: from=<>, size=6230, nrcpt=1 (queue active)
Mar  3 10:15:03 mx1 postfix/smtp[23456]: 5A1B295433: to=<news@example.net>, relay=mx.example.net[192.0.2.25]:25, delay=0.5, delays=0.01/0.01/0.28/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4TqLm37Cz2z9sYZ)
Mar  3 10:15:03 mx1 postfix/qmgr[1201]: 5A1B295433: removed
Mar  3 10:15:05 mx1 postfix/qmgr[1201]: 9B3F495450: from=<ops@example.net>, size=1500, nrcpt=1 (queue active)
Mar  3 10:15:05 mx1 postfix/smtp[23490]: 9B3F495450: to=<team@example.com>, orig_to=<team-alias@example.net>, relay=mx.example.com[93.184.216.34]:25, conn_use=2, delay=0.3, delays=0.01/0.01/0/0.28, dsn=2.0.0, status=sent (250 2.0.0 OK  1709460905 y7si99qkb.5 - gsmtp)
Mar  3 10:15:05 mx1 postfix/qmgr[1201]: 9B3F495450: removed
Mar  3 10:15:06 mx1 postfix/smtpd[23401]: NOQUEUE: reject: RCPT from unknown[203.0.113.50]: 554 5.7.1 <spam@example.net>: Relay access denied; from=<x@example.biz> to=<spam@example.net> proto=ESMTP helo=<bad>
Mar  3 10:15:07 mx1 postfix/smtp[23456]: warning: TLS library problem: error:0A000126:SSL routines::unexpected eof while reading
Mar  3 10:15:08 mx1 sshd[999]: Accepted publickey for deploy from 10.0.0.1 port 5555 ssh2
Mar  3 10:25:02 mx1 postfix/qmgr[1201]: 4F9D195432: from=<news@example.net>, size=4120, nrcpt=3 (queue active)
Mar  3 10:25:03 mx1 postfix/smtp[23470]: 4F9D195432: to=<carol@example.org>, relay=mx.example.org[198.51.100.7]:25, delay=603, delays=600/0.01/1.2/1.8, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4TqLm36Bq1z9sXY)
Mar  3 10:25:03 mx1 postfix/qmgr[1201]: 4F9D195432: removed
2024-03-03T10:16:00.123456+00:00 mx1 postfix/qmgr[1201]: 7C2E395440: from=<alerts@example.net>, size=900, nrcpt=2 (queue active)
2024-03-03T10:16:00.300000+00:00 mx1 postfix/smtp[23480]: 7C2E395440: to=<x@nonexistent.invalid>, relay=none, delay=0.18, delays=0.1/0/0.08/0, dsn=5.4.4, status=bounced (Host or domain name not found. Name service error for name=nonexistent.invalid type=A: Host not found)
2024-03-03T10:16:30.400000+00:00 mx1 postfix/smtp[23481]: 7C2E395440: to=<y@slow.example>, relay=none, delay=30, delays=0.1/0/30/0, dsn=4.4.1, status=deferred (connect to mx.slow.example[203.0.113.9]:25: Connection timed out)
2024-03-08T10:16:01.000000+00:00 mx1 postfix/qmgr[1201]: 7C2E395440: from=<alerts@example.net>, status=expired, returned to sender
2024-03-08T10:16:01.100000+00:00 mx1 postfix/qmgr[1201]: 7C2E395440: removed
"""  # noqa: E501


def _smtplb(**fields: Any) -> str:
    return json.dumps({"ts": 1709460900.0, **fields})


def _postfix_line(containing: str) -> str:
    return next(line for line in POSTFIX_LOG.splitlines() if containing in line)


# -- parsing ------------------------------------------------------------------------------


def test_parse_postfix_sent_line() -> None:
    line = _postfix_line("to=<bob@example.com>")
    source, ev = parse_line(line)
    assert source == "postfix"
    assert isinstance(ev, DeliveryRecord)
    assert (ev.event, ev.queue_id, ev.recipient) == ("delivered", "4F9D195432", "bob@example.com")
    assert (ev.pool, ev.member, ev.recipient_domain) == (
        "postfix",
        "mx.example.com:25",
        "example.com",
    )
    assert (ev.code, ev.enhanced_code) == (250, "2.0.0")
    assert ev.latency_ms == 740.0  # the "d" of delays: transmission
    assert ev.delay_ms == 1400.0


def test_parse_postfix_bounce_strips_host_said_and_in_reply_to() -> None:
    _, ev = parse_line(_postfix_line("to=<nobody@example.com>"))
    assert isinstance(ev, DeliveryRecord)
    assert (ev.event, ev.code, ev.enhanced_code) == ("bounced", 550, "5.1.1")
    assert ev.response == (
        "<nobody@example.com>: Recipient address rejected: User unknown in virtual mailbox table"
    )


def test_parse_postfix_relay_none_has_no_member_and_no_code() -> None:
    _, ev = parse_line(_postfix_line("to=<y@slow.example>"))
    assert isinstance(ev, DeliveryRecord)
    assert (ev.event, ev.member, ev.code, ev.enhanced_code) == ("deferred", None, None, "4.4.1")
    assert ev.response == "connect to mx.slow.example[203.0.113.9]:25: Connection timed out"


@pytest.mark.parametrize(
    ("line", "source", "verdict"),
    [
        ("Mar  3 10:15:00 mx1 postfix/smtpd[1]: connect from a[10.0.0.7]", "postfix", "ignored"),
        ("Mar 03 10:15:00 mx1 postfix/smtp[1]: warning: TLS problem", "postfix", "ignored"),
        (
            "Mar  3 10:15:00 mx1 postfix/smtpd[1]: NOQUEUE: reject: RCPT from x",
            "postfix",
            "ignored",
        ),
        (
            "Mar  3 10:15:00 mx1 postfix/cleanup[2]: 4F9D195432: message-id=<a@b>",
            "postfix",
            "ignored",
        ),
        ("Mar  3 10:15:00 mx1 kernel: eth0 link up", "syslog", "foreign"),
        ('{"event":"member_down","pool":"p","member":"m"}', "smtplb", "ignored"),
        ('{"event":"delivered","code":"250"}', "", "skipped"),
        ('{"no_event":1}', "", "skipped"),
        ("[1, 2]", "", "skipped"),
        ("", "", "skipped"),
        ("   ", "", "skipped"),
        ("\x00\xff garbage", "", "skipped"),
    ],
)
def test_parse_line_verdicts(line: str, source: str, verdict: str) -> None:
    got_source, parsed = parse_line(line)
    assert got_source == source
    assert isinstance(parsed, Verdict) and parsed.value == verdict


def test_parse_long_queue_ids_and_postlog_timestamps() -> None:
    line = (
        "Mar 03 10:15:01.123456 mx1 postfix-out/smtp[7]: 4TqLm36Bq1z9sXY: to=<a@b.example>, "
        "relay=127.0.0.1[127.0.0.1]:2526, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, "
        "status=sent (250 ok)"
    )
    _, ev = parse_line(line)
    assert isinstance(ev, DeliveryRecord)
    assert (ev.queue_id, ev.member, ev.latency_ms) == ("4TqLm36Bq1z9sXY", "127.0.0.1:2526", 100.0)


def test_normalise_reason() -> None:
    assert normalise_reason(450, "4.2.1", "Mailbox  BUSY") == "450 4.2.1 mailbox busy"
    assert (
        normalise_reason(550, "5.1.1", "<bob@example.com>: Recipient address rejected")
        == "550 5.1.1 <*>: recipient address rejected"
    )
    assert (
        normalise_reason(250, "2.0.0", "OK  1709460901 x12si123456qkb.123 - gsmtp")
        == "250 2.0.0 ok * * - gsmtp"
    )
    assert normalise_reason(None, "4.4.1", "connect to mx[203.0.113.9]:25: refused") == (
        "4.4.1 connect to mx[*]:25: refused"
    )
    assert normalise_reason(None, None, "") == "(no reply)"


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.0
    with pytest.raises(ValueError):
        percentile([], 50)


# -- counting -----------------------------------------------------------------------------


def test_smtplb_log_counts() -> None:
    report = analyze_lines(SMTPLB_LOG.splitlines())
    o = report.overall
    assert (report.lines, report.records, report.ignored, report.skipped) == (20, 16, 1, 3)
    assert report.sources == {"smtplb": 17}
    assert (o.received, o.attempted, o.final) == (6, 5, 5)
    assert (o.delivered, o.hard_bounces, o.soft_bounces, o.expired) == (2, 1, 1, 1)
    assert (o.deferrals, o.ever_deferred) == (2, 2)
    assert (o.complaints, o.suppressed, o.failovers) == (1, 1, 1)
    assert o.deliverability == 0.4
    assert (o.hard_bounce_rate, o.soft_bounce_rate) == (0.2, 0.2)
    assert o.deferral_rate == 0.4
    assert o.complaint_rate == 0.5
    assert (o.latency_ms.count, o.latency_ms.p50, o.latency_ms.p95) == (2, 120.0, 200.0)
    assert (o.delay_ms.p50, o.delay_ms.p99) == (300.0, 60000.0)
    assert [(r.reason, r.count) for r in o.top_deferrals] == [
        ("421 4.4.2 connection dropped", 1),
        ("451 4.7.1 try again later", 1),
    ]
    assert [r.reason for r in o.top_bounces] == [
        "550 5.1.1 <*>: recipient address rejected: user unknown",
        "550 5.7.1 message blocked by policy",
    ]
    assert any("3 unreadable" in n for n in report.notes)


def test_smtplb_by_member_and_expired_inherits_from_last_deferral() -> None:
    report = analyze_lines(SMTPLB_LOG.splitlines(), by=["member"])
    groups = {g.group["member"]: g for g in report.groups}
    assert set(groups) == {"m1", "m2", "-"}
    m1, m2, none = groups["m1"], groups["m2"], groups["-"]
    assert (m1.attempted, m1.delivered, m1.hard_bounces, m1.deferrals, m1.complaints) == (
        3,
        2,
        1,
        0,
        1,
    )
    # The sweeper's "expired" record has no member: it belongs where dave was deferred.
    assert (m2.attempted, m2.delivered, m2.soft_bounces, m2.expired) == (3, 0, 1, 1)
    assert (m2.deferrals, m2.ever_deferred, m2.deferral_rate, m2.failovers) == (2, 2, 0.666667, 1)
    assert (none.received, none.suppressed, none.attempted) == (6, 1, 0)
    assert m2.deliverability == 0.0 and none.deliverability is None


def test_postfix_log_counts() -> None:
    report = analyze_lines(POSTFIX_LOG.splitlines())
    o = report.overall
    assert report.skipped == 0
    assert report.sources == {"postfix": 26, "syslog": 1}
    assert o.delivered == POSTFIX_LOG.count("status=sent") == 4
    assert (o.received, o.attempted, o.final) == (7, 7, 7)
    # 5.1.1 is hard, and so is 5.4.4 "Host or domain name not found" (the domain
    # does not exist: sisimai's hostunknown, see smtp/bounce.py).
    assert (o.hard_bounces, o.soft_bounces, o.expired) == (2, 0, 1)
    assert (o.deferrals, o.ever_deferred) == (2, 2)
    assert o.deliverability == round(4 / 7, 6)
    assert (o.latency_ms.p50, o.latency_ms.p95, o.latency_ms.p99) == (280.0, 1800.0, 1800.0)
    assert (o.delay_ms.p50, o.delay_ms.p99) == (500.0, 603000.0)
    assert [(r.reason, r.count) for r in o.top_deferrals] == [
        ("4.4.1 connect to mx.slow.example[*]:25: connection timed out", 1),
        ("450 4.2.1 <*>: recipient address rejected: mailbox busy", 1),
    ]


def test_postfix_by_member_and_domain() -> None:
    report = analyze_lines(POSTFIX_LOG.splitlines(), by=["pool", "member"])
    groups = {tuple(g.group.values()): g for g in report.groups}
    com = groups["postfix", "mx.example.com:25"]
    assert (com.attempted, com.delivered, com.hard_bounces) == (3, 2, 1)
    org = groups["postfix", "mx.example.org:25"]
    assert (org.attempted, org.delivered, org.deferrals, org.deferral_rate) == (1, 1, 1, 1.0)
    relay_none = groups["postfix", "-"]
    assert (relay_none.hard_bounces, relay_none.expired, relay_none.received) == (1, 1, 7)
    by_domain = analyze_lines(POSTFIX_LOG.splitlines(), by=["domain"])
    slow = next(g for g in by_domain.groups if g.group == {"domain": "slow.example"})
    assert (slow.deferrals, slow.expired, slow.final, slow.deliverability) == (1, 1, 1, 0.0)


def test_postfix_expiry_without_its_deferrals_counts_one_message() -> None:
    line = "Mar  8 10:16:01 mx1 postfix/qmgr[1]: 7C2E395440: from=<a@b>, status=expired, returned…"
    report = analyze_lines([line])
    assert (report.overall.expired, report.overall.final) == (1, 1)


def test_groups_are_sorted_biggest_first() -> None:
    lines = [
        _smtplb(event="delivered", queue_id=f"Q{i}", recipient=f"u{i}@x.example", pool=pool)
        for i, pool in enumerate(["small", "big", "big", "big", "mid", "mid"])
    ]
    report = analyze_lines(lines, by=["pool"])
    assert [g.group["pool"] for g in report.groups] == ["big", "mid", "small"]


def test_latency_reservoir_caps_memory_and_says_so() -> None:
    analyzer = Analyzer(["pool"], sample_cap=100, seed=7)
    values = list(range(1, 1001))
    random.Random(1).shuffle(values)
    for i, v in enumerate(values):
        analyzer.feed(
            _smtplb(
                event="delivered",
                queue_id=f"Q{i}",
                recipient=f"u{i}@x.example",
                pool="p",
                latency_ms=v,
                delay_ms=v,
            )
        )
    report = analyzer.report()
    lat = report.overall.latency_ms
    assert (lat.count, lat.sampled) == (1000, True)
    assert lat.p50 is not None and 300 <= lat.p50 <= 700
    assert report.groups[0].latency_ms.sampled
    assert any("sample of 100 values" in n for n in report.notes)
    again = Analyzer(["pool"], sample_cap=100, seed=7)
    again.feed_lines(
        _smtplb(
            event="delivered",
            queue_id=f"Q{i}",
            recipient=f"u{i}@x.example",
            pool="p",
            latency_ms=v,
            delay_ms=v,
        )
        for i, v in enumerate(values)
    )
    assert again.report().overall.latency_ms == lat  # seeded: same input, same answer


def test_unknown_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown --by recipient"):
        Analyzer(["recipient"])


def test_empty_input() -> None:
    report = analyze_lines([])
    assert (report.lines, report.records, report.overall.deliverability) == (0, 0, None)
    assert report.notes == ["no input lines: nothing to analyze"]
    assert "no input lines" in render_table(report)


# -- property: files can be split and ordered any way ----------------------------------------

_OUTCOME = st.tuples(
    st.sampled_from(["delivered", "deferred", "bounced"]),
    st.integers(0, 30),  # recipient
    st.sampled_from(["m1", "m2", "m3"]),
    st.booleans(),  # Postfix format?
)


def _line(kind: str, rcpt: int, member: str, postfix: bool) -> str:
    code = {"delivered": 250, "deferred": 451, "bounced": 550}[kind]
    if postfix:
        status = {"delivered": "sent", "deferred": "deferred", "bounced": "bounced"}[kind]
        dsn = {"sent": "2.0.0", "deferred": "4.2.1", "bounced": "5.1.1"}[status]
        return (
            f"Mar  3 10:15:01 mx1 postfix/smtp[1]: ABCDEF{rcpt:04X}: to=<u{rcpt}@example.com>, "
            f"relay={member}[192.0.2.1]:25, delay=1, delays=0/0/0.5/0.5, dsn={dsn}, "
            f"status={status} ({code} {dsn} whatever)"
        )
    return _smtplb(
        event=kind,
        queue_id=f"Q{rcpt}",
        recipient=f"u{rcpt}@example.com",
        pool="p",
        member=member,
        code=code,
        enhanced_code=f"{code // 100}.1.1",
        latency_ms=rcpt,
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(_OUTCOME, max_size=60),
    st.lists(st.integers(0, 60), max_size=4),
    st.randoms(use_true_random=False),
)
def test_totals_do_not_depend_on_how_lines_are_split_into_files(
    outcomes: list[tuple[str, int, str, bool]], cuts: list[int], rnd: random.Random
) -> None:
    lines = [_line(*o) for o in outcomes]
    bounds = sorted({0, len(lines), *(min(c, len(lines)) for c in cuts)})
    files = [lines[a:b] for a, b in itertools.pairwise(bounds)]
    rnd.shuffle(files)
    split = Analyzer(["member"])
    for chunk in files:
        split.feed_lines(chunk)
    whole = analyze_lines(lines, by=["member"])
    got = split.report()
    count = {k: sum(1 for o in outcomes if o[0] == k) for k in ("delivered", "bounced", "deferred")}
    for r in (whole, got):
        o = r.overall
        assert (o.delivered, o.hard_bounces, o.deferrals) == (
            count["delivered"],
            count["bounced"],
            count["deferred"],
        )
        assert o.attempted == len({(o_[1], o_[3]) for o_ in outcomes})
        assert sum(g.delivered for g in r.groups) == o.delivered
    assert got.overall == whole.overall
    assert sorted(g.group["member"] for g in got.groups) == sorted(
        g.group["member"] for g in whole.groups
    )


# -- the command ---------------------------------------------------------------------------


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, ["logs", "analyze", *args])


def test_cli_table(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(POSTFIX_LOG)
    result = _run(str(log), "--by", "member")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "27 lines (postfix 26, syslog 1): " in out
    assert re.search(r"^delivered +4 +57\.14% +deliverability \(of final\)$", out, re.M)
    assert "top bounce reasons" in out and "550 5.1.1 <*>: recipient address rejected" in out
    assert "by member" in out
    header = next(line for line in out.splitlines() if line.startswith("member"))
    assert header.split() == [
        "member",
        "received",
        "attempted",
        "delivered",
        "deliv%",
        "hard%",
        "soft%",
        "expired",
        "deferred%",
        "compl%",
        "lat",
        "p50",
        "lat",
        "p95",
        "lat",
        "p99",
        "delay",
        "p95",
    ]
    assert any(line.startswith("mx.example.com:25 ") for line in out.splitlines())


def test_cli_json_shape(tmp_path: Path) -> None:
    log = tmp_path / "delivery.jsonl"
    log.write_text(SMTPLB_LOG)
    result = _run(str(log), "--by", "pool,class", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc) == {
        "by",
        "lines",
        "records",
        "ignored",
        "skipped",
        "sources",
        "notes",
        "overall",
        "groups",
    }
    assert doc["by"] == ["pool", "class"] and doc["skipped"] == 3
    assert doc["overall"]["delivered"] == 2 and doc["overall"]["group"] == {}
    assert set(doc["overall"]["latency_ms"]) == {"count", "p50", "p95", "p99", "sampled"}
    assert doc["overall"]["top_bounces"][0] == {
        "reason": "550 5.1.1 <*>: recipient address rejected: user unknown",
        "count": 1,
    }
    [group] = doc["groups"]  # the expired record inherited pool and class
    assert group["group"] == {"pool": "bulk", "class": "newsletter"}
    assert (group["delivered"], group["expired"], group["received"]) == (2, 1, 6)


def test_cli_reads_rotated_and_gzipped_files_oldest_first(tmp_path: Path) -> None:
    lines = POSTFIX_LOG.splitlines(keepends=True)
    deferral = next(i for i, line in enumerate(lines) if "y@slow.example" in line)
    (tmp_path / "mail.log.2.gz").write_bytes(gzip.compress("".join(lines[:10]).encode()))
    (tmp_path / "mail.log.1").write_text("".join(lines[10 : deferral + 1]))
    (tmp_path / "mail.log").write_text("".join(lines[deferral + 1 :]))
    names = ["mail.log", "mail.log.1", "mail.log.2.gz"]  # as a shell glob lists them
    result = _run(*(str(tmp_path / n) for n in names), "--by", "domain", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["overall"]["delivered"] == 4 and doc["lines"] == 27
    slow = next(g for g in doc["groups"] if g["group"]["domain"] == "slow.example")
    assert slow["expired"] == 1  # matched to its deferral only because .2.gz was read first


def test_cli_reads_standard_input() -> None:
    result = CliRunner().invoke(main, ["logs", "analyze", "-", "--json"], input=POSTFIX_LOG)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["overall"]["delivered"] == 4


def test_chronological_order() -> None:
    paths = [Path(p) for p in ("d/x.jsonl", "d/x.jsonl.1", "d/x.jsonl.10", "d/x.jsonl.2.gz")]
    assert [p.name for p in chronological(paths)] == [
        "x.jsonl.10",
        "x.jsonl.2.gz",
        "x.jsonl.1",
        "x.jsonl",
    ]
    dated = [Path("maillog"), Path("maillog-20240310"), Path("maillog-20240303.gz")]
    assert [p.name for p in chronological(dated)] == [
        "maillog-20240303.gz",
        "maillog-20240310",
        "maillog",
    ]


def test_cli_missing_file_exits_1(tmp_path: Path) -> None:
    present = tmp_path / "delivery.jsonl"
    present.write_text(SMTPLB_LOG)
    result = _run(str(present), str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 1
    assert f"{tmp_path / 'nope.jsonl'}: no such file" in result.output
    assert "Traceback" not in result.output


def test_cli_empty_and_garbage_files_are_skipped_not_fatal(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("")
    binary = tmp_path / "binary.log"
    binary.write_bytes(b"\x00\x01\xff\xfe\n{not json\n")
    result = _run(str(empty), str(binary))
    assert result.exit_code == 0, result.output
    assert "2 lines (none recognised): 0 records, 0 ignored, 2 skipped" in result.output
    assert "note: no delivery records found" in result.output
    assert "note: 2 unreadable line(s) skipped" in result.output


def test_cli_truncated_gzip_keeps_what_was_read(tmp_path: Path) -> None:
    data = gzip.compress(SMTPLB_LOG.encode())
    broken = tmp_path / "delivery.jsonl.1.gz"
    broken.write_bytes(data[: len(data) - 12])  # lose the trailer
    result = _run(str(broken), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert any("unreadable after line" in n for n in doc["notes"])
    assert doc["skipped"] >= 1


def test_cli_bad_dimension_is_a_usage_error(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("")
    result = _run(str(log), "--by", "pool,colour")
    assert result.exit_code == 2
    assert "unknown --by colour" in result.output


# Postfix relaying to Google, Yahoo and Outlook: the provider from the relay host's
# name (the recipient domains are customers' own), or from a provider's own domain.
POSTFIX_PROVIDERS = """\
Mar  3 11:00:01 mx1 postfix/smtp[1]: 4F9D195501: to=<a@corp.example>, relay=aspmx.l.google.com[142.250.1.27]:25, delay=1, delays=0/0/0.5/0.5, dsn=2.0.0, status=sent (250 2.0.0 OK gsmtp)
Mar  3 11:00:02 mx1 postfix/smtp[1]: 4F9D195502: to=<b@gmail.com>, relay=gmail-smtp-in.l.google.com[142.250.1.26]:25, delay=1, delays=0/0/0.5/0.5, dsn=4.7.28, status=deferred (host gmail-smtp-in.l.google.com[142.250.1.26] said: 421-4.7.28 Our system has detected an unusual rate of unsolicited mail (in reply to end of DATA command))
Mar  3 11:00:03 mx1 postfix/smtp[1]: 4F9D195503: to=<c@yahoo.com>, relay=mta6.am0.yahoodns.net[67.195.204.72]:25, delay=1, delays=0/0/0.5/0.5, dsn=2.0.0, status=sent (250 ok dirdel)
Mar  3 11:00:04 mx1 postfix/smtp[1]: 4F9D195504: to=<d@hotmail.com>, relay=hotmail-com.olc.protection.outlook.com[52.101.1.1]:25, delay=1, delays=0/0/0.5/0.5, dsn=2.0.0, status=sent (250 2.6.0 Queued mail for delivery)
Mar  3 11:00:05 mx1 postfix/smtp[1]: 4F9D195505: to=<e@shop.example>, relay=mx.shop.example[192.0.2.9]:25, delay=1, delays=0/0/0.5/0.5, dsn=2.0.0, status=sent (250 ok)
"""  # noqa: E501


def test_cli_by_provider_reads_postfix_relay_hosts(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(POSTFIX_PROVIDERS)
    result = _run(str(log), "--by", "provider", "--json")
    assert result.exit_code == 0, result.output
    groups = {g["group"]["provider"]: g for g in json.loads(result.output)["groups"]}
    assert set(groups) == {"gmail", "yahoo", "outlook", "other"}
    assert groups["gmail"]["delivered"] == 1 and groups["gmail"]["attempted"] == 2
