"""AuthThrottle: failed-AUTH delays and lockout per IP and per user, on a fake clock."""

from __future__ import annotations

from smtplb.clock import FakeClock
from smtplb.intake.auth import AuthThrottle, AuthVerdict


def make(**kwargs: float) -> tuple[AuthThrottle, FakeClock]:
    clock = FakeClock()
    options: dict[str, float] = {
        "max_failures": 5,
        "lockout": 600.0,
        "delay": 1.0,
        "max_delay": 4.0,
    }
    options.update(kwargs)
    return AuthThrottle(clock, **options), clock  # type: ignore[arg-type]


def fail(throttle: AuthThrottle, ip: str, user: str) -> tuple[AuthVerdict, bool]:
    verdict = throttle.begin(ip, user)
    assert not verdict.locked_for
    return verdict, throttle.end(ip, user, False)


def test_delay_doubles_with_failures_up_to_a_cap_then_lockout() -> None:
    throttle, _ = make()
    delays, locks = [], []
    for _ in range(5):
        verdict, locked = fail(throttle, "192.0.2.1", "alice")
        delays.append(verdict.delay)
        locks.append(locked)
    assert delays == [0.0, 1.0, 2.0, 4.0, 4.0]
    assert locks == [False, False, False, False, True]
    refused = throttle.begin("192.0.2.1", "alice")
    assert refused.locked_for == 600.0
    assert "1 locked out" in repr(throttle)


def test_lockout_refuses_even_the_right_password_from_that_ip_only() -> None:
    throttle, clock = make()
    for _ in range(5):
        fail(throttle, "192.0.2.1", "alice")
    clock.advance(10)
    assert throttle.begin("192.0.2.1", "alice").locked_for == 590.0
    # Another IP is not locked out, nor slowed by one IP's worth of failures.
    other = throttle.begin("198.51.100.7", "alice")
    assert other == AuthVerdict(delay=0.0)
    assert throttle.end("198.51.100.7", "alice", True) is False


def test_lockout_ends_and_the_slate_is_clean_afterwards() -> None:
    throttle, clock = make()
    for _ in range(5):
        fail(throttle, "192.0.2.1", "alice")
    clock.advance(599)
    assert throttle.begin("192.0.2.1", "alice").locked_for == 1.0
    clock.advance(1)
    assert throttle.begin("192.0.2.1", "alice") == AuthVerdict(delay=0.0)
    throttle.end("192.0.2.1", "alice", None)
    assert throttle.failures("192.0.2.1", "alice") == (0, 0)


def test_failures_are_forgotten_after_a_quiet_lockout_period() -> None:
    throttle, clock = make()
    for _ in range(3):
        fail(throttle, "192.0.2.1", "alice")
    assert throttle.failures("192.0.2.1", "alice") == (3, 3)
    clock.advance(599)
    assert throttle.begin("192.0.2.1", "alice").delay == 4.0
    throttle.end("192.0.2.1", "alice", None)
    clock.advance(1)
    assert throttle.begin("192.0.2.1", "alice").delay == 0.0


def test_user_failures_from_many_ips_slow_that_user_but_never_lock_it() -> None:
    throttle, _ = make()
    delays = [fail(throttle, f"203.0.113.{i}", "alice")[0].delay for i in range(8)]
    assert delays == [0.0] * 6 + [1.0, 2.0]  # free for max_failures, then growing
    for i in range(8, 50):  # a distributed attack: one guess per address
        fail(throttle, f"203.0.113.{i}", "alice")
    assert throttle.failures("203.0.113.99", "alice") == (0, 50)
    verdict = throttle.begin("203.0.113.99", "alice")
    assert verdict == AuthVerdict(delay=4.0)
    throttle.end("203.0.113.99", "alice", True)
    # Other users are not slowed by alice's failures.
    assert throttle.begin("203.0.113.99", "bob") == AuthVerdict(delay=0.0)


def test_a_recent_login_is_not_slowed_and_does_not_reset_the_ip_count() -> None:
    throttle, _ = make()
    ip = "192.0.2.1"
    assert throttle.begin(ip, "mallory").delay == 0.0
    throttle.end(ip, "mallory", True)  # the attacker's own account
    for _ in range(3):
        fail(throttle, ip, "alice")
    assert throttle.begin(ip, "mallory").delay == 0.0  # trusted pair
    throttle.end(ip, "mallory", True)
    assert throttle.failures(ip, "alice") == (3, 3)  # not wiped by the login
    assert throttle.begin(ip, "alice").delay == 4.0
    assert throttle.end(ip, "alice", False) is False
    assert throttle.end(ip, "alice", False) is True  # the fifth failure locks
    assert throttle.begin(ip, "mallory").locked_for == 600.0  # locked for all


def test_parallel_attempts_cannot_overshoot_the_limit() -> None:
    throttle, _ = make()
    ip = "192.0.2.1"
    for _ in range(3):
        fail(throttle, ip, "alice")
    first = throttle.begin(ip, "alice")
    second = throttle.begin(ip, "alice")
    third = throttle.begin(ip, "alice")
    assert not first.locked_for and not second.locked_for
    assert third.locked_for == 4.0  # 3 failures + 2 in flight reach 5
    throttle.end(ip, "alice", True)
    throttle.end(ip, "alice", None)
    assert not throttle.begin(ip, "alice").locked_for


def test_memory_is_bounded() -> None:
    throttle, _ = make(max_entries=100)
    for i in range(1000):
        fail(throttle, f"10.0.{i // 256}.{i % 256}", f"user{i}")
        throttle.begin(f"10.1.{i // 256}.{i % 256}", "x")
        throttle.end(f"10.1.{i // 256}.{i % 256}", "x", True)
    assert len(throttle._ips) <= 100 and len(throttle._users) <= 100
    assert len(throttle._trusted) <= 100
