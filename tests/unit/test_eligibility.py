"""Member eligibility, selection, results and health on a fake clock (no sockets, no sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtplb.balancing import PickRequest, make_strategy
from smtplb.balancing.eligibility import (
    EXCLUDE,
    Eligibility,
    MemberView,
    down,
    ejected,
    failed_this_attempt,
    over_connection_limit,
    paused,
)
from smtplb.balancing.health import ActiveHealth, HealthState, PassiveHealth, may_eject
from smtplb.clock import FakeClock
from smtplb.config import HealthConfig, MemberConfig, PoolConfig
from smtplb.delivery.connection import ConnectionSettings
from smtplb.delivery.health_check import HealthChecker
from smtplb.delivery.member import AttemptResult, Member
from smtplb.delivery.pools import ROTATE_ABOVE, Choice, Job, PoolRuntime, no_member_reply
from smtplb.model import RecipientState
from smtplb.spool.base import ClaimedMessage, ClaimedRecipient

REQ = PickRequest()
DELIVERED = AttemptResult([RecipientState.DELIVERED], answered=True, seconds=0.1, accepted=True)
REFUSED = AttemptResult(failure="refused", seconds=0.01)


def member(
    name: str,
    clock: FakeClock,
    *,
    max_connections: int = 2,
    fall: int = 3,
    slow_start: float = 0.0,
    weight: int = 1,
) -> Member:
    return Member(
        MemberConfig(name, relay="127.0.0.1:2525", max_connections=max_connections, weight=weight),
        "main",
        ConnectionSettings("lb.test"),
        PassiveHealth(fall=fall, base_ejection=10, max_ejection=25),
        ActiveHealth(rise=2, fall=2),
        clock=clock,
        slow_start=slow_start,
    )


def pool(strategy: str, members: list[Member], **config: str) -> PoolRuntime:
    pc = PoolConfig(
        "main",
        strategy,
        members=[m.config for m in members],
        **config,  # type: ignore[arg-type]
    )
    return PoolRuntime(pc, members, make_strategy(pc))


def job(domain: str = "example.org", client_ip: str = "") -> Job:
    msg = ClaimedMessage(
        1, "Q1", "app@shop.test", "<m@x>", b"", 0.0, 9e9, "transactional", False, [], client_ip
    )
    rcpts = [ClaimedRecipient(1, f"a@{domain}", "main", 1, 0)]
    return Job(msg, rcpts, "main", 1, domain)


def name_of(choice: Choice) -> str:
    assert choice.member is not None
    return choice.member.name


def start_and_record(m: Member, result: AttemptResult, clock: FakeClock) -> object:
    m.start(clock.monotonic())
    return m.record(result, clock.monotonic())


# -- each filter ---------------------------------------------------------------------


def test_each_filter_names_its_reason() -> None:
    clock = FakeClock()
    now = clock.monotonic()
    m = member("m1", clock, max_connections=2)
    assert all(f(m, REQ, now) is None for f in (*EXCLUDE, over_connection_limit))

    assert failed_this_attempt(m, PickRequest(tried={"m1"}), now) == "failed this attempt"
    m.paused = True
    assert paused(m, REQ, now) == "paused"
    m.paused = False

    m.record_check(False, "refused", now)
    assert down(m, REQ, now) is None  # one bad check of fall=2
    m.record_check(False, "refused", now)
    assert down(m, REQ, now) == "down (health checks: refused)"
    m.record_check(True, "ok", now)  # one good check of rise=2: still down, for the same reason
    assert down(m, REQ, now) == "down (health checks: refused)"

    m.active = 2
    assert over_connection_limit(m, REQ, now) == "busy (all 2 connections in use)"
    m.active = 1
    assert over_connection_limit(m, REQ, now) is None


def test_after_a_failure_one_delivery_at_a_time_until_a_success() -> None:
    clock = FakeClock()
    m = member("m1", clock, max_connections=10)
    start_and_record(m, REFUSED, clock)
    m.start(clock.monotonic())
    reason = over_connection_limit(m, REQ, clock.monotonic())
    assert reason == "busy (one delivery at a time since a failure)"
    m.record(DELIVERED, clock.monotonic())
    m.active = 5
    assert over_connection_limit(m, REQ, clock.monotonic()) is None


def test_filters_are_queries_that_change_nothing() -> None:
    clock = FakeClock()
    m = member("m1", clock, fall=1)
    start_and_record(m, REFUSED, clock)
    assert m.health.state is HealthState.EJECTED
    clock.advance(60)
    for _ in range(3):
        assert ejected(m, REQ, clock.monotonic()) is None  # the ejection has run out…
    assert m.health.state is HealthState.EJECTED  # …but only a start moves the state
    assert m.state == "half_open"  # what operators see is the state at the clock's now


# -- ejection on the clock -----------------------------------------------------------


def test_ejection_grows_with_each_ejection_and_is_capped() -> None:
    clock = FakeClock()
    m = member("m1", clock, fall=3)
    for _ in range(2):
        assert start_and_record(m, REFUSED, clock) is None
    t = start_and_record(m, REFUSED, clock)
    assert t is not None and t.event == "member_ejected"  # type: ignore[attr-defined]
    durations = []
    for _ in range(4):
        start = clock.monotonic()
        while ejected(m, REQ, clock.monotonic()) is not None:
            reason = ejected(m, REQ, clock.monotonic())
            assert reason is not None and reason.startswith("ejected for ")
            clock.advance(0.5)
        durations.append(clock.monotonic() - start)
        start_and_record(m, REFUSED, clock)  # the half-open probe fails: ejected again
    assert durations == [10.0, 20.0, 25.0, 25.0]  # base × ejections, capped at max_ejection
    assert m.counters.failures == 7


def test_half_open_lets_one_probe_through_and_a_success_closes_the_circuit() -> None:
    clock = FakeClock()
    m = member("m1", clock, fall=1, slow_start=30)
    start_and_record(m, REFUSED, clock)
    clock.advance(10)
    m.start(clock.monotonic())  # the probe
    assert ejected(m, REQ, clock.monotonic()) == "half-open: its probe delivery is under way"
    t = m.record(DELIVERED, clock.monotonic())
    assert t is not None and t.event == "member_up" and m.health.state is HealthState.UP
    # Slow start: the share grows linearly with the clock from the recovery on.
    ramps = []
    for _ in range(4):
        ramps.append(round(m.ramp_at(clock.monotonic()), 3))
        clock.advance(10)
    assert ramps == [0.05, 0.333, 0.667, 1.0]
    assert m.counters.delivered == 1 and m.counters.failures == 1


def test_ejections_are_forgiven_after_staying_up() -> None:
    clock = FakeClock()
    m = member("m1", clock, fall=1)
    start_and_record(m, REFUSED, clock)
    clock.advance(10)
    start_and_record(m, DELIVERED, clock)
    clock.advance(25)  # up for max_ejection: earlier ejections forgotten
    start_and_record(m, REFUSED, clock)
    assert m.health.ejected_until == clock.monotonic() + 10


def test_max_ejection_percent_keeps_part_of_the_pool_in() -> None:
    assert [may_eject(n, 4, 50) for n in range(4)] == [True, True, False, False]
    assert may_eject(0, 1, 50) and not may_eject(1, 1, 50)  # at least one may go
    clock = FakeClock()
    members = [member(f"m{i}", clock, fall=1) for i in range(4)]
    p = pool("round_robin", members)
    events = []
    for m in members:
        m.start(clock.monotonic())
        t = p.record(m, REFUSED, clock.monotonic(), max_ejection_percent=50)
        events.append(t.event if t else None)
    assert events == ["member_ejected", "member_ejected", None, None]
    assert [m.health.state.value for m in members] == ["ejected", "ejected", "up", "up"]
    assert all(m.counters.failures == 1 for m in members)


def test_record_counts_each_recipient_and_leaves_health_alone_when_nothing_was_sent() -> None:
    clock = FakeClock()
    m = member("m1", clock, fall=1)
    states = [RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.DEFERRED]
    start_and_record(m, AttemptResult(states, answered=True), clock)
    start_and_record(m, AttemptResult([RecipientState.DEFERRED]), clock)  # no MX: not its fault
    c = m.counters
    assert (c.attempts, c.delivered, c.bounced, c.deferred, c.failures) == (4, 1, 1, 2, 0)
    assert m.health.state is HealthState.UP and m.active == 0


# -- selection -----------------------------------------------------------------------


def test_choose_skips_excluded_members_and_says_why() -> None:
    clock = FakeClock()
    a, b, c, d = (member(n, clock, fall=1) for n in "abcd")
    p = pool("round_robin", [a, b, c, d])
    a.paused = True
    start_and_record(b, REFUSED, clock)  # ejected
    j = job()
    j.tried.add("d")
    choice = p.choose(j, clock.monotonic())
    assert choice.member is c
    assert [name for name, _ in choice.selection.reasons(c)] == ["a", "b", "d"]  # pool order
    assert dict(choice.selection.reasons(c)) == {
        "a": "paused",
        "b": "ejected for 10s more (refused)",
        "d": "failed this attempt",
    }
    # Every member excluded: nobody is chosen and the job does not wait in its lane.
    j.tried.add("c")
    choice = p.choose(j, clock.monotonic())
    assert choice.member is None and not choice.waits
    assert no_member_reply(choice.selection).text == (
        "no member available (a: paused; b: ejected for 10s more (refused); "
        "c: failed this attempt; d: failed this attempt)"
    )


def test_busy_members_stay_candidates_so_the_job_waits() -> None:
    clock = FakeClock()
    a, b = member("a", clock, max_connections=1), member("b", clock, max_connections=1)
    p = pool("round_robin", [a, b])
    first = p.choose(job(), clock.monotonic()).member
    assert first is not None
    first.start(clock.monotonic())
    second = p.choose(job(), clock.monotonic())
    assert second.member is not None and second.member is not first
    assert second.selection.reasons(second.member) == (
        (first.name, "busy (all 1 connections in use)"),
    )
    second.member.start(clock.monotonic())
    both_busy = p.choose(job(), clock.monotonic())
    assert both_busy.member is None and both_busy.waits


def test_failover_waits_for_a_busy_primary_rather_than_spilling() -> None:
    clock = FakeClock()
    primary, backup = member("primary", clock, max_connections=1), member("backup", clock)
    p = pool("failover", [primary, backup])
    primary.start(clock.monotonic())
    assert p.choose(job(), clock.monotonic()).waits
    primary.paused = True
    assert p.choose(job(), clock.monotonic()).member is backup


def test_round_robin_spreads_and_follows_the_slow_start_ramp_on_the_clock() -> None:
    clock = FakeClock()
    members = [member(n, clock, slow_start=100) for n in "abc"]
    p = pool("round_robin", members)
    members[2].start_ramp()
    picks: Counter[str] = Counter()
    for _ in range(3000):
        chosen = p.choose(job(), clock.monotonic()).member
        assert chosen is not None
        picks[chosen.name] += 1
    assert picks["c"] < 100  # 5 % of a share while ramping from the start
    clock.advance(100)
    picks = Counter(p.choose(job(), clock.monotonic()).member.name for _ in range(300))  # type: ignore[union-attr]
    assert picks == {"a": 100, "b": 100, "c": 100}


def test_hash_on_client_ip_spreads_clients_and_keeps_each_on_its_member() -> None:
    clock = FakeClock()
    members = [member(n, clock) for n in ("m1", "m2", "m3")]
    p = pool("hash", members, hash_key="client_ip")
    owner = {}
    for i in range(1, 13):
        ip = f"127.0.0.{i}"
        chosen = {name_of(p.choose(job(f"d{k}.test", ip), clock.monotonic())) for k in range(5)}
        assert len(chosen) == 1  # one client, one member, whatever the recipient domain
        owner[ip] = chosen.pop()
    assert len(set(owner.values())) == 3


def test_a_new_filter_is_one_more_function_in_the_list() -> None:
    quarantined = {"b"}

    def quarantine(m: MemberView, request: PickRequest, now: float) -> str | None:
        return "quarantined (complaint rate 0.4 % over 0.3 %)" if m.name in quarantined else None

    clock = FakeClock()
    a, b = member("a", clock), member("b", clock)
    p = pool("round_robin", [a, b])
    p.eligibility = Eligibility(exclude=(*EXCLUDE, quarantine))
    for _ in range(4):
        choice = p.choose(job(), clock.monotonic())
        assert choice.member is a
        assert choice.selection.reasons(a) == (
            ("b", "quarantined (complaint rate 0.4 % over 0.3 %)"),
        )
    assert p.any_available(clock.monotonic())


# -- active checks on the clock ------------------------------------------------------


def test_active_checks_run_on_the_clock_faster_while_a_change_is_pending() -> None:
    asyncio.run(_active_checks_on_the_clock())


async def _active_checks_on_the_clock() -> None:
    clock = FakeClock()
    m = member("m1", clock)
    results = iter([False, False, False, True, True, True])
    checked: list[float] = []
    probed = asyncio.Event()
    events: list[str] = []

    async def check(target: Member, timeout: float) -> tuple[bool, str]:
        checked.append(clock.monotonic())
        probed.set()
        return next(results), "refused"

    config = HealthConfig(interval=2.0, rise=2, fall=2)  # type: ignore[arg-type]
    checker = HealthChecker(
        config,
        lambda member, event, reason: events.append(event),
        clock=clock,
        rng=random.Random(0),
        check=check,
    )
    loop = asyncio.get_running_loop().create_task(checker._loop([m]))
    try:
        for _ in range(6):
            await asyncio.wait_for(probed.wait(), 5)
            probed.clear()
            assert clock.sleepers == 1  # the check ran to its sleep within one step
            clock.advance(3)
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
    assert events == ["member_down", "member_up"]
    assert len(checked) == 6
    assert m.checks.up and m.health.state is HealthState.UP
    # 2 s ± 10 % while steady, half of it while a change of state is pending.
    assert 1.8 <= checker.interval(m) <= 2.2
    m.checks.observe(False)
    assert 0.9 <= checker.interval(m) <= 1.1


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(
        ["round_robin", "weighted", "least_connections", "latency", "hash", "failover"]
    ),
    st.lists(
        st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.integers(0, 3)),
        min_size=1,
        max_size=5,
    ),
)
def test_the_chosen_member_passes_every_filter(
    strategy: str, states: list[tuple[bool, bool, bool, bool, int]]
) -> None:
    """Whatever the members' states: the chosen one passes every filter; a job waits
    only while some member is merely busy; every member has one verdict, in order."""
    clock = FakeClock()
    members = [member(f"m{i}", clock, max_connections=2, fall=1) for i in range(len(states))]
    j = job()
    for m, (is_paused, is_down, is_ejected, was_tried, active) in zip(members, states, strict=True):
        m.paused = is_paused
        if is_down:
            m.checks.up = False
        if is_ejected:
            start_and_record(m, REFUSED, clock)
        if was_tried:
            j.tried.add(m.name)
        m.active = active
    p = pool(strategy, members)
    now = clock.monotonic()
    choice = p.choose(j, now)
    assert [name for name, _ in choice.selection.verdicts] == [m.name for m in members]
    excluded = {m.name for m in members if p.eligibility.excluded(m, j.request, now)}
    busy = {m.name for m in members if p.eligibility.waits(m, j.request, now)}
    if choice.member is not None:
        assert choice.member.name not in excluded | busy
    elif choice.waits:
        assert excluded != {m.name for m in members} and busy
    else:
        assert excluded == {m.name for m in members}


def test_a_worker_that_does_not_check_follows_the_node_checkers_verdicts() -> None:
    from smtplb.delivery.health_check import follow, verdicts

    clock = FakeClock()
    checker, peer = member("a", clock, slow_start=10), member("a", clock, slow_start=10)
    for _ in range(2):
        checker.record_check(False, "refused", clock.monotonic())
    published = verdicts([checker])
    assert published == {"a": {"up": False, "reason": "refused"}}
    transition = follow(peer, published["a"], clock.monotonic())
    assert transition is not None and transition.event == "member_down"
    assert peer.state == "down" and peer.checks.last_failure == "refused"
    assert follow(peer, published["a"], clock.monotonic()) is None  # no change, no event
    clock.advance(5)
    back = follow(peer, {"up": True, "reason": "ok"}, clock.monotonic())
    assert back is not None and back.event == "member_up"
    assert peer.state == "up" and peer.weight_at(clock.monotonic()) < 1  # ramps up again


# -- large pools: round robin by rotation --------------------------------------------


def test_round_robin_in_a_large_pool_rotates_looking_at_few_members() -> None:
    clock = FakeClock()
    members = [member(f"m{i:02}", clock, fall=1) for i in range(ROTATE_ABOVE + 24)]
    p = pool("round_robin", members)
    looked: list[str] = []

    def counting(m: MemberView, request: PickRequest, now: float) -> str | None:
        looked.append(m.name)
        return None

    p.eligibility = Eligibility(exclude=(counting, *EXCLUDE))
    members[3].paused = True
    start_and_record(members[4], REFUSED, clock)  # ejected
    members[5].active = members[5].connection_limit  # busy
    usable = [m.name for m in members if m.name not in ("m03", "m04", "m05")]
    picks = [name_of(p.choose(job(), clock.monotonic())) for _ in range(2 * len(usable))]
    assert picks == usable * 2  # pool order, each usable member once per turn
    assert len(looked) == 2 * len(members)  # one look per member per turn, not per pick
    # The trace names the members passed over before the chosen one, with their reasons.
    choice = p.choose(job(), clock.monotonic())
    assert name_of(choice) == "m00"
    for _ in range(3):  # m01, m02, then m06
        choice = p.choose(job(), clock.monotonic())
    assert name_of(choice) == "m06"
    assert choice.selection.reasons(choice.member) == (
        ("m03", "paused"),
        ("m04", "ejected for 10s more (refused)"),
        ("m05", f"busy (all {members[5].connection_limit} connections in use)"),
    )


def test_a_large_pool_falls_back_to_the_scores_for_a_ramping_member_or_none_free() -> None:
    clock = FakeClock()
    members = [member(f"m{i:02}", clock, slow_start=100) for i in range(ROTATE_ABOVE + 4)]
    p = pool("round_robin", members)
    members[0].start_ramp()
    picks = Counter(name_of(p.choose(job(), clock.monotonic())) for _ in range(2000))
    assert picks["m00"] < 20  # 5 % of a share while ramping from the start
    assert min(picks[m.name] for m in members[1:]) >= 90
    for m in members:
        m.active = m.connection_limit
    assert p.choose(job(), clock.monotonic()).waits  # every member busy: the job waits


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.booleans(), st.booleans(), st.integers(0, 2)),
        min_size=ROTATE_ABOVE + 1,
        max_size=ROTATE_ABOVE + 8,
    ),
    st.integers(0, 100),
)
def test_a_rotation_pick_passes_every_filter_and_waits_as_a_full_one_does(
    states: list[tuple[bool, bool, bool, int]], cursor: int
) -> None:
    clock = FakeClock()
    members = [member(f"m{i}", clock, max_connections=2, fall=1) for i in range(len(states))]
    for m, (is_paused, is_down, is_ejected, active) in zip(members, states, strict=True):
        m.paused = is_paused
        m.checks.up = not is_down
        if is_ejected:
            start_and_record(m, REFUSED, clock)
        m.active = active
    p = pool("round_robin", members)
    p.strategy.cursor = cursor
    j, now = job(), clock.monotonic()
    choice = p.choose(j, now)
    excluded = {m.name for m in members if p.eligibility.excluded(m, j.request, now)}
    busy = {m.name for m in members if p.eligibility.waits(m, j.request, now)}
    free = [m for m in members if m.name not in excluded | busy]
    if free:
        # the first free member from the cursor on; those before it are the skipped ones
        start = cursor % len(members)
        first = next(m for m in members[start:] + members[:start] if m in free)
        assert choice.member is first
        assert all(why for _, why in choice.selection.reasons(first))
    else:
        assert choice.member is None and choice.waits == bool(busy - excluded)


def test_members_on_the_same_path_share_its_checks() -> None:
    asyncio.run(_shared_checks())


async def _shared_checks() -> None:
    clock = FakeClock()
    same = [member(f"s{i}", clock) for i in range(5)]  # all relay to 127.0.0.1:2525
    other = Member(
        MemberConfig("o", relay="127.0.0.1:2526"),
        "main",
        ConnectionSettings("lb.test"),
        PassiveHealth(),
        ActiveHealth(rise=2, fall=2),
        clock=clock,
    )
    probed: Counter[str] = Counter()

    async def check(target: Member, timeout: float) -> tuple[bool, str]:
        probed[str(target.config.relay)] += 1
        return False, "refused"

    events: list[tuple[str, str]] = []
    checker = HealthChecker(
        HealthConfig(interval=2.0, rise=2, fall=2),  # type: ignore[arg-type]
        lambda m, event, reason: events.append((m.name, event)),
        clock=clock,
        check=check,
    )
    task = asyncio.get_running_loop().create_task(checker.run(lambda: [*same, other]))
    try:
        for _ in range(6):
            for _ in range(20):  # let the loops run to their sleeps
                await asyncio.sleep(0)
            clock.advance(1.5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # one probe per path and round, whatever the number of members on it
    assert set(probed) == {"127.0.0.1:2525", "127.0.0.1:2526"}
    assert probed["127.0.0.1:2526"] >= 3
    assert abs(probed["127.0.0.1:2525"] - probed["127.0.0.1:2526"]) <= 1  # jitter
    assert not any(m.checks.up for m in [*same, other])
    assert sorted(events) == sorted((m.name, "member_down") for m in [*same, other])
