"""Cost in pool size: one pool of 3 relay members against one of 150, same run.

    .venv/bin/python bench/pool_size.py [--messages 6000] [--runs 2] [--members 3,150]

ESP pools hold 50–500 IPs. Here every member relays onto the same three smtp-sinks
(member i onto sink i mod 3), so the upstream work is the same whatever the pool
size and only smtplb's per-member costs differ. Load: case (a) of bench/run.py
(smtp-source, 1 message per connection, 5 KB, 20 sessions); the pool sizes run
alternating. Figures: end-to-end rate, its ratio to the smallest pool's in the same
run (target ≥ 0.9) and smtplb's CPU per message (process CPU time of the smtplb
process tree ÷ messages: the main figure on a shared machine). Results go to the
"Pool size" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime

from harness import (
    SINK_HOSTS,
    SinkSet,
    SmtplbServer,
    find_tools,
    machine_info,
    section_marker,
    shown_argv,
    update_results,
)
from procs import BenchError, Workdir, become_subreaper, free_port_on_all, terminate_on_sigterm
from run import CASES, RunResult, one_run

TARGET = 0.9


def report(
    command: str,
    info: dict[str, str],
    sizes: list[int],
    results: list[RunResult],
    workers: int,
    started: datetime,
    checks: str = "",
) -> str:
    def med(size: int, metric: str) -> float:
        values = [getattr(r, metric) for r in results if r.server == f"{size} members"]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else float("nan")

    base = med(sizes[0], "e2e_rate")
    lines = [
        section_marker("poolsize"),
        "## Pool size: 3 members against 150",
        "",
        f"`{command}` on {started:%Y-%m-%d %H:%M} UTC; {info['CPU']}, smtplb {info['smtplb']},"
        f" `workers = {workers}`{checks}. Case (a) load (1 message per connection, 5 KB,"
        " 20 sessions); every member relays onto the same three smtp-sinks, pool sizes"
        " alternating. CPU is the smtplb process tree's CPU time ÷ messages; rates are"
        " wall clock on a machine shared with other work, so compare them within this run.",
        "",
        "| members | end-to-end (msg/s, median) | ratio to the smallest pool | CPU µs/msg |",
        "|---:|---:|---:|---:|",
    ]
    for size in sizes:
        rate = med(size, "e2e_rate")
        ratio = rate / base if base else float("nan")
        verdict = "" if size == sizes[0] else (" met" if ratio >= TARGET else " **missed**")
        lines.append(
            f"| {size} | {rate:,.0f} | {ratio:.2f}{verdict} |"
            f" {1000 * med(size, 'cpu_ms_per_msg'):,.0f} |"
        )
    lines += ["", "Per run:", "", "| run | members | end-to-end msg/s | CPU µs/msg |"]
    lines.append("|---:|---:|---:|---:|")
    for r in results:
        rate = f"{r.e2e_rate:,.0f}" if r.e2e_rate else "incomplete"
        lines.append(f"| {r.run} | {r.server} | {rate} | {1000 * r.cpu_ms_per_msg:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--members", default="3,150", help="pool sizes, comma separated")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1, help="smtplb's `workers` (1)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument(
        "--no-checks", action="store_true", help="[health] checks = false (active checks off)"
    )
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.members.split(",")]
    started = datetime.now(UTC)
    become_subreaper()
    case = next(c for c in CASES if c.key == "a")
    results: list[RunResult] = []
    with terminate_on_sigterm(), Workdir() as work:
        try:
            tools = find_tools(install=False)
            info = machine_info(tools, work)
            sinks = SinkSet(tools, free_port_on_all(SINK_HOSTS))
            servers = {
                size: SmtplbServer(
                    work / f"pool-{size}",
                    [sinks.relays[i % len(sinks.relays)] for i in range(size)],
                    {"health": {"checks": False}} if args.no_checks else None,
                    workers=args.workers,
                    name=f"{size} members",
                )
                for size in sizes
            }
            for run in range(1, args.runs + 1):
                for size in sizes if run % 2 else reversed(sizes):
                    t = time.perf_counter()
                    result = one_run(
                        tools,
                        servers[size],
                        sinks,
                        case,
                        run,
                        messages=args.messages,
                        sessions=args.sessions,
                        timeout=args.timeout,
                    )
                    results.append(result)
                    rate = f"{result.e2e_rate:,.0f}" if result.e2e_rate else "incomplete"
                    print(
                        f"run {run} {size:>4} members: end-to-end {rate} msg/s,"
                        f" CPU {1000 * result.cpu_ms_per_msg:,.0f} µs/msg"
                        f" ({time.perf_counter() - t:.0f} s)",
                        flush=True,
                    )
        except BenchError as exc:
            print(f"pool_size: {exc}", file=sys.stderr)
            return 1
    checks = ", active health checks off" if args.no_checks else ", active health checks on"
    text = report(
        shown_argv("bench/pool_size.py", argv), info, sizes, results, args.workers, started, checks
    )
    print(text)
    if not args.no_report:
        update_results("poolsize", text)
        print("wrote bench/RESULTS.md")
    return 0 if all(r.complete for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
