"""`smtplb sink --help` lists the sink's own options (issue 10, item 11)."""

from __future__ import annotations

import tomllib

import pytest
from click.testing import CliRunner

from smtplb.cli import main
from smtplb.sink.profile import profile_from_dict
from smtplb.sink.server import _PROFILE_HELP


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_sink_help_lists_the_sinks_options(flag: str) -> None:
    result = CliRunner().invoke(main, ["sink", flag])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("usage: smtplb sink ")
    for option in ("--listen HOST:PORT", "--profile FILE", "--record FILE"):
        assert option in result.output
    assert '[domains."*"]' in result.output


def test_the_profile_in_the_help_is_a_valid_profile() -> None:
    text = "\n".join(
        line.split("#")[0] for line in _PROFILE_HELP.splitlines()[1:] if line.startswith("  ")
    )
    profile = profile_from_dict(tomllib.loads(text))
    assert profile.seed == 7
    assert profile.rule_for("gmail.test").defer == 0.15
    assert "nobody@example.test" in profile.unknown_users


def test_sink_refuses_a_bad_option_with_usage() -> None:
    result = CliRunner().invoke(main, ["sink", "--lisen", "x"])
    assert result.exit_code == 2
