"""The report as a readable table (``smtplb experiment report NAME``).

Kept apart from the statistics so that the command line renders a report it
got from the API without importing scipy.
"""

from __future__ import annotations

from typing import Any

RATES = ("delivered", "deferred_ever", "bounced", "policy_block", "complaint")


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
            f"{'deferred':>9} {'bounced':>8} {'blocked':>8} {'ttd p50':>9} {'min p':>8}",
        ]
        for p in report["providers"]:
            tests = [p[m]["p_value"] for m in RATES if "p_value" in p[m]]
            if "time_to_deliver_p_value" in p:
                tests.append(p["time_to_deliver_p_value"])
            lines.append(
                f"{p['provider']:<24} {p['variant']:<12} {p['delivered']['n']:>6} "
                f"{_pct(p['delivered']['value']):>10} {_pct(p['deferred_ever']['value']):>9} "
                f"{_pct(p['bounced']['value']):>8} {_pct(p['policy_block']['value']):>8} "
                f"{_secs(p['time_to_deliver_median']):>9} {_p(min(tests)) if tests else '':>8}"
            )
    if report["events"]:
        lines += ["", "events:"]
        lines += [f"  {e['event']} {e['variant'] or ''} {e['detail']}" for e in report["events"]]
    lines.append("")
    lines.append(
        "seq p: always-valid (mSPRT) p-value, safe to read at any time; adj p: Holm-corrected "
        "across the variant's metrics; times: median, Mann–Whitney p. Per provider, min p: "
        "the smallest uncorrected p-value against control for that provider (a pointer, "
        "not a verdict)."
    )
    return "\n".join(lines)
