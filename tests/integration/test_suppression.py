"""The suppression list over real sockets: a hard bounce suppresses the address,
the next message to it is refused at RCPT (550 5.7.1), and after `smtplb suppress
remove` it is accepted again; `drop` accepts and logs `suppressed`; the CLI
imports and exports."""

from __future__ import annotations

import contextlib
import json
import smtplib
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from smtplb.sink.profile import SinkProfile
from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config, wait_until

GONE = "gone@example.org"


def _cli(node: Smtplb, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "smtplb", *args, "--api", node.api_url],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def _send(node: Smtplb, rcpt: str, sender: str = "app@shop.test") -> None:
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        client.sendmail(sender, [rcpt], b"Subject: hi\r\n\r\nbody\r\n")


def _refused(node: Smtplb, rcpt: str, sender: str) -> tuple[int, bytes]:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        _send(node, rcpt, sender)
    code, text = refused.value.recipients[rcpt]
    return code, text[:5]


def test_hard_bounce_suppresses_then_remove_accepts_again(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    sink = sinks(SinkProfile(unknown_users=frozenset({GONE})))
    node = smtplb(*relay_config(tmp_path / "var", [sink.port])).start()

    _send(node, GONE)  # accepted by smtplb; the sink answers 550 5.1.1
    wait_until(
        lambda: GONE in _cli(node, "suppress", "list"), 15, "the hard bounce to be suppressed"
    )
    listed = json.loads(_cli(node, "suppress", "list", "--json"))["suppressions"]
    assert [(e["address"], e["source"]) for e in listed] == [(GONE, "bounce")]
    assert "5.1.1" in listed[0]["reason"]

    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        _send(node, GONE)
    code, text = refused.value.recipients[GONE]
    assert code == 550 and text.startswith(b"5.7.1")

    assert "removed" in _cli(node, "suppress", "remove", GONE)
    assert GONE not in _cli(node, "suppress", "list")
    sink.profile = SinkProfile()  # the mailbox exists again
    _send(node, GONE)  # accepted at RCPT again, and delivered
    wait_until(
        lambda: any(m.rcpt_to == [GONE] for m in sink.received), 10, "delivery to the address"
    )


def test_drop_accepts_logs_suppressed_and_delivers_the_others(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    sink = sinks()
    text, smtp_port, http_port = relay_config(tmp_path / "var", [sink.port])
    node = smtplb(text + '[suppression]\non_intake = "drop"\n', smtp_port, http_port).start()
    imported = tmp_path / "list.csv"
    imported.write_text("address,reason\nBlocked@Example.org,complained\nother@example.org,x\n")
    assert "2 added" in _cli(node, "suppress", "add", "--file", str(imported))

    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        refused = client.sendmail(
            "app@shop.test", ["blocked@example.org", "ok@example.org"], b"Subject: x\r\n\r\nx\r\n"
        )
    assert refused == {}  # accepted: drop, not reject
    assert sink.wait_for(1, timeout=10)
    assert sink.received[0].rcpt_to == ["ok@example.org"]
    wait_until(
        lambda: any(r["event"] == "suppressed" for r in node.delivery_log()), 10, "the log record"
    )
    (record,) = [r for r in node.delivery_log() if r["event"] == "suppressed"]
    assert record["recipient"] == "blocked@example.org" and record["enhanced_code"] == "5.7.1"

    exported = _cli(node, "suppress", "list", "--csv").splitlines()
    assert exported[0] == "address,reason,source,created_at,domain"
    assert [line.split(",")[:3] for line in exported[1:]] == [
        ["blocked@example.org", "complained", "operator"],  # the file's reasons, kept
        ["other@example.org", "x", "operator"],
    ]


def test_api_refuses_a_bad_address_and_404s_an_unknown_one(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    node = smtplb(*relay_config(tmp_path / "var", [sinks().port])).start()
    status, doc = node.api("/api/v1/suppressions", "POST", {"addresses": ["not an address"]})
    assert status == 422 and "addresses" in doc["detail"]
    status, _ = node.api("/api/v1/suppressions/nobody@example.org", "DELETE")
    assert status == 404
    status, doc = node.api(
        "/api/v1/suppressions", "POST", {"address": "a@example.org", "reason": "r"}
    )
    assert status == 200 and doc == {"added": 1, "requested": 1}
    status, doc = node.api("/api/v1/suppressions?address=A@example.org")
    assert status == 200 and doc["suppressions"][0]["reason"] == "r"


def test_a_domain_scoped_entry_refuses_only_mail_from_that_sender_domain(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    sink = sinks()
    text, smtp_port, http_port = relay_config(tmp_path / "var", [sink.port])
    node = smtplb(text + '[suppression]\nscope = "sender_domain"\n', smtp_port, http_port).start()
    reader = "reader@example.org"
    assert "1 added" in _cli(node, "suppress", "add", reader, "--domain", "Shop.Test")

    assert _refused(node, reader, "news@shop.test") == (550, b"5.7.1")
    assert _refused(node, reader, "NEWS@SHOP.TEST") == (550, b"5.7.1")
    _send(node, reader, "news@other.test")  # another sender domain: accepted
    assert sink.wait_for(1, timeout=10)
    assert (sink.received[0].mail_from, sink.received[0].rcpt_to) == ("news@other.test", [reader])

    # A complaint, with scope = "sender_domain": the complainant is suppressed for
    # the domain that sent the mail complained about, not for every sender.
    status, answer = node.api(
        "/api/v1/feedback",
        "POST",
        {"type": "complaint", "recipient": "fan@example.org", "sender": "news@other.test"},
    )
    assert status == 200 and answer["domain"] == "other.test"
    assert _refused(node, "fan@example.org", "news@other.test") == (550, b"5.7.1")
    _send(node, "fan@example.org", "news@shop.test")
    assert sink.wait_for(2, timeout=10)

    exported = _cli(node, "suppress", "list", "--csv").splitlines()
    assert [(row.split(",")[0], row.split(",")[-1]) for row in exported[1:]] == [
        ("fan@example.org", "other.test"),
        ("reader@example.org", "shop.test"),
    ]
    assert "fan@example.org" not in _cli(node, "suppress", "list", "--domain", "shop.test")
    # A global remove leaves the scoped entry; removing that scope lifts it.
    with pytest.raises(subprocess.CalledProcessError):
        _cli(node, "suppress", "remove", reader)
    assert "for shop.test removed" in _cli(
        node, "suppress", "remove", reader, "--domain", "shop.test"
    )
    _send(node, reader, "news@shop.test")
    assert sink.wait_for(3, timeout=10)


def test_an_addition_and_a_removal_reach_every_worker_at_once(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    text, smtp_port, http_port = relay_config(tmp_path / "var", [sinks().port], workers=2)
    node = smtplb(text, smtp_port, http_port).start()
    wait_until(
        lambda: sum("smtplb listening" in line for line in node.output) == 2, 20, "both workers"
    )
    assert "1 added" in _cli(node, "suppress", "add", GONE)  # through worker 0's API

    def connections(count: int) -> list[int]:
        """RCPT to GONE on ``count`` new connections (the kernel spreads them over
        both workers); each also queues one message, so the shards show who served."""
        codes = []
        for _ in range(count):
            with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
                client.ehlo()
                assert client.mail("app@shop.test")[0] == 250
                codes.append(client.rcpt(GONE)[0])
                assert client.rcpt("ok@example.org")[0] == 250
                client.data(b"Subject: x\r\n\r\nx\r\n")
        return codes

    assert connections(30) == [550] * 30
    per_shard = []
    for shard in ("spool.db", "spool-1.db"):
        uri = f"file:{tmp_path / 'var' / shard}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            per_shard.append(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    assert sum(per_shard) == 30 and all(per_shard), per_shard  # both workers refused GONE

    assert "removed" in _cli(node, "suppress", "remove", GONE)
    assert connections(30) == [250] * 30
