"""``hash_key = "client_ip"`` over real sockets (issue 10 item 9): the pick request
carries the client's address, from intake and from the spool alike."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Callable
from pathlib import Path

from smtplb.clock import FakeClock
from smtplb.sink.server import ThreadedSink
from smtplb.spool.base import NewMessage, NewRecipient
from smtplb.spool.sqlite import SqliteSpool
from tests.integration.conftest import Smtplb, relay_config, wait_until

CLIENTS = [f"127.0.0.{i}" for i in range(2, 14)]  # 12 client addresses


def send_from(ip: str, port: int, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(ip, 0)) as client:
        for i in range(count):
            mid = f"<ip-{ip}-{i}@shop.test>"
            body = f"Message-ID: {mid}\r\nSubject: from {ip}\r\n\r\nhello\r\n"
            client.sendmail("app@shop.test", [f"user{i}@domain{i}.test"], body)


def test_hash_on_client_ip_spreads_clients_and_keeps_each_on_its_member(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    ups = [sinks() for _ in range(3)]
    # max_in_flight 1: most messages overflow to the spool and are claimed from
    # there, so the client address must survive the spool too.
    node = smtplb(
        *relay_config(
            tmp_path / "var",
            [s.port for s in ups],
            strategy="hash",
            pool={"hash_key": "client_ip"},
            delivery={"max_in_flight": 1},
        )
    ).start()
    per_client = 4
    for ip in CLIENTS:
        send_from(ip, node.smtp_port, per_client)
    total = per_client * len(CLIENTS)
    wait_until(lambda: sum(len(s.received) for s in ups) >= total, 60, f"{total} deliveries")
    owners: dict[str, set[int]] = {}
    for n, sink in enumerate(ups):
        for m in sink.received:
            ip = (m.message_id or "").split("-")[1]
            owners.setdefault(ip, set()).add(n)
    counts = [len(s.received) for s in ups]
    print(f"hash on client_ip: {len(CLIENTS)} clients x {per_client} messages, per member {counts}")
    assert set(owners) == set(CLIENTS)
    assert all(len(members) == 1 for members in owners.values()), (
        owners
    )  # a client keeps its member
    assert sum(1 for c in counts if c) == 3, counts  # and the clients spread over every member


def test_a_claimed_message_carries_its_client_address(tmp_path: Path) -> None:
    async def run() -> str:
        spool = SqliteSpool(tmp_path / "spool.db", clock=FakeClock())
        await spool.open()
        try:
            await spool.store(
                NewMessage(
                    "Q1",
                    "a@shop.test",
                    (NewRecipient("b@example.org", "main"),),
                    b"x",
                    "<m@x>",
                    0.0,
                    9e9,
                    client_ip="127.0.0.9",
                )
            )
            (claimed,) = await spool.claim_ready(1e9, 10)
            return claimed.client_ip
        finally:
            await spool.close()

    assert asyncio.run(run()) == "127.0.0.9"
