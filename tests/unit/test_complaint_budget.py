"""The complaint budget per sender domain: the pure decisions, and the counts shared by
two workers through the SQLite store, on the fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtplb.clock import FakeClock
from smtplb.config import parse_config
from smtplb.reputation.complaint_budget import (
    OK,
    STOPPED,
    THROTTLED,
    BudgetPolicy,
    ComplaintBudget,
    DomainBudget,
    budget_state,
    compliance_view,
    holds,
)
from smtplb.reputation.complaint_store import SqliteBudgetStore

POLICY = BudgetPolicy(window=86400, min_volume=50, throttle=0.001, stop=0.0025)


@pytest.mark.parametrize(
    ("delivered", "complaints", "state"),
    [
        (49, 10, OK),  # under min_volume: no decision
        (10_000, 9, OK),  # 0.09 %
        (10_000, 10, THROTTLED),  # 0.1 %: the throttle point is included
        (10_000, 24, THROTTLED),  # 0.24 %
        (10_000, 25, STOPPED),  # 0.25 %: stopped before Gmail's 0.3 %
        (1_000, 3, STOPPED),  # 0.3 %
        (0, 0, OK),
    ],
)
def test_state_from_the_window_counts(delivered: int, complaints: int, state: str) -> None:
    assert budget_state(delivered, complaints, POLICY) == state


def test_transactional_mail_is_never_held_and_throttled_sends_every_second() -> None:
    for state in (OK, THROTTLED, STOPPED):
        assert not any(holds(state, "transactional", turn) for turn in range(4))
    assert [holds(THROTTLED, "marketing", t) for t in range(4)] == [False, True, False, True]
    assert all(holds(STOPPED, "bulk", t) for t in range(4))
    assert not any(holds(OK, "marketing", t) for t in range(4))


def _budget(
    path: Path, clock: FakeClock, changes: list[DomainBudget] | None = None
) -> ComplaintBudget:
    on_change = changes.append if changes is not None else None
    return ComplaintBudget(SqliteBudgetStore(path), POLICY, clock, on_change, refresh=1.0)


def test_two_workers_share_counts_and_one_reports_each_change(tmp_path: Path) -> None:
    clock = FakeClock(start=1_000_000_000.0)
    changes: list[DomainBudget] = []
    worker0 = _budget(tmp_path / "c.sqlite", clock, changes)
    worker1 = _budget(tmp_path / "c.sqlite", clock, changes)
    worker1.delivered("shop.test", "marketing", 600)
    worker1.delivered("shop.test", "transactional", 5000)  # not in the budget
    worker0.delivered("shop.test", "bulk", 400)
    worker0.flush()
    worker1.flush()
    worker0.complaint("shop.test", "marketing")
    worker0.complaint("shop.test", "transactional")  # not counted
    clock.advance(1.0)
    assert worker1.hold("shop.test", "marketing") is None  # 1 of 1,000: 0.1 % → throttled…
    reason = worker1.hold("shop.test", "marketing")  # …so every second one waits
    assert reason is not None and "throttled to half share" in reason
    assert worker0.hold("shop.test", "marketing") is None
    assert [(c.domain, c.state) for c in changes] == [("shop.test", THROTTLED)]
    worker0.complaint("shop.test", None)  # unmatched: class unknown, counted
    worker0.complaint("shop.test", "marketing")
    clock.advance(1.0)
    reason = worker1.hold("shop.test", "bulk")
    assert reason is not None and "stopped, 0.30 % complaints (3 of 1,000 delivered)" in reason
    assert worker1.hold("shop.test", "transactional") is None
    assert worker0.hold("shop.test", "marketing") is not None
    assert [(c.domain, c.state) for c in changes][1:] == [("shop.test", STOPPED)]
    assert changes[-1].rate == pytest.approx(0.003)

    # a restart keeps the counts (and does not report the state again)
    worker1.close()
    again = _budget(tmp_path / "c.sqlite", clock, changes)
    assert again.hold("shop.test", "marketing") is not None
    assert len(changes) == 2

    # the window rolls: the counts leave it, the mail goes, the change is reported once
    clock.advance(POLICY.window)
    assert again.hold("shop.test", "marketing") is None
    assert worker0.hold("shop.test", "marketing") is None
    assert [(c.domain, c.state) for c in changes][2:] == [("shop.test", OK)]
    assert again.store.counts(0) == {}  # the buckets that left the window are gone
    worker0.close()
    again.close()


def test_an_operator_lift_lets_the_mail_go_until_it_ends(tmp_path: Path) -> None:
    clock = FakeClock(start=1_000_000_000.0)
    budget = _budget(tmp_path / "c.sqlite", clock)
    budget.delivered("shop.test", "marketing", 100)
    budget.complaint("shop.test", "marketing")
    clock.advance(1.0)
    assert budget.hold("shop.test", "marketing") is not None
    budget.lift("Shop.TEST", clock.wall() + 3600)
    assert budget.hold("shop.test", "marketing") is None
    view = budget.standing()["shop.test"].to_json()
    assert view["state"] == OK and view["complaints"] == 1 and view["lifted_until"]
    clock.advance(3601)
    assert budget.hold("shop.test", "marketing") is not None
    budget.reconfigure(BudgetPolicy(min_volume=50, throttle=0.01, stop=0.02))  # a reload
    assert budget.standing()["shop.test"].state == THROTTLED  # 1 %
    assert repr(budget) == "ComplaintBudget(1 domains, 1 over budget)"
    budget.close()


def test_the_compliance_view_lists_the_domains_highest_rate_first(tmp_path: Path) -> None:
    config = parse_config({})
    off = compliance_view(config, None)["complaint_budget"]
    assert off["enabled"] is False and off["domains"] == []
    clock = FakeClock(start=1_000_000_000.0)
    budget = _budget(tmp_path / "c.sqlite", clock)
    budget.delivered("calm.test", "marketing", 1000)
    budget.delivered("shop.test", "marketing", 100)
    budget.complaint("shop.test", "marketing")
    clock.advance(1.0)
    view = compliance_view(config, budget)
    on = view["complaint_budget"]
    assert on["enabled"] is True and on["window"] == float(config.reputation.window)
    assert [d["domain"] for d in on["domains"]] == ["shop.test", "calm.test"]
    assert view["list_unsubscribe"] == config.compliance.list_unsubscribe
    budget.close()
