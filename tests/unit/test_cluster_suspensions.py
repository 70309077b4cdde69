"""Suspensions told across nodes: the wire format (smtplb.cluster.suspensions) and
what a worker does with one it is told (Shaping.apply). Pure; no Redis."""

from __future__ import annotations

from smtplb.clock import FakeClock
from smtplb.cluster.suspensions import decode, encode
from smtplb.reputation.rules import RuleBook
from smtplb.reputation.shaping import Shaping
from smtplb.routing.providers import ProviderTable


def test_a_suspension_survives_the_wire() -> None:
    field, value = encode("ip-2", "gmail", 1_780_000_123.25, "gmail-4.7.28")
    assert decode(field, value) == ("ip-2", "gmail", 1_780_000_123.25, "gmail-4.7.28")
    field, value = encode(None, "yahoo", 5.0, "a|rule|with|bars")
    assert decode(field, value) == (None, "yahoo", 5.0, "a|rule|with|bars")


class Announced:
    def __init__(self) -> None:
        self.told: list[tuple[str | None, str, float, str]] = []

    def announce(self, member: str | None, provider: str, until: float, rule: str) -> None:
        self.told.append((member, provider, until, rule))


def test_a_told_suspension_holds_here_and_the_longer_one_wins() -> None:
    clock = FakeClock()
    shaping = Shaping(ProviderTable.build([]), RuleBook([]), clock)
    wall = clock.wall()
    shaping.apply("ip-2", "gmail", wall + 600, "gmail-4.7.28")
    assert "until" in (shaping.suspended("ip-2", "gmail", clock.monotonic()) or "")
    assert shaping.suspended("ip-3", "gmail", clock.monotonic()) is None
    shaping.apply("ip-2", "gmail", wall + 60, "shorter")  # does not shorten it
    assert shaping.lanes[("ip-2", "gmail")].suspended_rule == "gmail-4.7.28"
    shaping.apply("ip-3", "gmail", wall - 1, "over")  # already ended: nothing
    assert ("ip-3", "gmail") not in shaping.lanes
    shaping.apply(None, "yahoo", wall + 60, "yahoo-tss04")
    assert "all members" in (shaping.suspended("ip-3", "yahoo", clock.monotonic()) or "")
    clock.advance(601)
    assert shaping.suspended("ip-2", "gmail", clock.monotonic()) is None


def test_a_suspension_fired_here_is_announced_with_its_wall_time() -> None:
    from smtplb.smtp.reply import Reply

    clock = FakeClock()
    bus = Announced()
    shaping = Shaping(ProviderTable.build([]), RuleBook([]), clock, bus=bus)
    fired = shaping.on_reply("ip-2", "gmail", Reply(421, "4.7.28", "rate limited"), 0.0)
    assert fired is not None and fired.new
    assert bus.told == [("ip-2", "gmail", shaping.wall(fired.until), fired.rule.name)]
    shaping.on_reply("ip-2", "gmail", Reply(421, "4.7.28", "rate limited"), 0.0)
    assert len(bus.told) == 1  # already in force: not told again


def test_member_flags_survive_the_wire_and_nonsense_is_refused() -> None:
    import pytest

    from smtplb.cluster import members

    assert members.decode(*members.encode("paused", "ip-2", True)) == ("paused", "ip-2", True)
    assert members.decode(*members.encode("quarantined", "a|b", False)) == (
        "quarantined",
        "a|b",
        False,
    )
    for field, value in (("frozen|ip-2", "1"), ("paused|", "1"), ("paused|ip-2", "yes")):
        with pytest.raises(ValueError):
            members.decode(field, value)
