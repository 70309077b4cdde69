"""The statistics of an A/B comparison, as plain functions (no I/O, no state).

Distributions come from scipy.stats; what is computed here is only the
arithmetic the methods prescribe:

- Wilson score interval of a proportion (Wilson 1927; Newcombe 1998, method 3).
- Two-proportion z-test against control, pooled variance (any textbook).
- Mann–Whitney U (rank test) for times to deliver and latencies, two-sided.
- Sample-ratio mismatch: Pearson's chi-square of the counts per variant
  against the configured shares (the check GrowthBook and Eppo run; flagged
  below p = 0.001, their threshold).
- Holm's step-down correction across the metrics of a variant.
- Always-valid p-values by the mixture sequential probability ratio test
  (mSPRT) with a normal mixing distribution, for the difference of two
  proportions (Johari, Koomen, Pekelis, Walsh: "Peeking at A/B tests", KDD
  2017, and "Always Valid Inference", 2017; Optimizely's Stats Engine). The
  p-value may be read after every message without inflating false positives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# scipy is imported where it is used: it costs seconds at start on a busy machine,
# and a node's hot path (assignment, the guardrail's mSPRT) never needs it.


Z95 = 1.959963984540054  # the 97.5 % normal quantile
SRM_ALPHA = 0.001  # GrowthBook's and Eppo's default for a sample-ratio mismatch
DEFAULT_TAU = 0.05  # mSPRT mixing scale: the size of difference of rates we expect


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval for ``successes`` out of ``n`` (no continuity correction)."""
    if n <= 0:
        return Interval(0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True, slots=True)
class TwoProportion:
    difference: float  # variant − control
    interval: Interval  # Wald 95 % interval of the difference (unpooled)
    z: float
    p_value: float  # two-sided, fixed horizon


def two_proportion(k_control: int, n_control: int, k_variant: int, n_variant: int) -> TwoProportion:
    """Two-sided z-test of equal proportions with the pooled variance."""
    if n_control <= 0 or n_variant <= 0:
        return TwoProportion(0.0, Interval(-1.0, 1.0), 0.0, 1.0)
    pc, pv = k_control / n_control, k_variant / n_variant
    diff = pv - pc
    pooled = (k_control + k_variant) / (n_control + n_variant)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_control + 1 / n_variant))
    se = math.sqrt(pc * (1 - pc) / n_control + pv * (1 - pv) / n_variant)
    interval = Interval(diff - Z95 * se, diff + Z95 * se)
    if se0 == 0.0:
        return TwoProportion(diff, interval, 0.0, 1.0)
    from scipy import special

    z = diff / se0
    return TwoProportion(diff, interval, z, float(2 * special.ndtr(-abs(z))))  # 2·Φ(−|z|)


def msprt_lambda(difference: float, variance: float, tau: float, null: float = 0.0) -> float:
    """The mixture likelihood ratio Λ of Johari et al. for a normal estimate.

    ``difference`` is the estimated effect, ``variance`` its variance (for two
    means, σ²_A/n_A + σ²_B/n_B), the mixing distribution N(null, τ²):
    Λ = sqrt(V / (V + τ²)) · exp(τ² (θ̂ − θ₀)² / (2 V (V + τ²))).
    With n per arm and V = 2σ²/n this is their equation for two streams.
    """
    if variance <= 0.0:
        return 1.0
    t2 = tau * tau
    exponent = t2 * (difference - null) ** 2 / (2 * variance * (variance + t2))
    if exponent > 700:  # beyond float range: the evidence is overwhelming
        return math.inf
    return math.sqrt(variance / (variance + t2)) * math.exp(exponent)


def proportion_variance(k_control: int, n_control: int, k_variant: int, n_variant: int) -> float:
    """Variance of the difference of two rates under the null (pooled), with the
    pooled rate shrunk by one pseudo-success and one pseudo-failure so that an
    all-or-nothing start (0 of 12 against 12 of 12) does not give a zero variance."""
    pooled = (k_control + k_variant + 1) / (n_control + n_variant + 2)
    return pooled * (1 - pooled) * (1 / n_control + 1 / n_variant)


class SequentialTest:
    """Always-valid p-value of "variant rate = control rate (+ null)" (mSPRT).

    Call :meth:`update` with the running counts at every look; the p-value is
    the running minimum of 1/Λ, so it never rises. ``one_sided`` counts only
    evidence that the variant's rate exceeds control's + ``null`` (the guardrail).
    """

    __slots__ = ("min_samples", "null", "one_sided", "p_value", "tau")

    def __init__(
        self,
        *,
        tau: float = DEFAULT_TAU,
        null: float = 0.0,
        one_sided: bool = False,
        min_samples: int = 10,
    ) -> None:
        self.tau = tau
        self.null = null
        self.one_sided = one_sided
        self.min_samples = min_samples
        self.p_value = 1.0

    def update(self, k_control: int, n_control: int, k_variant: int, n_variant: int) -> float:
        if min(n_control, n_variant) < self.min_samples:
            return self.p_value
        self.p_value = min(
            self.p_value, sequential_p(k_control, n_control, k_variant, n_variant, self)
        )
        return self.p_value

    def __repr__(self) -> str:
        return f"SequentialTest(p={self.p_value:.4g}, tau={self.tau}, null={self.null})"


def sequential_p(
    k_control: int, n_control: int, k_variant: int, n_variant: int, test: SequentialTest
) -> float:
    """1/Λ at one look (not yet the running minimum)."""
    if n_control <= 0 or n_variant <= 0:
        return 1.0
    diff = k_variant / n_variant - k_control / n_control
    if test.one_sided and diff <= test.null:
        return 1.0
    variance = proportion_variance(k_control, n_control, k_variant, n_variant)
    lam = msprt_lambda(diff, variance, test.tau, test.null)
    return min(1.0, 1.0 / lam) if lam > 0 else 1.0


def sequential_p_of_path(
    path: Sequence[tuple[int, int, int, int]], *, tau: float = DEFAULT_TAU, min_samples: int = 10
) -> float:
    """The always-valid p-value after a sequence of looks (running counts)."""
    test = SequentialTest(tau=tau, min_samples=min_samples)
    for look in path:
        test.update(*look)
    return test.p_value


@dataclass(frozen=True, slots=True)
class RankTest:
    median_control: float | None
    median_variant: float | None
    p95_control: float | None
    p95_variant: float | None
    u: float
    p_value: float


def quantile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolation quantile (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def mann_whitney(control: Sequence[float], variant: Sequence[float]) -> RankTest:
    """Two-sided Mann–Whitney U with tie correction (scipy's asymptotic/exact choice)."""
    mc, mv = quantile(control, 0.5), quantile(variant, 0.5)
    pc, pv = quantile(control, 0.95), quantile(variant, 0.95)
    if len(control) < 2 or len(variant) < 2 or len(set(control) | set(variant)) < 2:
        return RankTest(mc, mv, pc, pv, 0.0, 1.0)
    from scipy import stats

    res = stats.mannwhitneyu(variant, control, alternative="two-sided")
    return RankTest(mc, mv, pc, pv, float(res.statistic), float(res.pvalue))


@dataclass(frozen=True, slots=True)
class SampleRatio:
    counts: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_ALPHA


def sample_ratio(counts: Sequence[int], shares: Sequence[float]) -> SampleRatio:
    """Pearson chi-square of observed counts against the configured shares."""
    total = sum(counts)
    weight = sum(shares)
    expected = tuple(total * s / weight for s in shares) if weight > 0 else ()
    if total == 0 or len(counts) < 2 or any(e <= 0 for e in expected):
        return SampleRatio(tuple(counts), expected, 0.0, 1.0)
    from scipy import stats

    res = stats.chisquare(list(counts), list(expected))
    return SampleRatio(tuple(counts), expected, float(res.statistic), float(res.pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
