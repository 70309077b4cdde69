"""Disk full, end to end (issue 10, item 7): smtplb with its data directory on a
size-limited tmpfs (needs root to mount), a real upstream and a real client.

Acceptance: disk full → ``451 4.3.0``; space freed → intake and the recipient
whose result could not be written recover without a restart; a start on a full
disk answers 451 (instead of ``SpoolError: cannot open spool``).
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

from smtplb.sink.profile import DomainRule, SinkProfile
from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config, wait_until
from tests.integration.test_spool_disk_full import MiB, small_disk


def send(node: Smtplb, subject: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=20) as c:
        c.ehlo()
        c.mail("app@shop.test")
        c.rcpt("someone@example.org")
        code, reply = c.data(f"Subject: {subject}\r\n\r\nhi\r\n".encode())
    return code, reply.decode()


def queue_id_of(reply: str) -> str:
    return reply.rsplit(" ", 1)[1]


def recipient_state(node: Smtplb, queue_id: str) -> str:
    status, body = node.api(f"/api/v1/queue/{queue_id}")
    assert status == 200, body
    state: str = body["recipients"][0]["state"]
    return state


def test_start_on_a_full_disk_answers_451_then_recovers_without_a_restart(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    upstream = sinks()
    with small_disk(tmp_path / "disk", 8 * MiB) as disk:
        data = disk.root / "var"
        data.mkdir()
        disk.fill()
        node = smtplb(*relay_config(data, [upstream.port])).start()
        code, reply = send(node, "on a full disk")
        assert (code, reply[:5]) == (451, "4.3.0"), reply
        disk.free()
        # No restart: the spool opens as soon as there is room.
        wait_until(lambda: send(node, "space is back")[0] == 250, 15, "intake to answer 250")
        assert upstream.wait_for(1, 15)
        assert node.stop() == 0


def test_a_deferral_that_could_not_be_written_is_retried_once_space_returns(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    slow_deferral = SinkProfile(rules={"*": DomainRule(accept=0, defer=1, latency=1.5)})
    upstream = sinks(slow_deferral)
    with small_disk(tmp_path / "disk", 8 * MiB) as disk:
        data = disk.root / "var"
        node = smtplb(*relay_config(data, [upstream.port])).start()
        code, reply = send(node, "deferred while the disk fills")
        assert code == 250, reply
        queue_id = queue_id_of(reply)
        disk.fill()  # while the upstream takes 1.5 s to answer 4xx
        wait_until(lambda: upstream.counts.get("deferred", 0) >= 1, 15, "the upstream to defer")
        assert send(node, "refused")[0] == 451  # intake fails closed meanwhile
        assert recipient_state(node, queue_id) == "in_flight"  # its result is held
        upstream.profile = SinkProfile()  # the upstream would take it now
        disk.free()
        # The held deferral is written, the recipient comes due and is delivered.
        assert upstream.wait_for(1, 20), "".join(node.output[-40:])
        wait_until(
            lambda: recipient_state(node, queue_id) == "delivered", 10, "the delivered state"
        )
        assert send(node, "after")[0] == 250
        assert node.stop() == 0
