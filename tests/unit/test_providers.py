"""Providers, response rules and shaping per member x provider (issue 11), on a fake clock."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from smtplb.balancing.base import PickRequest
from smtplb.balancing.eligibility import OverProviderLimit, SuspendedForProvider
from smtplb.clock import FakeClock
from smtplb.config import ConfigError, parse_config
from smtplb.config_sections import ProviderConfig, ProviderRuleConfig
from smtplb.reputation.rules import BUILTIN_RULES, RuleBook, reply_line
from smtplb.reputation.shaping import Shaping, burst, throttle_factor, waits_for_provider
from smtplb.routing.providers import BUILTIN, ProviderTable
from smtplb.sink.profile import parse_reply
from smtplb.smtp.reply import Reply
from smtplb.units import Duration, parse_rate

DATA = Path(__file__).parent.parent / "data" / "provider_replies.toml"


def _replies() -> list[dict[str, Any]]:
    with DATA.open("rb") as f:
        return list(tomllib.load(f)["reply"])


# -- recognition -----------------------------------------------------------------------


def test_the_builtin_table_covers_the_large_providers() -> None:
    names = {p.name for p in BUILTIN}
    for want in ("gmail", "yahoo", "outlook", "office365", "icloud", "gmx", "mailru", "yandex",
                 "comcast", "att", "orange", "qq"):  # fmt: skip
        assert want in names


@pytest.mark.parametrize(
    ("domain", "provider"),
    [
        ("gmail.com", "gmail"),
        ("GoogleMail.com", "gmail"),
        ("aol.com", "yahoo"),
        ("hotmail.com", "outlook"),
        ("web.de", "gmx"),
        ("ya.ru", "yandex"),
        ("foxmail.com", "qq"),
        ("example.org", None),
    ],
)
def test_recognised_by_recipient_domain(domain: str, provider: str | None) -> None:
    assert ProviderTable.build().by_domain(domain) == provider


@pytest.mark.parametrize(
    ("hosts", "provider"),
    [
        (["aspmx.l.google.com."], "gmail"),
        (["mta5.am0.yahoodns.net"], "yahoo"),
        (["example-org.mail.protection.outlook.com"], "office365"),  # longest suffix wins
        (["hotmail-com.olc.protection.outlook.com"], "outlook"),
        (["mx01.mail.icloud.com"], "icloud"),
        (["mx.example.org", "alt1.aspmx.l.google.com"], "gmail"),  # first known, in order
        (["notgoogle.com"], None),  # a suffix matches whole labels only
        (["mx.example.org"], None),
    ],
)
def test_recognised_by_mx_suffix(hosts: list[str], provider: str | None) -> None:
    assert ProviderTable.build().by_mx(hosts) == provider


def test_configured_providers_add_and_replace_builtin_ones() -> None:
    table = ProviderTable.build(
        [
            ProviderConfig(name="gmail", domains=["gmail.test"], mx_suffixes=["google.test"],
                           max_connections=3, rate="120/m"),
            ProviderConfig(name="corp", domains=["corp.test"]),
        ]
    )  # fmt: skip
    assert table.by_domain("gmail.test") == "gmail"
    assert table.by_domain("gmail.com") is None  # replaced, not merged
    assert table.by_mx(["mx1.google.test"]) == "gmail"
    assert table.by_domain("corp.test") == "corp"
    gmail = table.get("gmail")
    assert gmail is not None and gmail.rate == 2.0 and gmail.max_connections == 3
    assert table.by_domain("yahoo.com") == "yahoo"  # the others stay


# -- rules -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _replies(), ids=lambda c: f"{c['provider']}:{c['line'][:20]}")
def test_builtin_rules_against_recorded_replies(case: dict[str, Any]) -> None:
    assert case["source"]
    reply = parse_reply(case["line"])
    rule = RuleBook().match(case["provider"], reply)
    assert (rule.name if rule else "") == case["rule"]


def test_every_builtin_rule_has_a_recorded_reply() -> None:
    covered = {c["rule"] for c in _replies()}
    assert {r.name for r in BUILTIN_RULES} - covered <= {"office365-4.7.650"}


def test_configured_rules_come_before_builtin_ones_and_positive_replies_never_match() -> None:
    book = RuleBook(
        [
            ProviderConfig(
                name="gmail",
                rules=[ProviderRuleConfig(match=r"4\.7\.28", action="suspend_provider",
                                          duration=Duration(60), name="mine")],
            )
        ]
    )  # fmt: skip
    rule = book.match("gmail", Reply(421, "4.7.28", "slow down"))
    assert rule is not None and rule.name == "mine" and rule.action == "suspend_provider"
    assert book.match("gmail", Reply(250, "2.0.0", "4.7.28 ok")) is None
    assert book.match("yahoo", Reply(421, "4.7.28", "slow down")) is None


def test_reply_line_joins_a_multiline_reply() -> None:
    assert reply_line(Reply(421, "4.7.28", "a\nb")) == "421 4.7.28 a b"
    assert reply_line(Reply(421, None, "busy")) == "421 busy"


# -- config ------------------------------------------------------------------------------


def test_provider_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "dns": {"nameservers": ["localhost:53"]},
                "delivery": {"mx_port": 0},
                "providers": [
                    {"name": "gmail", "rate": "fast", "max_connections": 0,
                     "rules": [{"match": "(", "action": "explode"}]},
                    {"name": "gmail"},
                ],
            }
        )  # fmt: skip
    text = str(err.value)
    assert "dns.nameservers[0]: expected IP:port" in text
    assert "delivery.mx_port" in text
    assert "providers[0].rate:" in text
    assert "providers[0].max_connections: must be at least 1" in text
    assert "providers[0].rules[0].match: not a valid regular expression" in text
    assert "providers[0].rules[0].action: unknown action 'explode'" in text
    assert "providers[1].name: provider 'gmail' is defined twice" in text


def test_parse_rate() -> None:
    assert parse_rate("120/m") == 2.0
    assert parse_rate("3600/h") == 1.0
    assert parse_rate("2/s") == 2.0
    for bad in ("120", "0/m", "1/y", "x/m"):
        with pytest.raises(ValueError):
            parse_rate(bad)


# -- shaping -----------------------------------------------------------------------------


def _shaping(**provider: Any) -> tuple[Shaping, FakeClock]:
    clock = FakeClock()
    cfg = ProviderConfig(name="gmail", domains=["gmail.test"], **provider)
    return Shaping(ProviderTable.build([cfg]), RuleBook([cfg]), clock), clock


def test_rate_is_a_token_bucket_with_a_small_burst() -> None:
    shaping, clock = _shaping(rate="120/m")
    now = clock.monotonic()
    sent = 0
    for _ in range(100):  # as many as may go at once
        if shaping.over_limit("a", "gmail", now) is not None:
            break
        shaping.started("a", "gmail", now)
        shaping.finished("a", "gmail", now, overloaded=False)
        sent += 1
    assert sent == burst(2.0) == 4
    assert shaping.over_limit("a", "gmail", now) == "over rate for gmail"
    assert shaping.take_wake() == pytest.approx(now + 0.5)
    assert shaping.over_limit("b", "gmail", now) is None  # per member
    # Over 10 s the bucket gives 2 a second: never more than burst + 20.
    for _ in range(1000):
        clock.advance(0.01)
        now = clock.monotonic()
        if shaping.over_limit("a", "gmail", now) is None:
            shaping.started("a", "gmail", now)
            shaping.finished("a", "gmail", now, overloaded=False)
            sent += 1
    assert sent == 4 + 20


def test_connections_per_provider_and_the_adaptive_window() -> None:
    shaping, clock = _shaping(max_connections=8)
    now = clock.monotonic()
    for _ in range(5):  # the window starts at Postfix's initial concurrency, 5
        assert shaping.over_limit("a", "gmail", now) is None
        shaping.started("a", "gmail", now)
    assert shaping.over_limit("a", "gmail", now) == "over connections for gmail (5 of 5)"
    # A 421 on the fifth connection: the window halves, the ceiling is 4.
    assert shaping.finished("a", "gmail", now, overloaded=True)
    lane = shaping.lanes[("a", "gmail")]
    assert lane.window == 2.5 and lane.ceiling == 4
    for _ in range(4):
        shaping.finished("a", "gmail", now, overloaded=False)
    for _ in range(200):  # successes grow the window additively, up to the ceiling
        shaping.started("a", "gmail", now)
        shaping.finished("a", "gmail", now, overloaded=False)
    assert shaping.connection_limit(lane, "gmail") <= 8
    assert lane.window <= 8


def test_aimd_settles_below_a_limit_that_refuses_the_fourth_connection() -> None:
    """A simulated upstream that answers 421 to more than 3 concurrent deliveries."""
    shaping, clock = _shaping(max_connections=10)
    now = clock.monotonic()
    in_flight: list[int] = []  # each delivery's concurrency when it started
    levels = []
    for _ in range(2000):
        while shaping.over_limit("a", "gmail", now) is None:
            shaping.started("a", "gmail", now)
            in_flight.append(shaping.lanes[("a", "gmail")].active)
        level = in_flight.pop(0)
        shaping.finished("a", "gmail", now, overloaded=level > 3)
        levels.append(shaping.connection_limit(shaping.lanes[("a", "gmail")], "gmail"))
    tail = levels[-1000:]
    # Settled at 3, probing a fourth connection now and then (after 50 successes).
    assert max(tail) <= 4 and sum(1 for x in tail if x > 3) <= len(tail) // 25
    assert levels[-1] <= 3 or levels[-2] <= 3


def test_suspend_rule_suspends_the_member_for_the_provider_once() -> None:
    shaping, clock = _shaping()
    now = clock.monotonic()
    fired = shaping.on_reply("a", "gmail", Reply(421, "4.7.28", "unusual rate"), now)
    assert fired is not None and fired.new and fired.rule.name == "gmail-4.7.28"
    assert fired.until == now + 3600
    reason = shaping.suspended("a", "gmail", now)
    assert reason is not None and reason.startswith("suspended for gmail until ")
    assert reason.endswith(" by rule gmail-4.7.28")
    assert shaping.suspended("b", "gmail", now) is None
    assert shaping.suspended("a", "other", now) is None
    again = shaping.on_reply("a", "gmail", Reply(421, "4.7.28", "unusual rate"), now + 1)
    assert again is not None and not again.new  # in force: not logged twice
    clock.advance(3600)
    assert shaping.suspended("a", "gmail", clock.monotonic()) is None


def test_suspend_provider_and_throttle() -> None:
    shaping, clock = _shaping(
        rate="60/m",
        rules=[ProviderRuleConfig(match="all stop", action="suspend_provider",
                                  duration=Duration(60), name="stop"),
               ProviderRuleConfig(match="slow", action="throttle", duration=Duration(400))],
    )  # fmt: skip
    now = clock.monotonic()
    shaping.on_reply("a", "gmail", Reply(421, "4.7.0", "all stop"), now)
    assert "suspended for all members" in (shaping.suspended("b", "gmail", now) or "")
    fired = shaping.on_reply("a", "gmail", Reply(451, "4.7.0", "slow"), now)
    assert fired is not None and fired.rule.name == "gmail-2" and fired.rule.action == "throttle"
    lane = shaping.lanes[("a", "gmail")]
    assert shaping.rate(lane, "gmail", now) == pytest.approx(0.5)
    assert [throttle_factor(lane, now + t) for t in (399, 400, 500, 600, 700)] == [
        0.5, 0.625, 0.75, 0.875, 1.0
    ]  # fmt: skip


def test_filters_read_the_shaping_state() -> None:
    shaping, clock = _shaping(max_connections=1)

    class M:
        name = "a"

    request = PickRequest(provider="gmail")
    now = clock.monotonic()
    assert SuspendedForProvider(shaping)(M(), request, now) is None  # type: ignore[arg-type]
    shaping.started("a", "gmail", now)
    reason = OverProviderLimit(shaping)(M(), request, now)  # type: ignore[arg-type]
    assert reason == "over connections for gmail (1 of 1)"
    assert OverProviderLimit(shaping)(M(), PickRequest(), now) is None  # type: ignore[arg-type]


def test_snapshot_shows_limits_and_suspensions() -> None:
    shaping, clock = _shaping(rate="120/m")
    now = clock.monotonic()
    shaping.on_reply("a", "gmail", Reply(421, "4.7.28", "x"), now)
    view = {p["name"]: p for p in shaping.snapshot(["a", "b"])}
    gmail = view["gmail"]
    assert gmail["rate"] == "120/m"
    (lane,) = gmail["members"]
    assert lane["member"] == "a" and lane["suspended"]["rule"] == "gmail-4.7.28"
    assert lane["suspended"]["seconds_left"] == 3600


def test_waits_for_provider_tells_provider_limits_from_busy_members() -> None:
    class C:
        def __init__(self, reason: str | None) -> None:
            self.wait_reason = reason

    assert waits_for_provider([C("over rate for gmail"), C("over connections for gmail (3 of 3)")])
    assert waits_for_provider([C(None), C("over rate for gmail")])
    assert not waits_for_provider([C("busy (all 10 connections in use)"), C("over rate for gmail")])
    assert not waits_for_provider([C(None)])
