"""The experiment statistics against published worked examples, hand
computations and independent computations (sources named in each test)."""

from __future__ import annotations

import math
import random

import pytest
from scipy import integrate, stats

from smtplb.clock import FakeClock
from smtplb.experiments.assignment import Assignment, VariantShare
from smtplb.experiments.counters import Row
from smtplb.experiments.report import sequential_p_over_rows
from smtplb.experiments.statistics import (
    SequentialTest,
    holm,
    mann_whitney,
    msprt_lambda,
    proportion_variance,
    quantile,
    sample_ratio,
    sequential_p,
    two_proportion,
    wilson,
)


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Newcombe RG, "Two-sided confidence intervals for the single proportion:
        # comparison of seven methods", Statistics in Medicine 17 (1998) 857-872,
        # Table II, method 3 (score method without continuity correction).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombe_1998(k: int, n: int, low: float, high: float) -> None:
    ci = wilson(k, n)
    assert round(ci.low, 4) == low
    assert round(ci.high, 4) == high


def test_wilson_of_nothing_is_the_whole_range() -> None:
    assert (wilson(0, 0).low, wilson(0, 0).high) == (0.0, 1.0)


def test_two_proportion_by_hand() -> None:
    # Hand computation: 140/200 = 0.70 against 255/340 = 0.75; pooled p = 395/540
    # = 0.731481…; SE = sqrt(p(1-p)(1/200 + 1/340)) = 0.039494…; z = -0.05/SE =
    # -1.26602; two-sided p = 2·Φ(-1.26602) = 0.20551.
    t = two_proportion(255, 340, 140, 200)
    assert t.difference == pytest.approx(-0.05)
    assert t.z == pytest.approx(-1.26602, abs=1e-5)
    assert t.p_value == pytest.approx(0.20551, abs=1e-5)


@pytest.mark.parametrize(
    ("kc", "nc", "kv", "nv"), [(50, 1000, 75, 1000), (3, 40, 11, 45), (900, 1000, 880, 990)]
)
def test_two_proportion_equals_pearson_chi_square_of_the_2x2_table(
    kc: int, nc: int, kv: int, nv: int
) -> None:
    # An independent computation: Pearson's chi-square of the 2×2 table (no Yates
    # correction) is the square of the pooled z, with the same p-value.
    chi2, p, _, _ = stats.chi2_contingency([[kc, nc - kc], [kv, nv - kv]], correction=False)
    t = two_proportion(kc, nc, kv, nv)
    assert t.z**2 == pytest.approx(chi2)
    assert t.p_value == pytest.approx(p)


def test_mann_whitney_fully_separated_samples_by_hand() -> None:
    # Hand computation: 5 against 5 with no overlap: U = 25 for the larger sample,
    # and the exact two-sided p is 2 / C(10, 5) = 2/252 = 0.0079365.
    r = mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert r.u == 25
    assert r.p_value == pytest.approx(2 / 252)
    assert (r.median_control, r.median_variant) == (3, 8)


def test_mann_whitney_without_data_says_nothing() -> None:
    r = mann_whitney([], [1.0])
    assert r.p_value == 1.0
    assert r.median_control is None
    assert r.median_variant == 1.0


def test_quantile_is_numpy_linear() -> None:
    import numpy as np

    values = [0.3, 1.7, 0.2, 5.0, 2.2, 0.9, 1.1]
    for q in (0.0, 0.5, 0.95, 1.0):
        assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)))


def test_sample_ratio_by_hand() -> None:
    # Hand computation: 5050 and 4950 against 5000 each: chi2 = (50² + 50²)/5000 = 1,
    # p = P(chi2(1) > 1) = 2·Φ(-1) = 0.317311.
    s = sample_ratio([5050, 4950], [50, 50])
    assert s.chi2 == pytest.approx(1.0)
    assert s.p_value == pytest.approx(0.317311, abs=1e-6)
    assert not s.mismatch
    # 5300/4700 is a mismatch: chi2 = 36, p ≈ 2e-9
    assert sample_ratio([5300, 4700], [50, 50]).mismatch
    # unequal shares: 900/100 against 90 %/10 % is no mismatch
    assert not sample_ratio([900, 100], [90, 10]).mismatch


def test_holm_by_hand() -> None:
    # Holm (1979) step-down: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 =
    # 0.02, 0.03, 0.06, 0.04 → made monotone 0.02, 0.03, 0.06, 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.9, 0.8]) == [1.0, 1.0]
    assert holm([]) == []


@pytest.mark.parametrize(
    ("diff", "var", "tau"), [(0.02, 1e-4, 0.05), (0.1, 4e-4, 0.1), (0, 1e-3, 0.05)]
)
def test_msprt_closed_form_equals_the_mixture_integral(diff: float, var: float, tau: float) -> None:
    # Independent computation of Johari et al.'s mixture likelihood ratio:
    # Λ = ∫ N(θ̂; θ, V) / N(θ̂; 0, V) · N(θ; 0, τ²) dθ, by numerical quadrature.
    sd = math.sqrt(var)

    def integrand(theta: float) -> float:
        ratio = stats.norm.pdf(diff, theta, sd) / stats.norm.pdf(diff, 0, sd)
        return float(ratio * stats.norm.pdf(theta, 0, tau))

    numeric, _ = integrate.quad(integrand, -10 * tau, 10 * tau, points=[0.0, diff])
    assert msprt_lambda(diff, var, tau) == pytest.approx(numeric, rel=1e-6)


def test_msprt_is_johari_two_stream_formula() -> None:
    # Johari et al. 2017, two streams of n each with variance σ²:
    # Λ_n = sqrt(2σ²/(2σ² + nτ²)) · exp(n²τ²(Ȳ−X̄)² / (4σ²(2σ² + nτ²)))
    n, sigma2, tau, delta = 400, 0.09, 0.05, 0.03
    expected = math.sqrt(2 * sigma2 / (2 * sigma2 + n * tau**2)) * math.exp(
        n**2 * tau**2 * delta**2 / (4 * sigma2 * (2 * sigma2 + n * tau**2))
    )
    assert msprt_lambda(delta, 2 * sigma2 / n, tau) == pytest.approx(expected)


def test_sequential_p_never_rises_and_one_sided_ignores_the_good_direction() -> None:
    t = SequentialTest()
    seen = [t.update(10, 100, 25, 100), t.update(20, 200, 30, 200), t.update(30, 300, 30, 300)]
    assert seen[0] < 0.5
    assert seen == sorted(seen, reverse=True)
    guard = SequentialTest(one_sided=True, null=0.02)
    assert guard.update(50, 100, 0, 100) == 1.0  # variant far better: no evidence of harm
    assert sequential_p(0, 5, 5, 5, SequentialTest()) < 1.0
    assert SequentialTest(min_samples=10).update(0, 5, 5, 5) == 1.0  # too few to look


def test_variance_never_zero_on_all_or_nothing() -> None:
    assert proportion_variance(0, 12, 12, 12) > 0
    assert proportion_variance(0, 12, 0, 12) > 0


def test_vectorised_sequential_p_equals_a_look_after_every_row() -> None:
    rng = random.Random(7)
    rows = [
        Row(
            rng.choice("ab"),
            "example.test",
            "bounced" if rng.random() < 0.1 else "delivered",
            False,
            None,
            None,
        )
        for _ in range(600)
    ]
    test = SequentialTest()
    k = {"a": 0, "b": 0}
    n = {"a": 0, "b": 0}
    for r in rows:
        n[r.variant] += 1
        k[r.variant] += r.outcome == "bounced"
        test.update(k["a"], n["a"], k["b"], n["b"])
    assert sequential_p_over_rows(rows, "a", "b", "bounced") == pytest.approx(test.p_value)


def test_a_a_simulation_sequential_keeps_false_positives_at_5_percent() -> None:
    """200 A/A experiments on the fake clock, peeking after every 50 messages.

    Both variants have the same 10 % deferral rate. A naive fixed-horizon test
    read at every peek "finds" a difference in far more than 5 % of them; the
    always-valid mSPRT p-value stays at or below 5 %.
    """
    reps, messages, peek, rate = 200, 1500, 50, 0.10
    assignment = Assignment("a-a", [VariantShare("a", 50), VariantShare("b", 50)])
    clock = FakeClock()
    naive_hits = sequential_hits = 0
    for rep in range(reps):
        rng = random.Random(rep)
        k = {"a": 0, "b": 0}
        n = {"a": 0, "b": 0}
        seq = SequentialTest()
        naive = sequential = False
        for j in range(1, messages + 1):
            clock.advance(rng.expovariate(10.0))  # a message every 0.1 s on average
            v = assignment.assign(f"user{rep}.{j}@example.test")
            n[v] += 1
            k[v] += rng.random() < rate
            if j % peek == 0:
                naive |= two_proportion(k["a"], n["a"], k["b"], n["b"]).p_value < 0.05
                sequential |= seq.update(k["a"], n["a"], k["b"], n["b"]) < 0.05
        naive_hits += naive
        sequential_hits += sequential
    naive_rate, sequential_rate = naive_hits / reps, sequential_hits / reps
    print(
        f"\nA/A, {reps} runs × {messages} messages, peek every {peek}: false positives "
        f"naive fixed-horizon {naive_rate:.1%}, sequential (mSPRT) {sequential_rate:.1%}"
    )
    assert sequential_rate <= 0.05
    assert naive_rate > 0.10  # peeking inflates the naive test well past its 5 %
