"""An experiment's report: per variant and metric, value, interval, difference
against control, p-values and a verdict; the sample-ratio check; the
per-provider breakdown. Pure: it takes the stored rows and returns data.

The verdict of a rate uses the always-valid (sequential) p-value after Holm's
correction across the variant's metrics, so reading the report at any time,
as often as one likes, keeps the false-positive rate at 5 %. Times to deliver
and latencies are compared with the Mann–Whitney rank test (a fixed-horizon
test: its p-value is exact for the data so far, not for repeated looks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from smtplb.experiments.counters import Event, Row
from smtplb.experiments.statistics import (
    DEFAULT_TAU,
    holm,
    mann_whitney,
    sample_ratio,
    two_proportion,
    wilson,
)

ALPHA = 0.05
MIN_SAMPLES = 10  # per arm, before a sequential p-value moves

# name, the outcome it counts, whether higher is better
RATE_METRICS: tuple[tuple[str, bool], ...] = (
    ("delivered", True),
    ("deferred_ever", False),
    ("bounced", False),
    ("policy_block", False),
    ("complaint", False),
)
TIME_METRICS = ("time_to_deliver", "latency")


@dataclass(frozen=True, slots=True)
class VariantInfo:
    name: str
    share: float
    strategy: str | None = None
    members: tuple[str, ...] | None = None


def _metric_steps(rows: Sequence[Row], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (adds to n, adds to k) of ``metric``."""
    outcome = np.array([r.outcome for r in rows], dtype=object)
    if metric == "complaint":  # complaints per delivered message
        dn = outcome == "delivered"
        dk = outcome == "complaint"
    else:
        dn = outcome != "complaint"
        if metric == "deferred_ever":
            dk = np.array([r.deferred_ever for r in rows], dtype=bool) & dn
        else:
            dk = outcome == metric
    return dn.astype(np.int64), dk.astype(np.int64)


def sequential_p_over_rows(
    rows: Sequence[Row],
    control: str,
    variant: str,
    metric: str,
    *,
    tau: float = DEFAULT_TAU,
    min_samples: int = MIN_SAMPLES,
) -> float:
    """The always-valid p-value of ``metric``, looking after every row (mSPRT)."""
    pair = [r for r in rows if r.variant in (control, variant)]
    if not pair:
        return 1.0
    dn, dk = _metric_steps(pair, metric)
    is_c = np.array([r.variant == control for r in pair], dtype=bool)
    nc = np.cumsum(dn * is_c)
    kc = np.cumsum(dk * is_c)
    nv = np.cumsum(dn * ~is_c)
    kv = np.cumsum(dk * ~is_c)
    looks = (nc >= min_samples) & (nv >= min_samples) & (dn > 0)
    if not looks.any():
        return 1.0
    nc, kc, nv, kv = (a[looks].astype(float) for a in (nc, kc, nv, kv))
    diff = kv / nv - kc / nc
    pooled = (kc + kv + 1) / (nc + nv + 2)
    var = pooled * (1 - pooled) * (1 / nc + 1 / nv)
    t2 = tau * tau
    log_lam = 0.5 * np.log(var / (var + t2)) + t2 * diff * diff / (2 * var * (var + t2))
    return float(min(1.0, np.exp(-np.max(log_lam))))


def _counts(rows: Sequence[Row], metric: str) -> tuple[int, int]:
    dn, dk = _metric_steps(rows, metric)
    return int(dk.sum()), int(dn.sum())


def _verdict(diff: float, p: float, higher_is_better: bool, enough: bool) -> str:
    if not enough:
        return "too few messages"
    if p >= ALPHA:
        return "no significant difference"
    better = diff > 0 if higher_is_better else diff < 0
    return "better" if better else "worse"


def build_report(
    *,
    name: str,
    pool: str,
    split: str,
    running: bool,
    variants: Sequence[VariantInfo],
    rows: Sequence[Row],
    stopped: dict[str, tuple[float, str]],
    events: Sequence[Event] = (),
    guardrail_bounce_margin: float,
) -> dict[str, Any]:
    """The whole report as JSON-ready data (the API's and ``--json``'s shape)."""
    control = variants[0].name
    by_variant: dict[str, list[Row]] = {v.name: [] for v in variants}
    for r in rows:
        by_variant.setdefault(r.variant, []).append(r)
    messages = {v: sum(1 for r in rs if r.outcome != "complaint") for v, rs in by_variant.items()}
    srm = sample_ratio([messages[v.name] for v in variants], [v.share for v in variants])
    out_variants = []
    for v in variants:
        stop = stopped.get(v.name)
        out_variants.append(
            {
                "name": v.name,
                "share": v.share,
                "strategy": v.strategy,
                "members": list(v.members) if v.members is not None else None,
                "control": v.name == control,
                "messages": messages[v.name],
                "stopped": None if stop is None else {"at": stop[0], "reason": stop[1]},
            }
        )
    metrics: list[dict[str, Any]] = []
    for v in variants:
        metrics.extend(_variant_metrics(rows, by_variant, control, v.name))
    return {
        "name": name,
        "pool": pool,
        "split": split,
        "state": "running" if running else "stopped",
        "control": control,
        "guardrail_bounce_margin": guardrail_bounce_margin,
        "messages": sum(messages.values()),
        "variants": out_variants,
        "srm": {
            "counts": list(srm.counts),
            "expected": [round(e, 2) for e in srm.expected],
            "chi2": srm.chi2,
            "p_value": srm.p_value,
            "mismatch": srm.mismatch,
        },
        "metrics": metrics,
        "providers": _providers(by_variant, [v.name for v in variants]),
        "series": _series(rows, [v.name for v in variants]),
        "events": [
            {"event": e.event, "variant": e.variant, "detail": e.detail, "at": e.at} for e in events
        ],
    }


def _variant_metrics(
    rows: Sequence[Row], by_variant: dict[str, list[Row]], control: str, variant: str
) -> list[dict[str, Any]]:
    """One variant's metrics; its p-values corrected together (Holm)."""
    out: list[dict[str, Any]] = []
    is_control = variant == control
    for metric, higher_is_better in RATE_METRICS:
        k, n = _counts(by_variant[variant], metric)
        kc, nc = _counts(by_variant[control], metric)
        ci = wilson(k, n)
        entry: dict[str, Any] = {
            "variant": variant,
            "metric": metric,
            "kind": "rate",
            "count": k,
            "n": n,
            "value": k / n if n else None,
            "interval": [ci.low, ci.high],
        }
        if not is_control:
            test = two_proportion(kc, nc, k, n)
            entry.update(
                difference=test.difference,
                difference_interval=[test.interval.low, test.interval.high],
                p_value=test.p_value,
                sequential_p=sequential_p_over_rows(rows, control, variant, metric),
                higher_is_better=higher_is_better,
                enough=min(n, nc) >= MIN_SAMPLES,
            )
        out.append(entry)
    for metric in TIME_METRICS:
        values = [getattr(r, metric) for r in by_variant[variant]]
        mine = [float(x) for x in values if x is not None]
        theirs = [float(x) for r in by_variant[control] if (x := getattr(r, metric)) is not None]
        rank = mann_whitney(theirs, mine)
        entry = {
            "variant": variant,
            "metric": metric,
            "kind": "time",
            "n": len(mine),
            "median": rank.median_variant,
            "p95": rank.p95_variant,
        }
        if not is_control:
            diff = (
                rank.median_variant - rank.median_control
                if rank.median_variant is not None and rank.median_control is not None
                else 0.0
            )
            entry.update(
                median_control=rank.median_control,
                difference=diff,
                p_value=rank.p_value,
                higher_is_better=False,
                enough=min(len(mine), len(theirs)) >= MIN_SAMPLES,
            )
        out.append(entry)
    if is_control:
        return out
    # the family: sequential p for rates, the rank test's p for times
    family = [e["sequential_p"] if e["kind"] == "rate" else e["p_value"] for e in out]
    for e, adjusted in zip(out, holm(family), strict=True):
        e["adjusted_p"] = adjusted
        e["verdict"] = _verdict(e["difference"], adjusted, e.pop("higher_is_better"), e["enough"])
    return out


def _series(rows: Sequence[Row], order: list[str], buckets: int = 40) -> dict[str, Any]:
    """The dashboard's curves: per variant and time bucket, messages and the median
    time to deliver."""
    times = [r.at for r in rows if r.outcome != "complaint"]
    if not times:
        return {"start": None, "step": None, "variants": {}}
    start, end = min(times), max(times)
    step = max((end - start) / buckets, 1.0)
    n = int((end - start) // step) + 1
    cells: dict[str, list[list[float]]] = {v: [[] for _ in range(n)] for v in order}
    counts: dict[str, list[int]] = {v: [0] * n for v in order}
    for r in rows:
        if r.outcome == "complaint" or r.variant not in cells:
            continue
        i = min(int((r.at - start) // step), n - 1)
        counts[r.variant][i] += 1
        if r.time_to_deliver is not None:
            cells[r.variant][i].append(r.time_to_deliver)
    return {
        "start": start,
        "step": step,
        "variants": {
            v: {
                "messages": counts[v],
                "time_to_deliver_median": [float(np.median(c)) if c else None for c in cells[v]],
            }
            for v in order
        },
    }


def _providers(by_variant: dict[str, list[Row]], order: list[str]) -> list[dict[str, Any]]:
    cells: dict[tuple[str, str], list[Row]] = {}
    for variant in order:
        for r in by_variant.get(variant, []):
            cells.setdefault((r.provider, variant), []).append(r)
    out = []
    control = order[0]
    for (provider, variant), rs in sorted(
        cells.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))
    ):
        entry: dict[str, Any] = {"provider": provider, "variant": variant}
        base = cells.get((provider, control), [])
        for metric, _ in RATE_METRICS:
            k, n = _counts(rs, metric)
            ci = wilson(k, n)
            entry[metric] = {"value": k / n if n else None, "interval": [ci.low, ci.high], "n": n}
            if variant != control:  # against control for the same provider (fixed horizon)
                kc, nc = _counts(base, metric)
                test = two_proportion(kc, nc, k, n)
                entry[metric].update(difference=test.difference, p_value=test.p_value)
        ttd = [r.time_to_deliver for r in rs if r.time_to_deliver is not None]
        entry["time_to_deliver_median"] = float(np.median(ttd)) if ttd else None
        if variant != control:
            base_ttd = [r.time_to_deliver for r in base if r.time_to_deliver is not None]
            entry["time_to_deliver_p_value"] = mann_whitney(base_ttd, ttd).p_value
        out.append(entry)
    return out
