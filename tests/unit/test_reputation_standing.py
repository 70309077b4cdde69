"""Reputation thresholds, quarantine and probation on a fake clock (no I/O)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from smtplb.balancing import PickRequest
from smtplb.clock import FakeClock
from smtplb.config import ReputationConfig
from smtplb.reputation.book import MEMBER_WIDE, Change, ReputationBook
from smtplb.reputation.standing import (
    Counts,
    Outcome,
    Reputation,
    Standing,
    Thresholds,
    Window,
    breach,
    next_standing,
)
from smtplb.units import Duration

T = Thresholds(min_volume=20, quarantine=60.0, probation=5)


def _counts(**kw: int) -> Counts:
    return Counts(**kw)


def test_no_decision_below_min_volume() -> None:
    assert breach(_counts(policy_block=19), T) is None
    state, why = breach(_counts(policy_block=1, delivered=19), T) or (None, "")
    assert state is Reputation.QUARANTINED and "policy_block rate 5.0%" in why


def test_hard_bounce_throttles_then_quarantines_and_complaints_count_per_delivery() -> None:
    assert breach(_counts(hard_bounce=1, delivered=19), T) == (
        Reputation.THROTTLED,
        "hard_bounce rate 5.0% >= 5.0% over 20 attempts",
    )
    found = breach(_counts(hard_bounce=2, delivered=18), T)
    assert found is not None and found[0] is Reputation.QUARANTINED
    assert breach(_counts(complaint=1, delivered=999), T) == (
        Reputation.THROTTLED,
        "complaint rate 0.1% >= 0.1% over 999 attempts",
    )


def test_the_state_machine() -> None:
    ok = Standing()
    bad = _counts(policy_block=5, delivered=15)
    q = next_standing(ok, bad, T, 100.0)
    assert (q.state, q.until) == (Reputation.QUARANTINED, 160.0)
    assert next_standing(q, Counts(), T, 159.0) is q
    p = next_standing(q, Counts(), T, 160.0)
    assert (p.state, p.probation_left) == (Reputation.PROBATION, 5)
    assert next_standing(p, bad, T, 161.0).state is Reputation.QUARANTINED
    done = next_standing(Standing(Reputation.PROBATION, 0, 0, 0), Counts(delivered=5), T, 170.0)
    assert done.state is Reputation.OK
    throttled = next_standing(ok, _counts(hard_bounce=1, delivered=19), T, 1.0)
    assert throttled.state is Reputation.THROTTLED
    assert next_standing(throttled, Counts(delivered=40), T, 2.0).state is Reputation.OK


def test_window_forgets_outcomes_older_than_the_window() -> None:
    w = Window(length=240.0)  # 24 slices of 10 s
    w.add(Outcome.POLICY, 0.0, 5)
    w.add(Outcome.DELIVERED, 235.0, 3)
    assert w.total(235.0).policy_block == 5
    assert w.total(245.0).policy_block == 0 and w.total(245.0).delivered == 3


@dataclass
class _M:
    name: str


def _book(clock: FakeClock) -> tuple[ReputationBook, list[Change]]:
    config = ReputationConfig(min_volume=20, quarantine=Duration(60), probation=5)
    book = ReputationBook(config, clock)
    changes: list[Change] = []
    book.on_change = changes.append
    return book, changes


def test_book_quarantines_a_member_for_one_provider_only_then_probation() -> None:
    clock = FakeClock(1000.0)
    book, changes = _book(clock)
    gmail, other = PickRequest(recipient_domain="gmail.com"), PickRequest("example.org")
    for _ in range(20):
        book.record("a", "gmail.com", Outcome.POLICY)
    assert [(c.member, c.provider, c.new.state) for c in changes] == [
        ("a", "gmail", Reputation.QUARANTINED)
    ]
    reason = book.skip_reason(_M("a"), gmail, 0.0)
    assert reason is not None and reason.startswith("quarantined for gmail (policy_block rate")
    assert book.skip_reason(_M("a"), other, 0.0) is None
    assert book.skip_reason(_M("b"), gmail, 0.0) is None
    assert book.view("a")["state"] == "quarantined"

    clock.advance(60)
    assert book.skip_reason(_M("a"), gmail, 0.0) is None
    assert changes[-1].new.state is Reputation.PROBATION
    assert book.share(_M("a"), gmail, 0.0) == 0.1
    for _ in range(4):
        book.record("a", "gmail.com", Outcome.DELIVERED)
    assert book.view("a")["providers"]["gmail"]["state"] == "probation"
    book.record("a", "gmail.com", Outcome.DELIVERED)
    assert book.view("a")["state"] == "ok" and book.share(_M("a"), gmail, 0.0) == 1.0


def test_book_survives_a_snapshot_and_operators_override() -> None:
    clock = FakeClock(1000.0)
    book, _ = _book(clock)
    for _ in range(10):
        book.record("a", "gmail.com", Outcome.HARD)
        book.record("a", "yahoo.com", Outcome.DELIVERED)
    restored, _ = _book(clock)
    restored.load(json.loads(json.dumps(book.snapshot())))
    assert restored.view("a") == book.view("a")
    assert restored.view("a")["providers"]["gmail"]["state"] == "ok"  # 10 < min_volume
    assert restored.view("a")["state"] == "quarantined"
    # across providers the member as a whole is judged too: 50 % hard bounces
    assert restored.standing("a", MEMBER_WIDE).state is Reputation.QUARANTINED
    restored.release("a")
    assert restored.view("a")["state"] == "ok"
    restored.quarantine("a")
    reason = restored.skip_reason(_M("a"), PickRequest("example.org"), 0.0)
    assert reason is not None and "by the operator" in reason
