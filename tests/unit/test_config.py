from __future__ import annotations

import socket
from pathlib import Path

import pytest

from smtplb.config import (
    INERT,
    ConfigError,
    load_config,
    parse_config,
    resolve_workers,
    usable_cores,
)
from smtplb.units import Duration, Size, parse_hostport


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
    assert cfg.workers == min(64, usable_cores())  # one per core when not set


def test_workers_auto_is_one_per_core_up_to_64() -> None:
    assert resolve_workers(None, 2) == 2
    assert resolve_workers("auto", 8) == 8
    assert resolve_workers("auto", 1) == 1
    assert resolve_workers(None, 128) == 64
    assert resolve_workers(3, 2) == 3  # an explicit count is kept, whatever the cores
    with pytest.raises(ValueError, match='expected an integer from 1 to 64 or "auto"'):
        resolve_workers("two", 2)
    assert parse_config({"workers": "auto"}).workers == min(64, usable_cores())
    assert parse_config({"workers": 1}).workers == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("two", """workers: expected an integer from 1 to 64 or "auto", got 'two'"""),
        (0, """workers: expected an integer from 1 to 64 or "auto", got 0"""),
        (65, """workers: expected an integer from 1 to 64 or "auto", got 65"""),
        (1.5, "workers: expected `int`, got `float`"),
    ],
)
def test_bad_workers_say_what_is_expected(value: object, expected: str) -> None:
    assert problems_of({"workers": value}) == [expected]


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
        ({"suppression": {"on_intake": "bounce"}}, 'suppression.on_intake: expected "reject"'),
        ({"suppression": {"scope": "domain"}}, 'suppression.scope: expected "global"'),
        ({"reputation": {"complaint_quarantine": 3}}, "reputation.complaint_quarantine: must be"),
        ({"reputation": {"min_volume": 0}}, "reputation.min_volume: must be at least 1"),
        ({"reputation": {"quarantine": "later"}}, "reputation.quarantine: expected a duration"),
        (
            {"reputation": {"feedback_addresses": ["fbl"]}},
            "reputation.feedback_addresses[0]: expected a mail address",
        ),
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


# -- every problem in one run (issue 10, item 9) ---------------------------------------


def test_every_type_error_is_reported_in_one_run() -> None:
    problems = problems_of(
        {
            "workers": "two",
            "smtp": {"max_recipients": "many", "idle_timeout": "soon"},
            "http": {"public_read": "yes"},
            "health": {"rise": "x"},
        }
    )
    assert [p.partition(":")[0] for p in problems] == [
        "workers",
        "smtp.max_recipients",
        "smtp.idle_timeout",
        "http.public_read",
        "health.rise",
    ]


def test_type_and_semantic_problems_come_together() -> None:
    problems = problems_of(
        {
            "smtp": {"max_recipients": "many"},
            "pools": [pool(weight=0), {"name": "q", "members": [{"name": "b", "relay": 7}]}],
            "routes": [{"pool": "nope"}],
        }
    )
    assert problems == [
        "smtp.max_recipients: expected `int`, got `str`",
        "pools[1].members[0].relay: expected `str | null`, got `int`",
        "pools[0].members[0].weight: must be at least 1",
        "routes[0].pool: no pool named 'nope'",
    ]


def test_a_refused_value_does_not_bring_follow_up_problems() -> None:
    # The relay was refused; "set exactly one of relay or source_ip" would only mislead.
    problems = problems_of({"pools": [pool(relay=["x"])]})
    assert len(problems) == 1
    assert problems[0].startswith("pools[0].members[0].relay: expected")


def test_missing_required_keys_are_each_named() -> None:
    problems = problems_of({"pools": [{"members": [{"relay": "127.0.0.1:25"}, {}]}]})
    assert problems == [
        "pools[0].name: required key is missing",
        "pools[0].members[0].name: required key is missing",
        "pools[0].members[1].name: required key is missing",
        "pools[0].members[1]: set exactly one of relay (host:port) or source_ip",
    ]


def test_entries_of_a_table_of_strings_are_named_by_key() -> None:
    problems = problems_of({"static_routes": {"a.test": 5, "b.test": "nohost"}})
    assert problems[0] == "static_routes.a.test: expected `str`, got `int`"
    assert problems[1].startswith("static_routes.b.test: expected host:port")


def test_wrong_shape_of_a_table_or_array() -> None:
    assert problems_of({"smtp": "fast"}) == ["smtp: expected a table, got a string"]
    assert problems_of({"pools": {"name": "p"}}) == [
        "pools: expected an array of tables ([[pools]]), got a table"
    ]
    assert problems_of({"pools": ["p"]}) == ["pools[0]: expected a table, got a string"]


def test_garbage_listen_with_auth_without_tls_is_a_problem_not_a_traceback(
    tmp_path: Path,
) -> None:
    problems = problems_of({"smtp": {"listen": ["garbage"], "auth_without_tls": True}})
    assert problems == [
        "smtp.listen[0]: expected host:port, got 'garbage'",
        "smtp.auth_without_tls: allowed only when every smtp.listen address is loopback",
    ]


def test_unknown_top_level_key_names_the_key() -> None:
    assert problems_of({"dkimm": {"domain": "x"}}) == ["dkimm: unknown key"]
    assert problems_of({"pools": [pool(colour="red")]}) == [
        "pools[0].members[0].colour: unknown key"
    ]


def test_cluster_keys_are_built_and_checked() -> None:
    quiet: list[str] = []
    cfg = parse_config({"cluster": {"node": "node-a", "redis": "redis://127.0.0.1:6379/0"}}, quiet)
    assert quiet == [] and (cfg.cluster.node, cfg.cluster.redis) == (
        "node-a",
        "redis://127.0.0.1:6379/0",
    )
    assert parse_config({}).cluster.node == socket.gethostname()  # the default
    for url in ("rediss://:pw@redis.example:6380/1", "unix:///run/redis.sock"):
        assert parse_config({"cluster": {"redis": url}}).cluster.redis == url
    assert problems_of({"cluster": {"redis": "127.0.0.1:6379"}}) == [
        "cluster.redis: expected a redis://host:port/db, rediss://… or unix:///path URL,"
        " got '127.0.0.1:6379'"
    ]
    assert problems_of({"cluster": {"redis": "redis:///0"}}) == [
        "cluster.redis: no host in 'redis:///0' (e.g. redis://127.0.0.1:6379/0)"
    ]
    assert problems_of({"cluster": {"node": "node a"}}) == [
        "cluster.node: expected a name of letters, digits, '.', '_' or '-' (at most 64),"
        " got 'node a'"
    ]


def test_reputation_and_suppression_are_built_and_parse_without_a_warning() -> None:
    warnings: list[str] = []
    config = parse_config(
        {"reputation": {"window": "1h"}, "suppression": {"on_intake": "drop"}}, warnings
    )
    assert warnings == []
    assert (config.reputation.window, config.suppression.on_intake) == (3600, "drop")


def test_warmup_keys_are_built_and_checked() -> None:
    quiet: list[str] = []
    cfg = parse_config(
        {
            "warmup": {"schedule": [50, 70], "max_hourly_share": 0.5},
            "pools": [pool(warmup=True, warmup_start="2026-11-01")],
        },
        quiet,
    )
    assert quiet == [] and cfg.warmup.schedule == [50, 70]
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "warmup": {"schedule": [50, 0], "deferral_hold": 0.5, "deferral_step_back": 0.1},
                "pools": [pool(warmup=True, warmup_start="1 Nov")],
            }
        )
    assert err.value.problems == [
        "pools[0].members[0].warmup_start: expected a date YYYY-MM-DD, got '1 Nov'",
        "warmup.schedule: expected caps of at least 1 message a day, day 1 first (or leave it out)",
        "warmup.deferral_hold: expected 0 < deferral_hold <= deferral_step_back <= 1,"
        " got 0.5 and 0.1",
    ]


def test_warnings_are_given_even_when_there_are_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(INERT, "cluster.node", "an inert key")
    warnings: list[str] = []
    with pytest.raises(ConfigError):
        parse_config({"cluster": {"node": "a"}, "workers": "x"}, warnings)
    assert [w.partition(":")[0] for w in warnings] == ["cluster.node"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"smtp": {"max_message_size": "999999999999999999999999TB"}},
            "smtp.max_message_size: a size must be at most 1PiB",
        ),
        ({"smtp": {"max_message_size": "3GB"}}, "smtp.max_message_size: must be at most 2GiB"),
        ({"health": {"interval": "99999999d"}}, "health.interval: a duration must be at most"),
        ({"health": {"interval": float("inf")}}, "health.interval: a duration must be at most"),
        ({"health": {"interval": float("nan")}}, "health.interval: a duration cannot be"),
        ({"delivery": {"max_lifetime": "1e400s"}}, "delivery.max_lifetime: expected a duration"),
    ],
)
def test_absurd_sizes_and_durations_are_refused(data: dict[str, object], expected: str) -> None:
    problems = problems_of(data)
    assert any(p.startswith(expected) for p in problems), problems


def test_check_prints_every_problem_and_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from smtplb.cli import main

    monkeypatch.setitem(INERT, "cluster.node", "an inert key")
    monkeypatch.setitem(INERT, "cluster.redis", "an inert key")
    path = tmp_path / "smtplb.toml"
    path.write_text(
        'workers = "two"\n[smtp]\nmax_recipients = "many"\n'
        '[cluster]\nnode = "a"\nredis = "redis://127.0.0.1:6379/0"\n'
    )
    result = CliRunner().invoke(main, ["check", "-c", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert (
        """config error: workers: expected an integer from 1 to 64 or "auto", got 'two'""" in lines
    )
    assert "config error: smtp.max_recipients: expected `int`, got `str`" in lines
    assert any(line.startswith("config warning: cluster.redis: not implemented") for line in lines)


def test_a_key_with_a_line_break_is_quoted_so_each_problem_stays_one_line() -> None:
    # Found by tests/fuzz/test_fuzz_config.py: '"key\nwith newline" = 1' gave two lines.
    assert problems_of({"key\nwith newline": 1}) == ['"key\\nwith newline": unknown key']
    assert problems_of({"static_routes": {"a b": "x"}})[0].startswith(
        'static_routes."a b": expected host:port'
    )


def test_run_and_check_print_the_warnings_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from smtplb.commands.common import config_or_exit

    monkeypatch.setitem(INERT, "cluster.redis", "an inert key")
    path = tmp_path / "smtplb.toml"
    path.write_text('[cluster]\nredis = "redis://127.0.0.1:6379/0"\n')
    config_or_exit(path)
    assert "config warning: cluster.redis: not implemented yet" in capsys.readouterr().err
    config_or_exit(path, warn=False)  # a worker process: its supervisor warned already
    assert capsys.readouterr().err == ""


def test_host_port_addresses_parse_or_name_the_problem() -> None:
    assert parse_hostport("mx.example.com:25") == ("mx.example.com", 25)
    assert parse_hostport("[::1]:2525") == ("::1", 2525)
    assert parse_hostport("8025", default_host="127.0.0.1") == ("127.0.0.1", 8025)
    for bad in ("mx.example.com", ":25", "host:0", "host:65536", "host:smtp"):
        with pytest.raises(ValueError, match="expected host:port"):
            parse_hostport(bad)
