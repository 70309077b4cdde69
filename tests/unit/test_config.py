from __future__ import annotations

from pathlib import Path

import pytest

from smtplb.config import ConfigError, load_config, parse_config
from smtplb.units import Duration, Size


def problems_of(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def pool(**member: object) -> dict[str, object]:
    return {"name": "p", "members": [{"name": "a", "relay": "127.0.0.1:25", **member}]}


def test_defaults_are_a_working_relay() -> None:
    cfg = parse_config({})
    assert cfg.smtp.listen == ["127.0.0.1:2525"]
    assert cfg.http.listen == "127.0.0.1:8025"
    assert cfg.data_dir == "var"
    assert [p.name for p in cfg.pools] == ["default"]
    assert cfg.pools[0].members[0].kind == "egress"
    assert cfg.smtp.max_message_size == 25_000_000
    assert cfg.delivery.max_lifetime == 5 * 86400


def test_spec_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "smtplb.toml"
    path.write_text(
        """
data_dir = "var"
hostname = "relay.example.test"
[smtp]
listen = ["127.0.0.1:2525"]
relay_networks = ["127.0.0.0/8"]
max_message_size = "25MB"
max_recipients = 100
[http]
listen = "127.0.0.1:8025"
[[pools]]
name = "default"
strategy = "round_robin"
  [[pools.members]]
  name = "relay-a"
  relay = "127.0.0.1:12525"
  weight = 1
  max_connections = 10
  [[pools.members]]
  name = "ip-2"
  source_ip = "127.0.0.2"
  ehlo = "mta2.example.test"
  warmup = true
[[routes]]
match = { recipient_domain = "example.org" }
pool = "default"
[health]
interval = "2s"
timeout = "5s"
rise = 2
fall = 3
slow_start = "30s"
[static_routes]
"example.test" = "127.0.0.1:12525"
[cluster]
"""
    )
    cfg = load_config(path)
    assert cfg.hostname == "relay.example.test"
    assert [m.name for m in cfg.members] == ["relay-a", "ip-2"]
    assert cfg.health.slow_start == 30.0
    assert isinstance(cfg.health.interval, Duration)
    assert cfg.static_routes == {"example.test": "127.0.0.1:12525"}


def test_unknown_strategy_names_the_key() -> None:
    problems = problems_of({"pools": [{**pool(), "strategy": "x"}]})
    assert problems == [
        "pools[0].strategy: unknown strategy 'x' (expected one of round_robin, weighted, "
        "least_connections, latency, hash, failover)"
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"smtp": {"max_message_size": "lots"}}, "smtp.max_message_size: expected a size"),
        ({"health": {"interval": "soon"}}, "health.interval: expected a duration"),
        ({"smtp": {"bogus": 1}}, "smtp.bogus: unknown key"),
        ({"pools": [{"members": []}]}, "pools[0].name: required key is missing"),
        ({"pools": [pool(weight=0)]}, "pools[0].members[0].weight: must be at least 1"),
        ({"pools": [pool(relay="nohost")]}, "pools[0].members[0].relay: expected host:port"),
        ({"pools": [pool(source_ip="127.0.0.2")]}, "pools[0].members[0]: set exactly one"),
        ({"pools": [pool(tls="maybe")]}, "pools[0].members[0].tls: unknown mode 'maybe'"),
        ({"pools": []}, "pools: at least one pool is needed"),
        ({"pools": [pool()], "routes": [{"pool": "nope"}]}, "routes[0].pool: no pool named"),
        ({"smtp": {"relay_networks": ["300.1.1.1/8"]}}, "smtp.relay_networks[0]: not an IP"),
        (
            {"smtp": {"listen": ["0.0.0.0:2525"], "auth_without_tls": True}},
            "smtp.auth_without_tls: allowed only when",
        ),
        ({"static_routes": {"a.test": "x"}}, "static_routes.a.test: expected host:port"),
        ({"smtp": {"max_recipients": "many"}}, "smtp.max_recipients: expected `int`"),
    ],
)
def test_errors_name_key_and_problem(data: dict[str, object], expected: str) -> None:
    problems = problems_of(data)
    assert any(p.startswith(expected) for p in problems), problems


def test_duplicate_member_names_across_pools() -> None:
    data = {"pools": [pool(), {**pool(), "name": "q"}]}
    assert "pools[1].members[0].name: duplicate member name 'a'" in problems_of(data)


def test_not_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("this is = = not toml [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_units() -> None:
    assert Size.parse("25MB") == 25_000_000
    assert Size.parse("1KiB") == 1024
    assert Size.parse("2MiB") == 2 * 1024 * 1024
    assert Duration.parse("5m") == 300
    assert Duration.parse("1d") == 86400
    assert Duration.parse("250ms") == 0.25
    for bad in ("", "5 parsecs", "-1s", True):
        with pytest.raises(ValueError):
            Duration.parse(bad)
