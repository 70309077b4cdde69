"""What each feature costs, case (a), against plain smtplb in the same runs (issue 17, item 6).

    .venv/bin/python bench/features.py [--messages 20000] [--runs 2]

The load of bench/run.py's case (a) (smtp-source, 20 sessions, 1 message per connection,
5 KB) into the same three smtp-sinks, spread over four recipient domains (one
smtp-source per domain, 5 sessions each), for every server alike. The servers, all with
the default configuration (no ``workers`` key) plus one feature each, alternate within
each run (odd runs in the order below, even runs reversed):

- ``smtplb``: nothing added (the four domains are no provider of its table).
- ``smtplb-suppress``: 1,000,000 addresses on the suppression list (``suppression.db``),
  none of them a recipient: a lookup per recipient at RCPT.
- ``smtplb-dkim-rsa`` / ``smtplb-dkim-ed``: every message signed (RSA-2048 / Ed25519).
- ``smtplb-providers``: a provider table naming the four domains (two providers, a rate
  per member far above the load, three response rules): recognition, a rate token and
  the rules on every message.
- ``smtplb-redis``: the same provider table with ``[cluster] redis`` (a redis-server this
  script starts): the rate tokens are leased from Redis. Also measured: commands sent to
  Redis and redis-server's CPU, per delivered message.

Reported per server: end-to-end rate and its ratio to plain smtplb in the same runs, and
server CPU per message (wall-clock rates move with the machine's other load; CPU per
message moves less). Results go to bench/RESULTS.md (section ``features``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from harness import (
    SINK_HOSTS,
    RedisServer,
    Server,
    SinkSet,
    SmtplbServer,
    Tools,
    find_tools,
    machine_info,
    section_marker,
    shown,
    shown_argv,
    source_command,
    split_load,
    suppression_db,
    update_results,
)
from procs import (
    BenchError,
    Workdir,
    become_subreaper,
    free_port_on_all,
    reap_orphans,
    terminate_on_sigterm,
)
from run import CASES, DKIM_SERVERS, RunResult, dkim_server, fmt, median, one_run, per_run_table

PLAIN = "smtplb"
DOMAINS = ("a.mail.bench.test", "b.mail.bench.test", "c.mail.bench.test", "d.mail.bench.test")
PROVIDERS = """
[[providers]]
name = "bench-one"
domains = ["a.mail.bench.test", "b.mail.bench.test"]
rate = "1000000/m"
  [[providers.rules]]
  match = "4\\\\.7\\\\.28"
  action = "suspend"
  duration = "1h"
  [[providers.rules]]
  match = "^421 .*(too many|rate)"
  action = "throttle"

[[providers]]
name = "bench-two"
domains = ["c.mail.bench.test", "d.mail.bench.test"]
rate = "1000000/m"
  [[providers.rules]]
  match = "5\\\\.7\\\\.1 .*(spam|blocked)"
  action = "bounce"
"""
WHAT = {
    PLAIN: "nothing added",
    "smtplb-suppress": "{suppressions:,} addresses on the suppression list",
    "smtplb-dkim-rsa": "DKIM signing, RSA-2048",
    "smtplb-dkim-ed": "DKIM signing, Ed25519",
    "smtplb-providers": "provider table: 2 providers, 4 domains, rates, 3 rules",
    "smtplb-redis": "the provider table and `[cluster] redis`",
}

Row = tuple[RunResult, float | None, float | None]  # the run, Redis commands/msg, its CPU µs/msg


def build_servers(
    work: Path, relays: list[str], redis_url: str, suppressions: int, workers: int | None
) -> list[SmtplbServer]:
    def plain(name: str, prefill: Path | None = None) -> SmtplbServer:
        return SmtplbServer(work / name, relays, workers=workers, name=name, prefill=prefill)

    suppress = plain(
        "smtplb-suppress", suppression_db(work / "suppressed" / "list.db", suppressions)
    )
    providers = plain("smtplb-providers")
    providers.config_text += PROVIDERS
    clustered = plain("smtplb-redis")
    clustered.config_text += PROVIDERS + f'\n[cluster]\nnode = "bench"\nredis = "{redis_url}"\n'
    signing = [dkim_server(work, relays, workers, name) for name in DKIM_SERVERS]
    return [plain(PLAIN), suppress, *signing, providers, clustered]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="per run and server")
    parser.add_argument("--runs", type=int, default=2, help="runs per server (2)")
    parser.add_argument("--sessions", type=int, default=20, help="in all, over the domains")
    parser.add_argument("--suppressions", type=int, default=1_000_000, help="list size (1M)")
    parser.add_argument(
        "--smtplb-workers", type=int, default=None, help="default: the key left out"
    )
    parser.add_argument("--timeout", type=float, default=600, help="per run, seconds (600)")
    parser.add_argument("--no-report", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    case = CASES[0]
    started, t_start = datetime.now(UTC), time.perf_counter()
    become_subreaper()
    rows: list[Row] = []
    try:
        tools = find_tools(install=False)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    with terminate_on_sigterm(), Workdir(False, None) as work:
        redis = RedisServer(work / "redis")
        sinks = SinkSet(tools, free_port_on_all(SINK_HOSTS))
        try:
            redis.start()
            t0 = time.perf_counter()
            servers = build_servers(
                work, sinks.relays, redis.url, args.suppressions, args.smtplb_workers
            )
            print(f"servers set up in {time.perf_counter() - t0:.1f} s", flush=True)
            info = machine_info(tools, work)
            for run in range(1, args.runs + 1):
                order: list[Server] = list(servers if run % 2 else reversed(servers))
                for server in order:
                    since = redis.usage()
                    r = one_run(
                        tools,
                        server,
                        sinks,
                        case,
                        run,
                        messages=args.messages,
                        sessions=args.sessions,
                        timeout=args.timeout,
                        domains=DOMAINS,
                    )
                    ops = rcpu = None
                    if server.name == "smtplb-redis":
                        ops, rcpu = redis.per_message(since, sum(r.counts))
                    rows.append((r, ops, rcpu))
                    print(
                        f"run {run} {server.name:<16} end-to-end {fmt(r.e2e_rate):>6} msg/s"
                        f"  CPU {1000 * r.cpu_ms_per_msg:,.0f} µs/msg"
                        f"  sinks {'/'.join(map(str, r.counts))}"
                        + (f"  Redis {ops:.3f} commands/msg, {rcpu:.0f} µs/msg" if ops else "")
                        + ("" if r.complete else "  INCOMPLETE"),
                        flush=True,
                    )
        except KeyboardInterrupt:
            print("interrupted: servers and sinks stopped", file=sys.stderr)
            return 130
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        finally:
            sinks.stop()
            redis.stop()
            reap_orphans()
        first = servers[0]
        plain_config = (
            first.config_text.replace(str(work), "$WORK")
            .replace(f":{first.port}", ":SMTPLB_PORT")
            .replace(f":{first.http_port}", ":HTTP_PORT")
            .replace(f":{sinks.port}", ":SINK_PORT")
        )
    wall = time.perf_counter() - t_start
    text = report(args, shown_argv("bench/features.py", argv), info, rows, started, wall)
    text += _config_lines(tools, args, plain_config)
    print("\n".join(table(rows, args.suppressions)))
    if not args.no_report and rows:
        update_results("features", text)
        print("wrote bench/RESULTS.md")
    print(f"done in {wall / 60:.1f} minutes")
    return 0 if all(r.complete for r, _, _ in rows) else 1


def table(rows: list[Row], suppressions: int) -> list[str]:
    def med(name: str, metric: Callable[[Row], float | None]) -> float | None:
        return median([metric(row) for row in rows if row[0].server == name])

    base = med(PLAIN, lambda row: row[0].e2e_rate)
    lines = [
        "| server | what it adds | end-to-end msg/s | ratio to plain | CPU µs/msg"
        " | CPU ratio | Redis commands/msg | redis-server µs/msg |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    base_cpu = med(PLAIN, lambda row: 1000 * row[0].cpu_ms_per_msg)
    for name, what in WHAT.items():
        rate = med(name, lambda row: row[0].e2e_rate)
        cpu = med(name, lambda row: 1000 * row[0].cpu_ms_per_msg)
        share = "—" if rate is None or not base else f"{rate / base:.2f}×"
        cpu_share = "—" if cpu is None or not base_cpu else f"{cpu / base_cpu:.2f}×"
        ops, rcpu = med(name, lambda row: row[1]), med(name, lambda row: row[2])
        lines.append(
            f"| {name} | {what.format(suppressions=suppressions)} | {fmt(rate)} | {share}"
            f" | {fmt(cpu)} | {cpu_share} | {fmt(ops, '.3f')} | {fmt(rcpu)} |"
        )
    return lines


def report(
    args: argparse.Namespace,
    command: str,
    info: dict[str, str],
    rows: list[Row],
    started: datetime,
    wall: float,
) -> str:
    out = [
        section_marker("features"),
        "## Feature costs, case (a): each feature against plain smtplb, same runs",
        "",
        "Written by `bench/features.py` (issue 17, item 6). One command runs it all;"
        " servers alternate within each run (odd runs in the table's order, even runs"
        " reversed), each starting fresh (empty spool) in front of fresh sinks.",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC, {wall / 60:.1f} minutes in all",
        f"- Command: `{command}`",
        f"- Messages per run and server: {args.messages:,}; runs: {args.runs};"
        f" smtp-source sessions: {args.sessions} in all, over {len(DOMAINS)} recipient"
        " domains (one smtp-source each); smtplb workers: "
        + ("not set (default)" if args.smtplb_workers is None else str(args.smtplb_workers)),
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        *(
            [
                f"**A smoke run** ({args.messages:,} messages, {args.runs} run): a check that"
                " the script works, not a measurement. The measurement is"
                " `python bench/features.py` (20,000 messages, 2 runs) on a quiet machine.",
                "",
            ]
            if args.messages < 5000 or args.runs < 2
            else []
        ),
        "Medians of the runs:",
        "",
        *table(rows, args.suppressions),
        "",
        "### Method",
        "",
        "- **End-to-end rate**: messages ÷ seconds from starting the load until the three"
        " sinks have counted every message (as in the `run` section). **CPU µs/msg**:"
        " user + system CPU of smtplb's process tree from the start of the load to 1 s"
        " after the last message reached a sink, ÷ messages delivered. The ratios are to"
        " `smtplb` (plain) in the same runs; wall-clock rates move with the machine's"
        " other load, CPU per message moves less: read the CPU ratio first.",
        "- **Load**: `bench/run.py`'s case (a), 1 message per connection, 5 KB, split into"
        f" one smtp-source per recipient domain ({', '.join(DOMAINS)}), the same for every"
        " server, so the plain server is measured under the same spread of domains.",
        "- **smtplb-suppress**: the list (`suppression.db` in `data_dir`, where smtplb"
        " reads it) is made once with `harness.suppression_db` and copied in at each"
        " fresh start; its addresses are `suppressedN@list.bench.test`, no recipient.",
        "- **smtplb-dkim-rsa / -ed**: a key made by `smtplb dkim keygen example.com bench"
        " -a rsa|ed25519`, a `[[dkim]]` entry for example.com (smtp-source's sender).",
        "- **smtplb-providers**: the `[[providers]]` entries below name the four domains;"
        " every message is recognised by its domain, takes a rate token and its replies"
        " run through the rules (none matches a 250).",
        "- **smtplb-redis**: the same table plus `[cluster] redis` on a redis-server (no"
        " persistence) started by the script: the rate tokens are leased from Redis."
        " Redis commands per message: `INFO commandstats` calls before and after the run"
        " (start-up, registration and heartbeats included), without the commands Lua"
        " scripts run inside EVALSHA; redis-server's CPU over the same span.",
        "",
        "### Every run",
        "",
        *per_run_table([r for r, _, _ in rows]),
        "",
    ]
    return "\n".join(out) + "\n"


def _config_lines(tools: Tools, args: argparse.Namespace, plain_config: str) -> str:
    loads = split_load(args.messages, args.sessions, DOMAINS)
    cmd = source_command(
        tools,
        0,
        messages=loads[0][0],
        size=CASES[0].size,
        sessions=loads[0][1],
        per_connection=False,
        recipient=f"rcpt@{loads[0][2]}",
    )
    return "\n".join(
        [
            "### Commands and configuration",
            "",
            "Load, per domain (here the first):"
            f" `{shown(cmd).replace('127.0.0.1:0', '127.0.0.1:PORT')}`",
            "",
            "Plain smtplb (`smtplb run -c $WORK/smtplb.toml`); each other server adds its"
            " part to this:",
            "",
            "```",
            plain_config.rstrip(),
            "```",
            "",
            'smtplb-providers adds (smtplb-redis too, with `[cluster]` `node = "bench"`,'
            ' `redis = "redis://127.0.0.1:PORT/0"`):',
            "",
            "```",
            PROVIDERS.strip(),
            "```",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
