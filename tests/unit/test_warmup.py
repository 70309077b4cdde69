"""Warm-up: the schedule, the closed loop over 30 days on a fake clock, the
shared counts (exact with two handles on one database, as two workers), the
eligibility filter and the replay."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest

from smtplb.balancing.base import PickRequest
from smtplb.balancing.eligibility import Eligibility
from smtplb.clock import FakeClock
from smtplb.reputation.warmup import (
    DAY,
    DEFAULT_SCHEDULE,
    DayOutcomes,
    Decision,
    Progress,
    Thresholds,
    WarmupPolicy,
    decide,
    default_schedule,
    plan,
    provider_of,
    roll,
    simulate,
)
from smtplb.reputation.warmup_gate import WarmupGate
from smtplb.reputation.warmup_store import SqliteWarmupState
from smtplb.smtp.reply import Reply

START = 20_000 * DAY + 8 * 3600  # 2024-10-04 08:00 UTC
SCHEDULE = (50, 70, 100, 140, 200, 280, 390, 550)


class _Member:
    def __init__(self, name: str) -> None:
        self.name = name


def test_default_schedule_grows_1_4_a_day_from_50_to_100000() -> None:
    s = DEFAULT_SCHEDULE
    assert s[:5] == (50, 70, 98, 137, 192)
    assert s[-1] == 100_000 and len(s) == len(set(s))
    assert all(1.3 <= b / a <= 1.41 for a, b in itertools.pairwise(s[:-1]))
    assert default_schedule(10, 2.0, 100) == (10, 20, 40, 80, 100)


def test_provider_stand_in_and_known_provider_first() -> None:
    assert provider_of("GMail.com") == "gmail"
    assert provider_of("example.org") == "other"
    assert provider_of("example.org", known="gmail") == "gmail"


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (DayOutcomes(100, delivered=100), ("warmup_advanced", 4)),
        (DayOutcomes(100, delivered=97, deferred=3), ("warmup_held", 3)),
        (DayOutcomes(100, delivered=89, deferred=11), ("warmup_stepped_back", 2)),
        (DayOutcomes(100, delivered=95, policy_blocked=5), ("warmup_stepped_back", 2)),
        (DayOutcomes(100, delivered=98, policy_blocked=2), ("warmup_held", 3)),
        (DayOutcomes(100, delivered=94, bounced=6), ("warmup_held", 3)),
        (DayOutcomes(1000, delivered=1000, complained=1), ("warmup_held", 3)),
        (DayOutcomes(1000, delivered=1000, complained=3), ("warmup_stepped_back", 2)),
    ],
)
def test_decide(day: DayOutcomes, expected: tuple[str, int]) -> None:
    event, step, _ = decide(3, day, Thresholds())
    assert (event, step) == expected


def test_roll_decides_once_per_day_and_not_on_a_day_without_traffic() -> None:
    policy = WarmupPolicy(SCHEDULE)
    p = Progress(2, 100, 100 * DAY)
    same, d = roll(p, 100, 100 * DAY + 5, DayOutcomes(10, 10), policy, "a", "gmail")
    assert same == p and d is None
    nxt, d = roll(p, 101, 101 * DAY, DayOutcomes(10, 10), policy, "a", "gmail")
    assert nxt.step == 3 and d is not None and d.event == "warmup_advanced"
    quiet, d = roll(p, 101, 101 * DAY, DayOutcomes(), policy, "a", "gmail")
    assert quiet.step == 2 and d is None


def _day(
    gate: WarmupGate, clock: FakeClock, member: str, domain: str, replies: list[Reply]
) -> tuple[int, str | None]:
    """Offer messages one by one until the cap refuses one; each taken message
    gets the next reply of ``replies`` (cycled)."""
    m = _Member(member)
    request = PickRequest(recipient_domain=domain)
    taken = 0
    while True:
        reason = gate(m, request, clock.monotonic())
        if reason is None:
            reason = gate.reserve(m, request, 1, clock.monotonic())
        if reason is not None:
            return taken, reason
        gate.record(member, request, [replies[taken % len(replies)]])
        taken += 1
        clock.advance(1)


OK = Reply(250, "2.0.0", "ok")
DEFER = Reply(451, "4.7.1", "try later")
BLOCK = Reply(550, "5.7.1", "blocked for poor reputation")


def test_thirty_days_on_a_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock(START)
    decisions: list[Decision] = []
    policy = WarmupPolicy(SCHEDULE + tuple(range(600, 3000, 100)), max_hourly_share=1.0)
    state = SqliteWarmupState(tmp_path / "warmup.sqlite", policy, {"new": None})
    gate = WarmupGate(state, clock, decisions.append, ["new"])
    caps = []
    # Days 1-4 clean: the cap follows the schedule, the day's excess is refused.
    for _ in range(4):
        taken, reason = _day(gate, clock, "new", "gmail.com", [OK])
        caps.append(taken)
        clock.advance(DAY - taken)
    assert caps == [50, 70, 100, 140]
    assert reason == "warm-up cap 140/140 for gmail (day 4)"
    assert [d.event for d in decisions] == ["warmup_advanced"] * 3
    # Day 5: 3 % deferrals (6 of 200) hold the step; day 6 sends 200 again.
    taken, _ = _day(gate, clock, "new", "gmail.com", [DEFER] + [OK] * 32)
    assert taken == 200
    clock.advance(DAY - taken)
    taken, _ = _day(gate, clock, "new", "gmail.com", [OK])
    assert taken == 200
    held = decisions[-1]
    assert held.event == "warmup_held" and held.day == 5
    assert held.rates["deferral"] == pytest.approx(7 / 200)
    assert "deferral rate at or over 2.0%" in held.text()
    clock.advance(DAY - taken)
    # Day 7 (clean day 6 advanced to warm-up day 6, cap 280): a policy-block breach.
    taken, _ = _day(gate, clock, "new", "gmail.com", [BLOCK] + [OK] * 9)
    assert taken == 280
    clock.advance(DAY - taken)
    status = state.status("new", "gmail", clock.wall())
    assert (status.day, status.cap) == (5, 200)  # seen before the day's first message
    taken, _ = _day(gate, clock, "new", "gmail.com", [OK])
    assert taken == 200
    back = decisions[-1]  # logged once, by the day's first take
    assert back.event == "warmup_stepped_back" and back.rates["policy_block"] == 0.1
    assert [d.event for d in decisions].count("warmup_stepped_back") == 1
    clock.advance(DAY - taken)
    # Another provider is counted apart: still day 1 for Yahoo.
    taken, reason = _day(gate, clock, "new", "yahoo.com", [OK])
    assert taken == 50 and reason == "warm-up cap 50/50 for yahoo (day 1)"
    # 30 days without traffic: warm-up starts again at day 1.
    clock.advance(30 * DAY)
    taken, reason = _day(gate, clock, "new", "gmail.com", [OK])
    assert taken == 50 and reason == "warm-up cap 50/50 for gmail (day 1)"
    assert (
        decisions[-1].event == "warmup_stepped_back" and "idle for 30 days" in decisions[-1].reason
    )
    assert gate.views("new") == {
        "gmail": {"day": 1, "cap": 50, "sent": 50},
        "yahoo": {"day": 1, "cap": 50, "sent": 0},
    }
    state.close()


def test_hourly_share_and_give_back(tmp_path: Path) -> None:
    clock = FakeClock(START)
    state = SqliteWarmupState(tmp_path / "w.sqlite", WarmupPolicy((100,), 0.2), {"new": None})
    gate = WarmupGate(state, clock, None, ["new"])
    m, req = _Member("new"), PickRequest(recipient_domain="x.test")
    for _ in range(20):
        assert gate.reserve(m, req, 1, 0) is None
    assert gate(m, req, 0) == "warm-up hourly cap 20/20 for other (day 1)"
    gate.release(m, req, 1, 0)  # not sent after all
    assert gate(m, req, 0) is None
    assert gate.reserve(m, req, 2, 0) == "warm-up hourly cap 19/20 for other (day 1)"
    clock.advance(3600)
    assert gate.reserve(m, req, 2, 0) is None
    assert state.status("new", "other", clock.wall()).sent == 21
    # A member that is not warming is never capped; past the schedule's end: warm.
    assert gate(_Member("old"), req, 0) is None
    state.close()


def test_configured_start_begins_later_in_the_schedule(tmp_path: Path) -> None:
    state = SqliteWarmupState(
        tmp_path / "w.sqlite", WarmupPolicy(SCHEDULE), {"a": int(START // DAY) - 3}
    )
    s = state.status("a", "gmail", START)
    assert (s.day, s.cap) == (4, 140)
    state.close()


def test_two_handles_never_take_over_the_cap(tmp_path: Path) -> None:
    """Two connections to one file (as two workers) racing for the last slots."""
    policy = WarmupPolicy((2000,), max_hourly_share=1.0)
    a = SqliteWarmupState(tmp_path / "w.sqlite", policy, {"new": None})
    b = SqliteWarmupState(tmp_path / "w.sqlite", policy, {"new": None})
    taken = [0, 0]
    start = threading.Barrier(2)

    def run(i: int, state: SqliteWarmupState) -> None:
        start.wait()
        while state.take("new", "gmail", 1, START)[0] is None:
            taken[i] += 1

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(taken) == 2000
    assert a.status("new", "gmail", START).sent == 2000
    a.close()
    b.close()


def test_eligibility_overflows_a_capped_member(tmp_path: Path) -> None:
    clock = FakeClock(START)
    state = SqliteWarmupState(tmp_path / "w.sqlite", WarmupPolicy((1,)), {"new": None})
    gate = WarmupGate(state, clock, None, ["new"])
    eligibility = Eligibility((gate,), (), reservers=(gate,))
    m = _Member("new")
    req = PickRequest(recipient_domain="gmail.com")
    assert eligibility.reserve(m, req, 1, 0) is None  # type: ignore[arg-type]
    assert eligibility.excluded(m, req, 0) == "warm-up cap 1/1 for gmail (day 1)"  # type: ignore[arg-type]
    state.close()


def test_plan_and_simulate() -> None:
    policy = WarmupPolicy((10, 20, 40), max_hourly_share=1.0)
    assert plan(policy, 0, 100) == [(100, 1, 10), (101, 2, 20), (102, 3, 40), (103, 4, None)]
    events = [(START + i, "new", "gmail", "delivered", 250, "2.0.0") for i in range(30)]
    events += [(START + DAY + i, "new", "gmail", "delivered", 250, "2.0.0") for i in range(30)]
    result = simulate(events, policy)
    assert result.sent[("new", "gmail")] == 10 + 20
    assert result.held[("new", "gmail")] == 20 + 10
    assert result.days[("new", "gmail")] == 2
    assert [d.event for d in result.decisions] == ["warmup_advanced"]


def test_without_its_database_only_warming_members_wait(tmp_path: Path) -> None:
    """The counts cannot be opened (here: no such directory; in production a full
    disk): warming members fail closed, every other member is unaffected."""
    clock = FakeClock(START)
    state = SqliteWarmupState(tmp_path / "missing" / "w.sqlite", WarmupPolicy((5,)), {"new": None})
    gate = WarmupGate(state, clock, None, ["new"])
    req = PickRequest(recipient_domain="gmail.com")
    assert (gate(_Member("new"), req, 0) or "").startswith("warm-up counts unavailable (")
    assert (gate.reserve(_Member("new"), req, 1, 0) or "").startswith("warm-up counts unavailable")
    assert gate(_Member("old"), req, 0) is None and gate.reserve(_Member("old"), req, 1, 0) is None
    assert gate.views("new") == {}
    gate.release(_Member("new"), req, 1, 0)  # logged, not raised
    gate.record("new", req, [OK])
    (tmp_path / "missing").mkdir()  # the disk has room again: it opens at the next use
    assert gate.reserve(_Member("new"), req, 1, 0) is None
    state.close()
