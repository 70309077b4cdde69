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


def _providers(by_variant: dict[str, list[Row]], order: list[str]) -> list[dict[str, Any]]:
    cells: dict[tuple[str, str], list[Row]] = {}
    for variant in order:
        for r in by_variant.get(variant, []):
            cells.setdefault((r.provider, variant), []).append(r)
    out = []
    for (provider, variant), rs in sorted(
        cells.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))
    ):
        entry: dict[str, Any] = {"provider": provider, "variant": variant}
        for metric, _ in RATE_METRICS:
            k, n = _counts(rs, metric)
            ci = wilson(k, n)
            entry[metric] = {"value": k / n if n else None, "interval": [ci.low, ci.high], "n": n}
        ttd = [r.time_to_deliver for r in rs if r.time_to_deliver is not None]
        entry["time_to_deliver_median"] = float(np.median(ttd)) if ttd else None
        out.append(entry)
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}s"


def _p(x: float | None) -> str:
    if x is None:
        return "-"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def render_text(report: dict[str, Any]) -> str:
    """The readable table of ``smtplb experiment report NAME``."""
    lines = [
        f"experiment {report['name']} on pool {report['pool']} "
        f"(split by {report['split']}, {report['state']}): {report['messages']} messages",
    ]
    for v in report["variants"]:
        what = v["strategy"] or "pool strategy"
        if v["members"] is not None:
            what += " on " + ",".join(v["members"])
        stop = f"  STOPPED: {v['stopped']['reason']}" if v["stopped"] else ""
        role = "control" if v["control"] else "variant"
        lines.append(
            f"  {role} {v['name']}: share {v['share']:g}%, {v['messages']} messages, {what}{stop}"
        )
    srm = report["srm"]
    lines.append(
        f"sample ratio: counts {srm['counts']} expected {srm['expected']} "
        f"chi2={srm['chi2']:.3f} p={_p(srm['p_value'])} "
        + ("MISMATCH (check the assignment)" if srm["mismatch"] else "ok")
    )
    header = (
        f"{'variant':<12} {'metric':<16} {'value':>9} {'95% interval':>19} "
        f"{'diff':>9} {'p':>8} {'seq p':>8} {'adj p':>8}  verdict"
    )
    lines += ["", header, "-" * len(header)]
    for m in report["metrics"]:
        if m["kind"] == "rate":
            value = _pct(m["value"])
            interval = f"[{_pct(m['interval'][0])}, {_pct(m['interval'][1])}]"
            diff = _pct(m.get("difference")) if "difference" in m else ""
        else:
            value = _secs(m["median"])
            interval = f"p95 {_secs(m['p95'])}"
            diff = _secs(m.get("difference")) if "difference" in m else ""
        lines.append(
            f"{m['variant']:<12} {m['metric']:<16} {value:>9} {interval:>19} {diff:>9} "
            f"{_p(m.get('p_value')) if 'p_value' in m else '':>8} "
            f"{_p(m.get('sequential_p')) if 'sequential_p' in m else '':>8} "
            f"{_p(m.get('adjusted_p')) if 'adjusted_p' in m else '':>8}  "
            f"{m.get('verdict', '(control)')}"
        )
    if report["providers"]:
        lines += [
            "",
            f"{'provider':<24} {'variant':<12} {'n':>6} {'delivered':>10} "
            f"{'deferred':>9} {'bounced':>8} {'blocked':>8} {'ttd p50':>9}",
        ]
        for p in report["providers"]:
            lines.append(
                f"{p['provider']:<24} {p['variant']:<12} {p['delivered']['n']:>6} "
                f"{_pct(p['delivered']['value']):>10} {_pct(p['deferred_ever']['value']):>9} "
                f"{_pct(p['bounced']['value']):>8} {_pct(p['policy_block']['value']):>8} "
                f"{_secs(p['time_to_deliver_median']):>9}"
            )
    if report["events"]:
        lines += ["", "events:"]
        lines += [f"  {e['event']} {e['variant'] or ''} {e['detail']}" for e in report["events"]]
    lines.append("")
    lines.append(
        "seq p: always-valid (mSPRT) p-value, safe to read at any time; adj p: Holm-corrected "
        "across the variant's metrics; times: median, Mann–Whitney p."
    )
    return "\n".join(lines)
