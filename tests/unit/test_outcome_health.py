from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from smtplb.balancing.health import HealthState, PassiveHealth
from smtplb.delivery.outcome import (
    Outcome,
    RetrySchedule,
    outcome_of,
    transaction_outcomes,
)
from smtplb.model import BounceKind, Reply, classify_reply


def test_classify_reply() -> None:
    assert classify_reply(Reply(250, "2.0.0", "ok")) is None
    assert classify_reply(Reply(550, "5.1.1", "User unknown")) is BounceKind.HARD
    assert classify_reply(Reply(550, "5.7.1", "blocked by policy")) is BounceKind.POLICY
    assert classify_reply(Reply(552, "5.2.2", "mailbox full")) is BounceKind.SOFT
    assert classify_reply(Reply(421, "4.7.28", "rate limited")) is BounceKind.TRANSIENT
    assert classify_reply(Reply(550, None, "No such user here")) is BounceKind.HARD
    assert outcome_of(Reply(451, "4.3.0", "")) is Outcome.DEFERRED
    assert outcome_of(Reply(554, "5.0.0", "")) is Outcome.BOUNCED


def test_transaction_outcomes() -> None:
    ok, data_ok = Reply(250, "2.1.5", "ok"), Reply(250, "2.0.0", "queued")
    unknown = Reply(550, "5.1.1", "unknown")
    assert transaction_outcomes(ok, [ok, unknown], data_ok) == [data_ok, unknown]
    mail_no = Reply(451, "4.3.0", "later")
    assert transaction_outcomes(mail_no, [ok, ok], None) == [mail_no, mail_no]
    data_no = Reply(554, "5.6.0", "content rejected")
    assert transaction_outcomes(ok, [ok], data_no) == [data_no]


@given(st.integers(min_value=1, max_value=200))
def test_backoff_grows_and_is_capped(attempts: int) -> None:
    sched = RetrySchedule(base=60, maximum=3600, jitter=0.2)
    delay = sched.delay(attempts, random.Random(attempts))
    ideal = min(3600, 60 * 2 ** min(attempts - 1, 60))
    assert ideal * 0.8 <= delay <= ideal * 1.2
    assert RetrySchedule(60, 3600, 0).delay(attempts + 1) >= RetrySchedule(60, 3600, 0).delay(
        attempts
    )


def test_passive_health_ejects_after_fall_and_probes_half_open() -> None:
    h = PassiveHealth(fall=3, base_ejection=10, max_ejection=25)
    now = 100.0
    assert h.failure(now, "refused") is None
    assert h.failure(now, "refused") is None
    t = h.failure(now, "refused")
    assert t is not None and t.event == "member_ejected"
    assert h.state is HealthState.EJECTED and not h.available(now + 9.9)
    assert h.available(now + 10)  # half-open: one probe
    h.started(now + 10)
    assert not h.available(now + 10)  # the probe is out
    t = h.failure(now + 10, "refused")  # probe failed: longer ejection (2 × 10 s)
    assert t is not None and h.ejected_until == now + 30
    assert h.available(now + 30)
    h.started(now + 30)
    assert h.failure(now + 30, "timeout") is not None
    assert h.ejected_until == now + 30 + 25  # capped
    h.started(now + 55)
    up = h.success(now + 55)
    assert up is not None and up.event == "member_up" and h.state is HealthState.UP


def test_success_resets_consecutive_failures() -> None:
    h = PassiveHealth(fall=2)
    h.failure(0, "refused")
    h.success(0)
    assert h.failure(0, "refused") is None
    assert h.state is HealthState.UP
