from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from smtplb.balancing.health import HealthState, PassiveHealth
from smtplb.delivery.outcome import (
    RetrySchedule,
    next_state,
    transaction_outcomes,
)
from smtplb.model import RecipientState
from smtplb.smtp.reply import Reply
from smtplb.smtp.status import BounceKind, classify_reply


def test_classify_reply() -> None:
    assert classify_reply(Reply(250, "2.0.0", "ok")) is None
    assert classify_reply(Reply(550, "5.1.1", "User unknown")) is BounceKind.HARD
    assert classify_reply(Reply(550, "5.7.1", "blocked by policy")) is BounceKind.POLICY
    assert classify_reply(Reply(552, "5.2.2", "mailbox full")) is BounceKind.SOFT
    assert classify_reply(Reply(421, "4.7.28", "rate limited")) is BounceKind.TRANSIENT
    assert classify_reply(Reply(550, None, "No such user here")) is BounceKind.HARD


NO_JITTER = RetrySchedule(base=60, maximum=3600, jitter=0)
NOW = 1_000_000.0
DAY = 86400.0


def test_next_state_follows_the_reply_class() -> None:
    rng = random.Random(0)
    for reply, state in [
        (Reply(250, "2.0.0", "queued"), RecipientState.DELIVERED),
        (Reply(354, None, "go ahead"), RecipientState.DELIVERED),
        (Reply(550, "5.1.1", "unknown"), RecipientState.BOUNCED),
        (Reply(554, "5.0.0", ""), RecipientState.BOUNCED),
    ]:
        assert next_state(reply, 1, NOW, NOW + DAY, NO_JITTER, rng) == (state, 0.0)


def test_next_state_defers_by_the_retry_schedule() -> None:
    later = Reply(451, "4.3.0", "try later")
    rng = random.Random(0)
    expected = [60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]
    for attempt, delay in enumerate(expected, start=1):
        state, when = next_state(later, attempt, NOW, NOW + DAY, NO_JITTER, rng)
        assert (state, when - NOW) == (RecipientState.DEFERRED, delay)


def test_next_state_expires_when_the_next_try_would_be_too_late() -> None:
    later = Reply(421, "4.7.0", "busy")
    rng = random.Random(0)
    # The 3rd attempt's retry would come 240 s later: inside a 241 s lifetime, not a 240 s one.
    assert next_state(later, 3, NOW, NOW + 241, NO_JITTER, rng)[0] is RecipientState.DEFERRED
    assert next_state(later, 3, NOW, NOW + 240, NO_JITTER, rng) == (RecipientState.EXPIRED, 0.0)
    # A message already past its lifetime never defers, however early the attempt.
    assert next_state(later, 1, NOW, NOW - 1, NO_JITTER, rng)[0] is RecipientState.EXPIRED


@given(st.integers(min_value=1, max_value=30), st.integers(min_value=0, max_value=2**32))
def test_next_state_jitter_stays_within_its_share(attempt: int, seed: int) -> None:
    sched = RetrySchedule(base=60, maximum=3600, jitter=0.2)
    state, when = next_state(
        Reply(450, "4.2.1", "busy"), attempt, NOW, NOW + 30 * DAY, sched, random.Random(seed)
    )
    ideal = min(3600, 60 * 2 ** (attempt - 1))
    assert state is RecipientState.DEFERRED
    assert ideal * 0.8 <= when - NOW <= ideal * 1.2


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
