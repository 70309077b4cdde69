"""The guardrail: stop a variant whose bounce or policy-block rate exceeds
control's by more than ``guardrail_bounce_margin``, with significance.

"With significance" is a one-sided always-valid test (mSPRT, centred on the
margin): the guardrail looks after every batch of results, for as long as the
experiment runs, and may still stop a good variant by chance no more often
than ``alpha``. Pure: counts in, the variants to stop out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from smtplb.experiments.statistics import SequentialTest

GUARDRAIL_METRICS = ("bounced", "policy_block")
GUARDRAIL_TAU = 0.1  # a harmful variant is far off, not a fraction of a percent
GUARDRAIL_ALPHA = 0.05


class Guardrail:
    """Running one-sided sequential tests per (variant, metric) against control."""

    def __init__(
        self,
        control: str,
        variants: Sequence[str],
        margin: float,
        *,
        alpha: float = GUARDRAIL_ALPHA,
        min_samples: int = 10,
    ) -> None:
        self.control = control
        self.margin = margin
        self.alpha = alpha
        self.tests = {
            (v, m): SequentialTest(
                tau=GUARDRAIL_TAU, null=margin, one_sided=True, min_samples=min_samples
            )
            for v in variants
            if v != control
            for m in GUARDRAIL_METRICS
        }

    def check(
        self, counts: Mapping[tuple[str, str], int], stopped: Sequence[str] = ()
    ) -> list[tuple[str, str]]:
        """(variant, reason) for each running variant that must stop now."""

        def n(variant: str) -> int:
            return sum(c for (v, o), c in counts.items() if v == variant and o != "complaint")

        nc = n(self.control)
        out: list[tuple[str, str]] = []
        for (variant, metric), test in self.tests.items():
            if variant in stopped or any(v == variant for v, _ in out):
                continue
            nv = n(variant)
            kc = counts.get((self.control, metric), 0)
            kv = counts.get((variant, metric), 0)
            p = test.update(kc, nc, kv, nv)
            if p < self.alpha:
                out.append(
                    (
                        variant,
                        f"guardrail: {metric} rate {kv}/{nv} = {kv / nv:.1%} exceeds control's "
                        f"{kc}/{nc} = {kc / nc:.1%} by more than {self.margin:.1%} "
                        f"(always-valid p = {p:.4f} < {self.alpha})",
                    )
                )
        return out

    def __repr__(self) -> str:
        return f"Guardrail(control={self.control!r}, margin={self.margin}, {len(self.tests)} tests)"
