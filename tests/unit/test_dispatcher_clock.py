"""The dispatcher on a fake clock: deferral timing and skip reasons, no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

from smtplb.clock import FakeClock
from smtplb.delivery.dispatcher import Dispatcher
from smtplb.delivery.mx import MxResolver
from smtplb.delivery.outcome import RetrySchedule
from smtplb.model import RecipientState
from smtplb.observability.delivery_log import DeliveryLog
from smtplb.observability.trace import TraceBook
from smtplb.spool.base import NewMessage, NewRecipient
from smtplb.spool.sqlite import SqliteSpool
from tests.unit.test_eligibility import member, pool

T0 = 1_000_000.0


async def _defer_when_every_member_is_excluded(tmp: Path) -> None:
    clock = FakeClock(T0)
    spool = SqliteSpool(tmp / "spool.db", clock=clock)
    await spool.open()
    a, b = member("a", clock), member("b", clock)
    a.paused = True
    b.record_check(False, "refused", clock.monotonic())
    b.record_check(False, "refused", clock.monotonic())  # fall=2: down
    traces = TraceBook()
    delivery_log = DeliveryLog(tmp / "delivery.jsonl", clock=clock.wall)
    dispatcher = Dispatcher(
        spool=spool,
        pools={"main": pool("round_robin", [a, b])},
        resolver=MxResolver({}),
        delivery_log=delivery_log,
        schedule=RetrySchedule(base=60, maximum=3600, jitter=0),
        traces=traces,
        clock=clock,
        rng=random.Random(0),
    )
    assert not dispatcher.any_member_available()
    rcpt = NewRecipient("someone@example.org", "main")
    message = NewMessage("Q1", "app@shop.test", (rcpt,), b"x", "<m@x>", T0, T0 + 86400)
    stored = await spool.store(message, inflight=True)
    clock.advance(5)
    dispatcher.submit(stored)
    await asyncio.sleep(0)  # the pump runs on the next turn of the loop
    await dispatcher.stop(grace=0)  # flushes the recorded results
    view = await spool.get("Q1")
    await spool.close()
    delivery_log.close()
    assert view is not None
    (r,) = view.recipients
    assert r.state is RecipientState.DEFERRED
    assert r.attempts == 0  # waiting for a member is not the recipient's failed attempt
    assert r.next_attempt == T0 + 5 + 60  # the clock's now + the first retry delay
    reason = "no member available (a: paused; b: down (health checks: refused))"
    assert (r.last_code, r.last_enhanced_code, r.last_response) == (451, "4.4.1", reason)
    (step,) = traces.get("Q1")
    assert step["step"] == "deferred" and step["reason"] == reason
    (record,) = [json.loads(line) for line in (tmp / "delivery.jsonl").read_text().splitlines()]
    assert (record["event"], record["ts"], record["delay_ms"]) == ("deferred", T0 + 5, 5000.0)


def test_a_job_no_member_may_take_is_deferred_on_the_clock(tmp_path: Path) -> None:
    asyncio.run(_defer_when_every_member_is_excluded(tmp_path))
