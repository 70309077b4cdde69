"""The [smtp] keys against AUTH brute force and slowloris: defaults and checks."""

from __future__ import annotations

import pytest

from smtplb.config import ConfigError, parse_config


def test_defaults() -> None:
    smtp = parse_config({}).smtp
    assert (smtp.max_connections, smtp.command_deadline, smtp.data_timeout) == (1000, 30, 600)
    assert (smtp.auth_max_failures, smtp.auth_lockout) == (10, 900)
    assert (smtp.auth_delay, smtp.auth_max_delay) == (1, 15)


def test_values_parse() -> None:
    smtp = parse_config(
        {"smtp": {"command_deadline": "5s", "auth_lockout": "1h", "max_connections": 20}}
    ).smtp
    assert (smtp.command_deadline, smtp.auth_lockout, smtp.max_connections) == (5, 3600, 20)


@pytest.mark.parametrize(
    ("smtp", "expected"),
    [
        ({"max_connections": 0}, "smtp.max_connections: must be at least 1"),
        ({"max_connections_per_client": 0}, "smtp.max_connections_per_client: must be at least"),
        ({"command_deadline": "0s"}, "smtp.command_deadline: must be above 0s"),
        ({"command_deadline": "soon"}, "smtp.command_deadline: expected a duration"),
        ({"data_timeout": "0s"}, "smtp.data_timeout: must be above 0s"),
        ({"auth_max_failures": 0}, "smtp.auth_max_failures: must be at least 1"),
        ({"auth_lockout": "0s"}, "smtp.auth_lockout: must be above 0s"),
        ({"auth_delay": "5s", "auth_max_delay": "1s"}, "smtp.auth_max_delay: must be at least"),
    ],
)
def test_problems_name_the_key(smtp: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"smtp": smtp})
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
