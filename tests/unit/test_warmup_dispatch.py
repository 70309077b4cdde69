"""The warm-up cap in the pool and the dispatcher, on a fake clock: a capped member
is skipped (overflow), a reservation lost to another worker is refused at pick
time, a job no member may take waits in the spool without an attempt, and a
reservation whose attempt never happened is given back."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from smtplb.balancing.eligibility import EXCLUDE, WAIT, Eligibility
from smtplb.clock import FakeClock
from smtplb.delivery.dispatcher import Dispatcher
from smtplb.delivery.member import Member
from smtplb.delivery.mx import MxResolver
from smtplb.delivery.outcome import RetrySchedule
from smtplb.delivery.pools import PoolRuntime
from smtplb.model import RecipientState
from smtplb.observability.delivery_log import DeliveryLog
from smtplb.observability.trace import TraceBook
from smtplb.reputation.warmup import WarmupPolicy
from smtplb.reputation.warmup_gate import WarmupGate
from smtplb.reputation.warmup_store import SqliteWarmupState
from smtplb.spool.base import NewMessage, NewRecipient
from smtplb.spool.sqlite import SqliteSpool
from tests.integration.conftest import free_port
from tests.unit.test_eligibility import job, member, pool

T0 = 20_000 * 86400.0


def _gate(tmp: Path, clock: FakeClock, cap: int = 1) -> tuple[SqliteWarmupState, WarmupGate]:
    state = SqliteWarmupState(tmp / "w.sqlite", WarmupPolicy((cap,), 1.0), {"new": None})
    return state, WarmupGate(state, clock, None, ["new"])


def _pool(members: list[Member], eligibility: Eligibility) -> PoolRuntime:
    p = pool("failover", members)  # "new" first: it is chosen whenever it may be
    p.eligibility = eligibility
    return p


def test_a_capped_member_overflows_to_the_next(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    state, gate = _gate(tmp_path, clock)
    p = _pool(
        [member("new", clock), member("old", clock)],
        Eligibility((*EXCLUDE, gate), WAIT, reservers=(gate,)),
    )
    first = p.choose(job(), clock.monotonic())
    assert first.member is not None and first.member.name == "new"
    second = p.choose(job(), clock.monotonic())
    assert second.member is not None and second.member.name == "old"
    assert second.selection.reasons(second.member) == (
        ("new", "warm-up cap 1/1 for other (day 1)"),
    )
    state.close()


def test_a_slot_taken_by_another_worker_is_refused_at_pick_time(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    state, gate = _gate(tmp_path, clock)
    # The filter saw room; another worker took the last slot before this pick.
    p = _pool(
        [member("new", clock), member("old", clock)], Eligibility(EXCLUDE, WAIT, reservers=(gate,))
    )
    assert state.take("new", "other", 1, clock.wall())[0] is None
    choice = p.choose(job(), clock.monotonic())
    assert choice.member is not None and choice.member.name == "old"
    assert dict(choice.selection.verdicts)["new"] == "warm-up cap 1/1 for other (day 1)"
    assert state.status("new", "other", clock.wall()).sent == 1  # never over the cap
    state.close()


def test_a_member_capped_for_one_provider_may_still_take_others(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    state, gate = _gate(tmp_path, clock)
    p = _pool([member("new", clock)], Eligibility((*EXCLUDE, gate), WAIT, reservers=(gate,)))
    assert state.take("new", "other", 1, clock.wall())[0] is None
    assert p.any_available(clock.monotonic())  # the feeder keeps claiming mail
    assert p.choose(job("gmail.com"), clock.monotonic()).member is not None
    capped = p.choose(job(), clock.monotonic())
    assert capped.member is None
    assert p.frees_at(job(), capped.selection, clock.monotonic()) == T0 + 86400
    state.close()


def test_hourly_cap_frees_at_the_next_hour_and_other_reasons_at_no_known_time(
    tmp_path: Path,
) -> None:
    clock = FakeClock(T0 + 600)
    state = SqliteWarmupState(tmp_path / "w.sqlite", WarmupPolicy((10,), 0.1), {"new": None})
    gate = WarmupGate(state, clock, None, ["new"])
    new, old = member("new", clock), member("old", clock)
    p = _pool([new, old], Eligibility((*EXCLUDE, gate), WAIT, reservers=(gate,)))
    assert p.choose(job(), clock.monotonic()).member is new  # takes the hour's one message
    old.paused = True
    choice = p.choose(job(), clock.monotonic())
    assert choice.member is None
    assert p.frees_at(job(), choice.selection, clock.monotonic()) is None  # "old" is paused
    p.members = [new]
    choice = p.choose(job(), clock.monotonic())
    assert p.frees_at(job(), choice.selection, clock.monotonic()) == T0 + 3600
    state.close()


async def _dispatch(tmp: Path, new: Member, clock: FakeClock, gate: WarmupGate) -> SqliteSpool:
    spool = SqliteSpool(tmp / "spool.db", clock=clock)
    await spool.open()
    dispatcher = Dispatcher(
        spool=spool,
        pools={"main": _pool([new], Eligibility((*EXCLUDE, gate), WAIT, reservers=(gate,)))},
        resolver=MxResolver({}),
        delivery_log=DeliveryLog(tmp / "delivery.jsonl", clock=clock.wall),
        schedule=RetrySchedule(base=60, maximum=3600, jitter=0),
        traces=TraceBook(),
        clock=clock,
        rng=random.Random(0),
    )
    rcpt = NewRecipient("someone@example.org", "main")
    message = NewMessage("Q1", "app@shop.test", (rcpt,), b"x", "<m@x>", T0, T0 + 86400)
    dispatcher.submit(await spool.store(message, inflight=True))
    for _ in range(400):  # the pump, the connection attempt and its failover: 2 s at most
        await asyncio.sleep(0.005)
        if dispatcher.held == 0 and dispatcher.active == 0:
            break
    else:
        raise AssertionError(f"the job was not settled: {dispatcher!r}")
    await dispatcher.stop(grace=0)
    dispatcher.log.close()
    return spool


def test_no_member_under_its_cap_waits_in_the_spool_without_an_attempt(tmp_path: Path) -> None:
    async def run() -> None:
        clock = FakeClock(T0)
        state, gate = _gate(tmp_path, clock)
        assert state.take("new", "other", 1, clock.wall())[0] is None
        spool = await _dispatch(tmp_path, member("new", clock), clock, gate)
        view = await spool.get("Q1")
        await spool.close()
        assert view is not None
        (r,) = view.recipients
        assert r.state is RecipientState.DEFERRED and r.attempts == 0
        assert r.last_response == "no member available (new: warm-up cap 1/1 for other (day 1))"
        assert r.next_attempt == T0 + 86400  # not before the cap frees: the next UTC day
        state.close()

    asyncio.run(run())


def test_a_reservation_is_given_back_when_nothing_was_sent(tmp_path: Path) -> None:
    async def run() -> None:
        clock = FakeClock(T0)
        state, gate = _gate(tmp_path, clock, cap=5)
        new = member("new", clock)
        new.reconfigure(new.config.__class__("new", relay=f"127.0.0.1:{free_port()}"))
        spool = await _dispatch(tmp_path, new, clock, gate)
        view = await spool.get("Q1")
        await spool.close()
        assert view is not None
        (r,) = view.recipients
        assert r.state is RecipientState.DEFERRED  # refused, failed over, no member left
        assert state.status("new", "other", clock.wall()).sent == 0
        state.close()

    asyncio.run(run())
