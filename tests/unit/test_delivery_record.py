"""The delivery-log record: one schema from the writer to ``logs analyze``."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from smtplb.observability.analyze import analyze_lines
from smtplb.observability.delivery_log import DeliveryLog
from smtplb.observability.log_reader import Verdict, parse_line
from smtplb.observability.record import EVENTS, DeliveryRecord, decode, member_record

DELIVERED = DeliveryRecord(
    event="delivered",
    queue_id="Q1",
    message_id="<m1@app>",
    sender="news@example.net",
    recipient="bob@example.com",
    recipient_domain="example.com",
    pool="bulk",
    member="m1",
    source_ip="192.0.2.10",
    upstream="mx.example.com:25",
    code=250,
    enhanced_code="2.0.0",
    response="Ok",
    latency_ms=120.0,
    delay_ms=300.0,
    attempt=1,
    klass="newsletter",
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _log(tmp_path: Path, clock: Clock, **kw: float) -> DeliveryLog:
    return DeliveryLog(tmp_path / "delivery.jsonl", clock=clock, **kw)  # type: ignore[arg-type]


def test_spec_fields_are_the_schema() -> None:
    spec = [
        "ts",
        "event",
        "queue_id",
        "message_id",
        "sender",
        "recipient",
        "recipient_domain",
        "provider",
        "pool",
        "member",
        "source_ip",
        "upstream",
        "code",
        "enhanced_code",
        "response",
        "latency_ms",
        "attempt",
        "class",
        "variant",
    ]
    wire = [f.encode_name for f in msgspec.structs.fields(DeliveryRecord)]
    assert [name for name in wire if name in spec] == spec  # all of them, in SPEC order
    assert {"received", "suppressed", "complaint", "quarantined", "suspended"} <= set(EVENTS)


def test_fields_that_do_not_apply_are_left_out() -> None:
    line = msgspec.json.encode(member_record("member_down", "bulk", "m2", "3 failures"))
    assert json.loads(line) == {  # ts too: the log stamps it when writing
        "event": "member_down",
        "pool": "bulk",
        "member": "m2",
        "response": "3 failures",
    }
    assert b'"class":"newsletter"' in msgspec.json.encode(DELIVERED)  # not "klass"


def test_the_log_stamps_time_from_its_clock_and_tells_listeners(tmp_path: Path) -> None:
    seen: list[DeliveryRecord] = []
    log = _log(tmp_path, Clock(1709460901.23456), flush_interval=3600)
    log.listeners.append(seen.append)
    log.write(msgspec.structs.replace(DELIVERED))
    assert seen[0].ts == 1709460901.235 and seen[0].event == "delivered"
    assert log.path.read_bytes() == b""  # buffered until the flush
    log.close()
    [line] = log.path.read_text().splitlines()
    assert decode(line) == seen[0]


def test_what_the_log_writes_is_what_analyze_reads(tmp_path: Path) -> None:
    log = _log(tmp_path, Clock(1709460900.0), flush_interval=3600)
    received = DeliveryRecord(
        event="received", queue_id="Q1", recipient="bob@example.com", pool="bulk", size=900
    )
    deferred = msgspec.structs.replace(
        DELIVERED, event="deferred", code=451, enhanced_code="4.7.1", response="later"
    )
    expired = DeliveryRecord(event="expired", queue_id="Q1", recipient="bob@example.com")
    for record in (received, deferred, member_record("member_down", "bulk", "m1", "x"), expired):
        log.write(record)
    log.close()
    lines = log.path.read_text().splitlines()
    assert [decode(line).event for line in lines] == [
        "received",
        "deferred",
        "member_down",
        "expired",
    ]
    report = analyze_lines(lines, by=["member", "class"])
    assert (report.records, report.ignored, report.skipped) == (3, 1, 0)
    o = report.overall
    assert (o.received, o.deferrals, o.expired, o.final) == (1, 1, 1, 1)
    [group] = [g for g in report.groups if g.expired]
    assert group.group == {"member": "m1", "class": "newsletter"}  # inherited from the deferral


def test_older_logs_decode_nulls_and_unknown_fields() -> None:
    older = (
        '{"ts":1709460901.2,"event":"delivered","queue_id":"Q1","recipient":"bob@example.com",'
        '"provider":null,"variant":null,"code":250,"latency_ms":120,"shard":3,"extra":{"a":1}}'
    )
    source, record = parse_line(older)
    assert source == "smtplb" and isinstance(record, DeliveryRecord)
    assert (record.code, record.latency_ms, record.provider) == (250, 120.0, None)


@pytest.mark.parametrize(
    "line",
    ['{"event":"delivered","code":"250"}', '{"event":"delivered","until":"soon"}', '{"ts":1}'],
)
def test_a_field_of_the_wrong_type_makes_the_line_unreadable(line: str) -> None:
    assert parse_line(line) == ("", Verdict.SKIPPED)


def test_a_batch_of_records_encodes_in_one_call(tmp_path: Path) -> None:
    log = _log(tmp_path, Clock(1.0), flush_interval=3600)
    for i in range(600):  # more than the 512 a flush waits for
        log.write(DeliveryRecord(event="received", queue_id=f"Q{i}"))
    assert log.records == 600
    log.close()
    lines = log.path.read_text().splitlines()
    assert [decode(line).queue_id for line in lines] == [f"Q{i}" for i in range(600)]
