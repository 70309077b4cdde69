"""The lease arithmetic of the cluster backends (smtplb.cluster.lease): pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtplb.cluster.lease import (
    BLOCK,
    fallback_rate,
    fallback_share,
    lease_request,
    rate_lease,
    reconcile,
    wants_refill,
)


@pytest.mark.parametrize(
    ("remaining", "participants", "expected"),
    [
        (0, 1, 0),  # nothing left: ask for nothing
        (-3, 2, 0),
        (1000, 1, BLOCK),  # plenty: a full block
        (30, 2, 7),  # 30 / (2 × 2)
        (30, 1, BLOCK),
        (10, 3, 1),  # 10 / 6
        (3, 4, 1),  # fewer than 2 × participants: one at a time
        (1, 50, 1),
    ],
)
def test_lease_request(remaining: int, participants: int, expected: int) -> None:
    assert lease_request(remaining, participants) == expected


@given(st.integers(-10, 10_000), st.integers(1, 64))
def test_a_lease_never_asks_past_what_remains_nor_past_a_block(
    remaining: int, participants: int
) -> None:
    n = lease_request(remaining, participants)
    assert 0 <= n <= BLOCK
    assert n <= max(0, remaining)
    assert (n == 0) == (remaining <= 0)


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_leases_of_every_participant_at_once_stay_under_what_remains(
    remaining: int, participants: int
) -> None:
    # Each asks for its block from the same view: at most half of what remains goes
    # out in one round (one message each when fewer remain than participants).
    total = participants * lease_request(remaining, participants)
    assert total <= max(remaining // 2, participants if remaining else 0)


@pytest.mark.parametrize(
    ("remaining", "participants", "expected"),
    [
        (30, 1, 30),  # alone: all of it
        (30, 2, 11),  # (30 − 8) / 2
        (30, 3, 4),  # (30 − 16) / 3
        (14, 2, 3),
        (8, 2, 0),  # the other may hold all of it
        (0, 2, 0),
        (-5, 1, 0),
    ],
)
def test_fallback_share(remaining: int, participants: int, expected: int) -> None:
    assert fallback_share(remaining, participants) == expected


@given(st.integers(-10, 10_000), st.integers(1, 64))
def test_the_local_shares_of_all_participants_never_exceed_what_remained(
    remaining: int, participants: int
) -> None:
    assert participants * fallback_share(remaining, participants) <= max(0, remaining)


def test_rate_lease_is_a_quarter_second_within_the_burst() -> None:
    assert rate_lease(2.0, 4.0) == 1  # 120/m: one at a time
    assert rate_lease(100.0, 5.0) == 5  # capped by the burst
    assert rate_lease(16.0, 5.0) == 4
    assert rate_lease(0.01, 1.0) == 1
    assert fallback_rate(120 / 60, 3) == pytest.approx(2 / 3)
    assert fallback_rate(2.0, 0) == 2.0


def test_refill_at_half_and_reconcile() -> None:
    assert wants_refill(4, 8) and wants_refill(0, 1) and not wants_refill(5, 8)
    assert reconcile(12, 10) == 2  # used 2 while away
    assert reconcile(12, 0) == 12  # Redis restarted empty
    assert reconcile(5, 9) == 0  # never takes back
