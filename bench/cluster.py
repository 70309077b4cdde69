"""smtplb with its limits embedded and shared in Redis, side by side, same runs (issue 16).

    .venv/bin/python bench/cluster.py [--messages 5000] [--runs 2] [--case a]

One smtplb node in front of the three smtp-sinks of bench/run.py, with every member in
warm-up (a day-1 cap of 10^8: never reached, but every message is taken under it) and
a provider rate on the recipients' domain (10^6 a minute: never reached, but every
message takes a token), driven by the same smtp-source load; runs alternate between
the embedded state (SQLite warm-up counts, in-process token buckets) and ``[cluster]
redis`` (a ``redis-server`` this script starts). Measured per run: accept and
end-to-end rates, smtplb's CPU per message, and the commands smtplb sent Redis
(``INFO commandstats`` before and after, without the commands Lua scripts run inside)
per delivered message, and redis-server's CPU per message. Wall-clock rates move
with the machine's other load; CPU per message does less.
"""

from __future__ import annotations

import argparse
import sys
import time

from harness import (
    SINK_HOSTS,
    RedisServer,
    SinkSet,
    SmtplbServer,
    find_tools,
    section_marker,
    update_results,
)
from procs import Workdir, free_port_on_all, reap_orphans
from run import CASES, RunResult, fmt, median, one_run

SHARED_LIMITS = """
[warmup]
schedule = [100000000]
max_hourly_share = 1.0

[[providers]]
name = "bench"
domains = ["example.net"]
rate = "1000000/m"
"""


NOTES = [
    "- Redis commands: one EVALSHA per warm-up lease (up to 8 messages) and per rate"
    " reservation (up to 5 tokens), and each worker's registration every 5 s; the commands"
    " Lua scripts run inside are not counted, a pipeline's commands count one each.",
    "- The embedded warm-up counts take one SQLite transaction per message (BEGIN"
    " IMMEDIATE, WAL): that is why smtplb's CPU per message is lower with Redis.",
    "- Wall-clock rates move with the other load on the machine (other sessions ran"
    " tests meanwhile); CPU per message moves less.",
]


def limited(config: str, redis_url: str | None) -> str:
    """The bench config with every member warming and a rate on the recipients' domain."""
    lines = []
    for line in config.splitlines():
        lines.append(line)
        if line.strip().startswith("relay = "):
            lines.append("  warmup = true")
    text = "\n".join(lines) + "\n" + SHARED_LIMITS
    if redis_url:
        text += f'\n[cluster]\nnode = "bench"\nredis = "{redis_url}"\n'
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--case", default="a", choices=[c.key for c in CASES])
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--no-report", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    case = next(c for c in CASES if c.key == args.case)
    tools = find_tools(install=False)
    rows: list[tuple[RunResult, float | None, float | None]] = []
    with Workdir(False, None) as work:
        server = RedisServer(work / "redis")
        try:
            server.start()
            sinks = SinkSet(tools, free_port_on_all(SINK_HOSTS))
            servers = {}
            for name, url in (("embedded", None), ("redis", server.url)):
                s = SmtplbServer(work / name, sinks.relays, name=name)
                s.config_text = limited(s.config_text, url)
                servers[name] = s
            for run in range(1, args.runs + 1):
                order = ("embedded", "redis") if run % 2 else ("redis", "embedded")
                for name in order:
                    since = server.usage()
                    r = one_run(
                        tools,
                        servers[name],
                        sinks,
                        case,
                        run,
                        messages=args.messages,
                        sessions=args.sessions,
                        timeout=args.timeout,
                    )
                    ops = rcpu = None
                    if name == "redis":
                        ops, rcpu_us = server.per_message(since, sum(r.counts))
                        rcpu = rcpu_us / 1000
                    rows.append((r, ops, rcpu))
                    print(
                        f"case {case.key} run {run} {name:<8} accept {fmt(r.accept_rate)} msg/s"
                        f"  end-to-end {fmt(r.e2e_rate)} msg/s  CPU {r.cpu_ms_per_msg:.3f} ms/msg"
                        f"  delivered {sum(r.counts)}"
                        + (f"  Redis {ops:.3f} commands/msg, {rcpu:.3f} ms CPU/msg" if ops else "")
                        + ("" if r.complete else "  INCOMPLETE"),
                        flush=True,
                    )
        finally:
            server.stop()
            reap_orphans()
    text = report(args, rows)
    print(text)
    if not args.no_report:
        update_results("cluster", text)
    return 0 if all(r.complete for r, _, _ in rows) else 1


def report(
    args: argparse.Namespace, rows: list[tuple[RunResult, float | None, float | None]]
) -> str:
    def med(name: str, pick: int) -> float | None:
        vals: list[float | None] = []
        for r, ops, rcpu in rows:
            if r.server == name:
                vals.append((r.accept_rate, r.e2e_rate, r.cpu_ms_per_msg, ops, rcpu)[pick])
        return median(vals)

    out = [
        section_marker("cluster"),
        "## Cluster: limits shared in Redis",
        "",
        f"`python bench/cluster.py --messages {args.messages} --runs {args.runs}"
        f" --case {args.case}` ({time.strftime('%Y-%m-%d', time.gmtime())}; one node, one"
        " worker; every member warming, a provider rate on every recipient). Medians:",
        "",
        "| | embedded | `[cluster] redis` | redis / embedded |",
        "|---|---:|---:|---:|",
    ]
    for label, pick, spec in (
        ("accept rate (msg/s)", 0, ",.0f"),
        ("end-to-end rate (msg/s)", 1, ",.0f"),
        ("smtplb CPU per message (ms)", 2, ".3f"),
    ):
        a, b = med("embedded", pick), med("redis", pick)
        share = "—" if a is None or b is None or not a else f"{b / a:.2f}×"
        out.append(f"| {label} | {fmt(a, spec)} | {fmt(b, spec)} | {share} |")
    out.append(f"| Redis commands per delivered message | — | {fmt(med('redis', 3), '.3f')} | |")
    out.append(f"| redis-server CPU per message (ms) | — | {fmt(med('redis', 4), '.3f')} | |")
    out += ["", *NOTES]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
