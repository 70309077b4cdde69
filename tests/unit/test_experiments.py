"""Experiments: assignment, config, guardrail, durable counters and the report."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtplb.clock import FakeClock
from smtplb.config import ConfigError, parse_config
from smtplb.experiments import Experiments, ExperimentStore, Observation, variant_pool
from smtplb.experiments.assignment import Assignment, VariantShare, bucket
from smtplb.experiments.guardrail import Guardrail
from smtplb.experiments.render import render_text
from smtplb.experiments.report import VariantInfo, build_report

TWO = [VariantShare("control", 50), VariantShare("latency", 50)]


def test_bucket_is_stable_across_processes() -> None:
    # BLAKE2b, not Python's salted hash(): these values hold in every process and release.
    assert bucket("latency-vs-rr", "user1@example.org") == bucket(
        "latency-vs-rr", "user1@example.org"
    )
    assert bucket("exp", "a@b.test") == 9790  # pinned: a change here re-splits live traffic


@given(st.lists(st.integers(min_value=0), min_size=1, max_size=50, unique=True))
def test_a_key_keeps_its_variant_and_stopping_only_moves_the_stopped_variant(
    ids: list[int],
) -> None:
    keys = [f"user{i}@example.test" for i in ids]
    a = Assignment("exp", [*TWO, VariantShare("third", 20)])
    first = {k: a.assign(k) for k in keys}
    assert first == {k: a.assign(k) for k in keys}
    after = {k: a.assign(k, stopped={"latency"}) for k in keys}
    for k in keys:
        assert after[k] == ("control" if first[k] == "latency" else first[k])


@settings(max_examples=10, deadline=None)
@given(st.integers(min_value=1, max_value=99))
def test_shares_hold_within_one_and_a_half_percent(share: int) -> None:
    a = Assignment("shares", [VariantShare("a", share), VariantShare("b", 100 - share)])
    counts = Counter(a.assign(f"user{i}@example.test") for i in range(20_000))
    assert abs(counts["a"] / 20_000 - share / 100) < 0.015


def test_experiments_split_independently() -> None:
    one = Assignment("one", TWO)
    two = Assignment("two", TWO)
    keys = [f"u{i}@x.test" for i in range(2000)]
    same = sum(one.assign(k) == two.assign(k) for k in keys)
    assert 900 < same < 1100  # about half: not the same split twice


BASE = {
    "pools": [
        {
            "name": "main",
            "members": [
                {"name": "a", "relay": "127.0.0.1:2600"},
                {"name": "b", "relay": "127.0.0.1:2601"},
            ],
        }
    ]
}


def with_experiment(**exp: object) -> dict[str, object]:
    experiment = {
        "name": "e",
        "pool": "main",
        "variants": [
            {"name": "control", "share": 50, "strategy": "round_robin"},
            {"name": "latency", "share": 50, "strategy": "latency", "members": ["b"]},
        ],
        **exp,
    }
    return {**BASE, "experiments": [experiment]}


def test_config_accepts_the_spec_example() -> None:
    warnings: list[str] = []  # [[experiments]] is built: no "not implemented yet"
    cfg = parse_config(with_experiment(split="recipient", guardrail_bounce_margin=0.02), warnings)
    assert warnings == []
    exp = cfg.experiments[0]
    assert [v.name for v in exp.variants] == ["control", "latency"]
    pool = variant_pool(cfg.pools[0], exp, "latency")
    assert pool.strategy == "latency"
    assert [m.name for m in pool.members] == ["b"]
    assert [m.name for m in variant_pool(cfg.pools[0], exp, "control").members] == ["a", "b"]


@pytest.mark.parametrize(
    ("exp", "problem"),
    [
        ({"pool": "nope"}, "experiments[0].pool: no pool named 'nope'"),
        ({"split": "domain"}, "experiments[0].split: expected one of recipient, message"),
        ({"guardrail_bounce_margin": 1.5}, "experiments[0].guardrail_bounce_margin"),
        (
            {"variants": [{"name": "only", "share": 100}]},
            "experiments[0].variants: an experiment needs at least two variants",
        ),
        (
            {"variants": [{"name": "a", "share": 50}, {"name": "b", "share": 40}]},
            "experiments[0].variants: shares must add up to 100",
        ),
        (
            {"variants": [{"name": "a", "share": 50}, {"name": "b", "share": 50, "strategy": "x"}]},
            "experiments[0].variants[1].strategy: unknown strategy 'x'",
        ),
        (
            {
                "variants": [
                    {"name": "a", "share": 50},
                    {"name": "b", "share": 50, "members": ["z"]},
                ]
            },
            "experiments[0].variants[1].members: 'z': not members of pool 'main'",
        ),
        (
            {"variants": [{"name": "a", "share": 50}, {"name": "a", "share": 50}]},
            "experiments[0].variants[1].name: duplicate",
        ),
        (
            {"variants": [{"name": "a", "share": 100}, {"name": "b"}]},
            "experiments[0].variants[1].share: must be set",
        ),
    ],
)
def test_config_errors_name_the_key(exp: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(with_experiment(**exp))
    assert any(line.startswith(problem) for line in err.value.problems), err.value.problems


def test_a_wrong_type_is_one_problem() -> None:
    bad = {"variants": [{"name": "a", "share": "half"}, {"name": "b", "share": 50}]}
    with pytest.raises(ConfigError) as err:
        parse_config(with_experiment(**bad))
    assert err.value.problems == [
        "experiments[0].variants[0].share: expected `float`, got `str`"
    ], err.value.problems


def test_guardrail_stops_a_blocked_variant_early_and_spares_a_fair_one() -> None:
    guard = Guardrail("control", ["control", "v"], margin=0.02)
    stopped_at = None
    for n in range(1, 101):
        out = guard.check({("control", "delivered"): n, ("v", "policy_block"): n})
        if out:
            stopped_at = n
            assert out[0][0] == "v" and "policy_block" in out[0][1]
            break
    assert stopped_at is not None and stopped_at <= 50
    fair = Guardrail("control", ["control", "v"], margin=0.02)
    for n in range(10, 2001, 10):  # both bounce 3 %: within the margin, never stopped
        k = n * 3 // 100
        counts = {
            ("control", "bounced"): k,
            ("control", "delivered"): n - k,
            ("v", "bounced"): k,
            ("v", "delivered"): n - k,
        }
        assert fair.check(counts) == []


def test_store_survives_a_reopen_and_two_writers_add_up(tmp_path: Path) -> None:
    path = tmp_path / "experiments.sqlite"
    one, two = ExperimentStore(path), ExperimentStore(path)  # two workers, one file
    one.add([Observation("e", "control", "example.org", "delivered", at=1.0)] * 3)
    two.add([Observation("e", "latency", "example.org", "bounced", at=2.0)] * 2)
    assert two.stop_variant("e", "latency", 3.0, "guardrail: test")
    assert not one.stop_variant("e", "latency", 4.0, "again")
    one.set_running("e", False, 5.0)
    one.close()
    two.close()
    again = ExperimentStore(path)
    assert again.counts("e") == {("control", "delivered"): 3, ("latency", "bounced"): 2}
    assert again.stopped_variants("e") == {"latency": (3.0, "guardrail: test")}
    assert not again.running("e")
    assert [e.event for e in again.events("e")] == ["variant_stopped", "stopped"]
    again.set_running("e", True, 6.0)  # a restart gives the variant its traffic back
    assert again.stopped_variants("e") == {}
    assert len(again.rows("e")) == 5


def test_runtime_assigns_records_and_stops_by_guardrail(tmp_path: Path) -> None:
    cfg = parse_config(with_experiment(split="message"))
    events = []
    clock = FakeClock()

    async def scenario() -> dict[str, object]:
        exps = Experiments(
            cfg.experiments,
            ExperimentStore(tmp_path / "x.sqlite"),
            clock=clock,
            on_event=lambda e, pool: events.append((e, pool)),
        )
        assert exps.variant_for("other", "a@b.test", "q1") is None
        variants = Counter()
        for i in range(200):
            exp = exps.variant_for("main", f"u{i}@x.test", f"q{i}")
            assert exp is not None
            name, variant = exp
            variants[variant] += 1
            outcome = "policy_block" if variant == "latency" else "delivered"
            exps.observe(Observation(name, variant, "x.test", outcome, time_to_deliver=0.1))
            if i % 20 == 19:
                await exps.flush()
        return await exps.report("e")

    report = asyncio.run(scenario())
    assert [(e.event, e.variant, pool) for e, pool in events] == [
        ("variant_stopped", "latency", "main")
    ]
    latency = next(v for v in report["variants"] if v["name"] == "latency")  # type: ignore[union-attr]
    assert latency["stopped"]["reason"].startswith("guardrail: policy_block")
    assert latency["messages"] <= 40  # stopped at the first flush that had enough


def test_report_verdicts_and_text() -> None:
    from smtplb.experiments.counters import Row

    rows = []
    for i in range(400):
        rows.append(Row("control", "gmail", "delivered", i % 10 == 0, 0.5 + i % 7 / 10, 0.3))
        outcome = "bounced" if i % 5 == 0 else "delivered"
        rows.append(Row("variant", "gmail", outcome, False, 0.1 + i % 7 / 100, 0.05))
    report = build_report(
        name="e",
        pool="main",
        split="recipient",
        running=True,
        variants=[VariantInfo("control", 50, "round_robin"), VariantInfo("variant", 50, "latency")],
        rows=rows,
        stopped={},
        guardrail_bounce_margin=0.02,
    )
    verdicts = {m["metric"]: m["verdict"] for m in report["metrics"] if m["variant"] == "variant"}
    assert verdicts["bounced"] == "worse"
    assert verdicts["deferred_ever"] == "better"
    assert verdicts["time_to_deliver"] == "better"
    assert verdicts["complaint"] == "no significant difference"
    assert report["srm"]["mismatch"] is False
    gmail = next(p for p in report["providers"] if p["variant"] == "variant")
    assert gmail["bounced"]["p_value"] < 0.001  # 20 % against 0 % for that provider
    assert gmail["time_to_deliver_p_value"] < 0.001
    assert "p_value" not in report["providers"][0]["bounced"]  # control: nothing to compare
    text = render_text(report)
    assert "sample ratio:" in text and "gmail" in text and "worse" in text


def test_a_restart_judges_from_the_restart_on(tmp_path: Path) -> None:
    cfg = parse_config(with_experiment())
    events = []

    async def scenario() -> tuple[bool, bool]:
        exps = Experiments(
            cfg.experiments,
            ExperimentStore(tmp_path / "x.sqlite"),
            clock=FakeClock(),
            on_event=lambda e, pool: events.append(e.event),
        )

        def feed(blocked: bool) -> None:
            for i in range(60):
                for variant in ("control", "latency"):
                    bad = blocked and variant == "latency"
                    outcome = "policy_block" if bad else "delivered"
                    exps.observe(Observation("e", variant, "x.test", outcome, at=float(i)))

        feed(blocked=True)
        await exps.flush()
        stopped = "latency" in exps.by_name["e"].stopped
        await exps.set_running("e", True)  # the operator fixed the IP and restarts
        feed(blocked=False)
        await exps.flush()
        return stopped, "latency" in exps.by_name["e"].stopped

    stopped_before, stopped_after = asyncio.run(scenario())
    assert stopped_before and not stopped_after
    assert events == ["variant_stopped", "started"]
