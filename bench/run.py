"""smtplb against Postfix, side by side, same machine, same run (SPEC §5).

    .venv/bin/python bench/run.py [--messages 20000] [--runs 2] [--cases abcd] [--quick]

Three Postfix smtp-sinks on 127.0.0.2, .3 and .4 are the upstreams. In front of them, in
turn: a throwaway Postfix relay instance (its own config, queue and data directories in a
temporary directory; default durability) and smtplb (round robin over three relay
members). Each is driven by the same smtp-source load, runs alternating, and measured:
accept rate (until smtp-source is done), end-to-end rate (until the sinks have counted
every message), server CPU per message and peak memory. Results go to bench/RESULTS.md.
Needs root (Postfix's master) and installs the Debian package postfix when missing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness import (
    RECIPIENT,
    SINK_HOSTS,
    HaproxyTcp,
    PostfixRelay,
    Server,
    SinkSet,
    SmtplbServer,
    Tools,
    find_haproxy,
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
    MemorySampler,
    Workdir,
    become_subreaper,
    free_port,
    free_port_on_all,
    machine_busy,
    reap_orphans,
    stop_process,
    terminate_on_sigterm,
    tree_cpu,
)

SERVERS = ("smtplb", "Postfix", "HAProxy")
BASELINE = "smtplb-base"  # another build of smtplb (--baseline), for a before/after figure
# --dkim: smtplb again, signing every message (smtp-source's From is bench@example.com)
DKIM_SERVERS = {"smtplb-dkim-rsa": ("rsa", "RSA-2048"), "smtplb-dkim-ed": ("ed25519", "Ed25519")}
SETTLE = 1.0  # seconds after the last sink count before the final CPU reading


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    size: int
    per_connection: bool  # smtp-source -d: next message on the same connection
    share: float  # of --messages: the 50 KB cases send half as many, to bound the time

    def messages(self, n: int) -> int:
        return max(1, round(n * self.share))


CASES = (
    Case("a", "1 message per connection, 5 KB", 5120, False, 1.0),
    Case("b", "many messages per connection, 5 KB", 5120, True, 1.0),
    Case("c", "1 message per connection, 50 KB", 51200, False, 0.5),
    Case("d", "many messages per connection, 50 KB", 51200, True, 0.5),
)


@dataclass
class RunResult:
    case: str
    server: str
    run: int
    messages: int
    accept_s: float | None  # smtp-source start to exit
    e2e_s: float | None  # smtp-source start to the last message counted at the sinks
    cpu_s: float
    peak_rss: int
    peak_pss: int
    processes: int
    machine_busy_s: float
    counts: list[int]
    source_rc: int | None
    source_err: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.e2e_s is not None and self.source_rc == 0

    @property
    def accept_rate(self) -> float | None:
        return self.messages / self.accept_s if self.accept_s and self.source_rc == 0 else None

    @property
    def e2e_rate(self) -> float | None:
        return self.messages / self.e2e_s if self.e2e_s and self.complete else None

    @property
    def cpu_ms_per_msg(self) -> float:
        return 1000 * self.cpu_s / max(1, sum(self.counts))

    @property
    def cores_used(self) -> float | None:
        return self.cpu_s / self.e2e_s if self.e2e_s else None

    @property
    def elapsed(self) -> float:
        return max(self.accept_s or 0, self.e2e_s or 0)


def one_run(
    tools: Tools,
    server: Server,
    sinks: SinkSet,
    case: Case,
    run: int,
    *,
    messages: int,
    sessions: int,
    timeout: float,
    domains: Sequence[str] = (),
) -> RunResult:
    """One server, one load: a single smtp-source, or with ``domains`` one per recipient
    domain sharing the messages and sessions out (``harness.split_load``)."""
    sinks.start()
    srcs: list[subprocess.Popen[bytes]] = []
    server.start()
    try:
        time.sleep(SETTLE)  # start-up work stays out of the measurement
        loads = split_load(messages, sessions, domains) if domains else [(messages, sessions, "")]
        cmds = [
            source_command(
                tools,
                server.port,
                messages=m,
                size=case.size,
                sessions=n,
                per_connection=case.per_connection,
                recipient=f"rcpt@{d}" if d else RECIPIENT,
            )
            for m, n, d in loads
        ]
        cpu0, busy0 = tree_cpu(server.pid), machine_busy()
        accept = e2e = None
        with MemorySampler(server.pid) as memory:
            t0 = time.perf_counter()
            srcs = [
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for cmd in cmds
            ]
            deadline, last_total, last_change = t0 + timeout, -1, t0
            while True:
                now = time.perf_counter()
                if accept is None and all(src.poll() is not None for src in srcs):
                    accept = now - t0
                total = sinks.total()
                if e2e is None and total >= messages:
                    e2e = now - t0
                if total != last_total:
                    last_total, last_change = total, now
                if accept is not None and e2e is not None:
                    break
                if now > deadline:
                    break
                if accept is not None and _source_rc(srcs) != 0 and now - last_change > 10:
                    break  # smtp-source gave up; what it did send has arrived
                time.sleep(0.002)
            busy1 = machine_busy()
            time.sleep(SETTLE)
            cpu1 = tree_cpu(server.pid)
        for src in srcs:
            stop_process(src, 5)
        err = "".join(src.stderr.read().decode(errors="replace") for src in srcs if src.stderr)
        return RunResult(
            case=case.key,
            server=server.name,
            run=run,
            messages=messages,
            accept_s=accept,
            e2e_s=e2e,
            cpu_s=cpu1 - cpu0,
            peak_rss=server.peak_rss_note(memory.peak),
            peak_pss=memory.peak.pss,
            processes=memory.peak.processes,
            machine_busy_s=busy1 - busy0,
            counts=sinks.counts(),
            source_rc=_source_rc(srcs),
            source_err=err.strip()[-500:],
            warnings=server.warnings(),
        )
    finally:
        for src in srcs:
            stop_process(src, 5)
        server.stop()
        sinks.stop()
        reap_orphans()


def _source_rc(srcs: Sequence[subprocess.Popen[bytes]]) -> int | None:
    """The load's exit status: None while one runs, else the first non-zero, else 0."""
    codes = [src.poll() for src in srcs]
    if None in codes:
        return None
    return next((c for c in codes if c), 0)


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "—" if value is None else format(value, spec)


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}×"


def summary_table(results: list[RunResult]) -> list[str]:
    by_server = {name: [r for r in results if r.server == name] for name in ("smtplb", "Postfix")}

    def med(name: str, metric: Callable[[RunResult], float | None]) -> float | None:
        return median([metric(r) for r in by_server[name]])

    rows: list[tuple[str, Callable[[RunResult], float | None], str, str]] = [
        ("accept rate (msg/s)", lambda r: r.accept_rate, ",.0f", "higher is better"),
        ("end-to-end rate (msg/s)", lambda r: r.e2e_rate, ",.0f", "higher is better"),
        ("server CPU per message (ms)", lambda r: r.cpu_ms_per_msg, ".3f", "lower is better"),
        ("server CPU use (cores)", lambda r: r.cores_used, ".2f", "CPU s ÷ elapsed s"),
        ("peak RSS (MB)", lambda r: r.peak_rss / 1e6, ",.1f", "sum over processes"),
        ("peak PSS (MB)", lambda r: r.peak_pss / 1e6, ",.1f", "shared pages split"),
        (
            "machine CPU busy (% of all cores)",
            lambda r: 100 * r.machine_busy_s / (max(r.elapsed, 1e-9) * _cores()),
            ".0f",
            "server + smtp-source + sinks + anything else",
        ),
    ]
    lines = [
        "| metric (median of runs) | smtplb | Postfix | smtplb / Postfix |",
        "|---|---:|---:|---:|",
    ]
    for label, metric, spec, _note in rows:
        s, p = med("smtplb", metric), med("Postfix", metric)
        lines.append(f"| {label} | {fmt(s, spec)} | {fmt(p, spec)} | {ratio(s, p)} |")
    return lines


def reference_lines(results: list[RunResult]) -> list[str]:
    """HAProxy in TCP mode, where it ran: the cost of passing the bytes through."""

    def med(name: str, metric: Callable[[RunResult], float | None]) -> float | None:
        return median([metric(r) for r in results if r.server == name])

    rate = med("HAProxy", lambda r: r.e2e_rate)
    if rate is None:
        return []
    us = {name: med(name, lambda r: 1000 * r.cpu_ms_per_msg) for name in SERVERS}
    return [
        "Reference: HAProxy in TCP mode in front of the same sinks, which passes each"
        " connection through and stores nothing (no SMTP, no fsync), moved"
        f" {rate:,.0f} msg/s end to end. CPU per message (median): HAProxy"
        f" {fmt(us['HAProxy'])} µs, smtplb {fmt(us['smtplb'])} µs, Postfix"
        f" {fmt(us['Postfix'])} µs.",
        "",
    ]


def baseline_lines(results: list[RunResult], label: str) -> list[str]:
    """This build against the --baseline build, where it ran: the before/after of a change."""

    def med(name: str, metric: Callable[[RunResult], float | None]) -> float | None:
        return median([metric(r) for r in results if r.server == name])

    base = med(BASELINE, lambda r: r.e2e_rate)
    if base is None:
        return []
    now = med("smtplb", lambda r: r.e2e_rate)
    cpu_base = med(BASELINE, lambda r: 1000 * r.cpu_ms_per_msg)
    cpu_now = med("smtplb", lambda r: 1000 * r.cpu_ms_per_msg)
    return [
        f"Before/after: the baseline build ({label}) moved {fmt(base)} msg/s end to end at"
        f" {fmt(cpu_base)} µs CPU per message; this build {fmt(now)} msg/s at"
        f" {fmt(cpu_now)} µs ({ratio(now, base)} of the baseline's rate).",
        "",
    ]


def dkim_lines(results: list[RunResult]) -> list[str]:
    """DKIM signing on against off, where --dkim ran (the same runs, so the same load)."""

    def med(name: str, metric: Callable[[RunResult], float | None]) -> float | None:
        return median([metric(r) for r in results if r.server == name])

    off = med("smtplb", lambda r: r.e2e_rate)
    if off is None or not any(r.server in DKIM_SERVERS for r in results):
        return []
    cpu_off = med("smtplb", lambda r: 1000 * r.cpu_ms_per_msg)
    out = [
        "DKIM signing cost (`--dkim`, same runs): signing off"
        f" {fmt(off)} msg/s end to end at {fmt(cpu_off)} µs CPU per message;"
    ]
    for name, (_, label) in DKIM_SERVERS.items():
        rate = med(name, lambda r: r.e2e_rate)
        cpu = med(name, lambda r: 1000 * r.cpu_ms_per_msg)
        if rate is not None:
            out.append(f" {label} {fmt(rate)} msg/s at {fmt(cpu)} µs ({ratio(rate, off)} of off);")
    return ["".join(out).rstrip(";") + ".", ""]


def dkim_server(work: Path, relays: Sequence[str], workers: int | None, name: str) -> SmtplbServer:
    """smtplb signing all mail From example.com with a new key of the given algorithm."""
    algorithm = DKIM_SERVERS[name][0]
    server = SmtplbServer(work / name, relays, workers=workers, name=name)
    server.work.mkdir(parents=True, exist_ok=True)
    key = server.work / "keys" / "example.com.bench.pem"
    if not key.exists():
        subprocess.run(
            [*server.command, "dkim", "keygen", "example.com", "bench", "-a", algorithm],
            cwd=server.work,
            check=True,
            capture_output=True,
        )
    server.config_text += f'\n[[dkim]]\ndomain = "example.com"\nselector = "bench"\nkey = "{key}"\n'
    return server


def observations(
    results: list[RunResult], cases: list[Case], args_workers: int | None = 1
) -> list[str]:
    """What the tables say, computed from them (the numbers are medians of runs)."""

    def med(server: str, case: str, metric: Callable[[RunResult], float | None]) -> float | None:
        return median([metric(r) for r in results if r.server == server and r.case == case])

    def spread(metric: Callable[[RunResult], float | None]) -> tuple[float, float] | None:
        ratios = []
        for case in cases:
            s, p = med("smtplb", case.key, metric), med("Postfix", case.key, metric)
            if s is not None and p:
                ratios.append(s / p)
        return (min(ratios), max(ratios)) if ratios else None

    notes = []
    rate = spread(lambda r: r.e2e_rate)
    cpu = spread(lambda r: r.cpu_ms_per_msg)
    if rate and cpu:
        notes.append(
            f"- End to end, smtplb moved {rate[0]:.2f}–{rate[1]:.2f}× as many messages per"
            f" second as Postfix across the cases, at {cpu[0]:.2f}–{cpu[1]:.2f}× its CPU per"
            " message."
        )
    s_cores = [r.cores_used for r in results if r.server == "smtplb" and r.cores_used]
    p_cores = [r.cores_used for r in results if r.server == "Postfix" and r.cores_used]
    if s_cores and p_cores:
        notes.append(
            f"- smtplb used {min(s_cores):.2f}–{max(s_cores):.2f} cores"
            f" ({workers_label(args_workers)} worker"
            " process(es), each an event loop plus a spool writer thread), Postfix"
            f" {min(p_cores):.2f}–{max(p_cores):.2f} cores over its ~100 processes. On"
            f" {_cores()} cores the load generator and the sinks need the rest: the machine"
            " is the ceiling for both, so the ratio follows CPU per message."
        )
    notes += [
        "- smtplb spreads round robin: a third per sink (± 1). Postfix's `randmap` picks a",
        "  sink at random per recipient, so its split varies by a few percent.",
        "- Postfix's RSS sum counts its shared program and library pages once per process",
        "  (~100 processes); its PSS is the fair memory figure. smtplb's RSS includes the",
        "  spool pages SQLite maps (`mmap_size`), which grow with the spool file up to the",
        "  mapping's size: clean file pages, not heap.",
        "- Postfix's defaults include `in_flow_delay = 1s`: when its queue manager falls",
        "  behind, smtpd waits up to a second before accepting the next message, so accept",
        "  and end-to-end rates stay close. It was left on (a default).",
    ]
    return notes


def workers_label(workers: int | None) -> str:
    """``workers`` as configured: None is the key left out (smtplb's default)."""
    return str(workers) if workers is not None else f"not set (default: auto, {_cores()})"


def _cores() -> int:
    return os.cpu_count() or 1


def per_run_table(results: list[RunResult]) -> list[str]:
    lines = [
        "| case | run | server | accept msg/s | end-to-end msg/s | accept s | e2e s"
        " | CPU s | CPU ms/msg | peak RSS MB | peak PSS MB | procs | sinks (.2/.3/.4) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.case} | {r.run} | {r.server} | {fmt(r.accept_rate)} | {fmt(r.e2e_rate)}"
            f" | {fmt(r.accept_s, '.2f')} | {fmt(r.e2e_s, '.2f')} | {r.cpu_s:.2f}"
            f" | {r.cpu_ms_per_msg:.3f} | {r.peak_rss / 1e6:,.1f} | {r.peak_pss / 1e6:,.1f}"
            f" | {r.processes} | {'/'.join(map(str, r.counts))} |"
        )
    return lines


def report(
    args: argparse.Namespace,
    command: str,
    info: dict[str, str],
    results: list[RunResult],
    cases: list[Case],
    commands: dict[str, str],
    configs: dict[str, str],
    started: datetime,
    wall: float,
) -> str:
    out = [
        section_marker("run"),
        "# smtplb vs Postfix — benchmark results",
        "",
        "Written by `bench/run.py` (SPEC §5). Same machine, same run, same load, same three",
        "`smtp-sink` upstreams; runs alternate between the servers. Both servers fsync",
        "every accepted message before answering `250` (Postfix's default durability,",
        "smtplb's content segment fdatasync'ed before its SQLite WAL commit, `synchronous=FULL`).",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC, {wall / 60:.1f} minutes in all",
        f"- Command: `{command}`",
        f"- Messages per run: {args.messages:,} (5 KB cases), {args.messages // 2:,} (50 KB"
        f" cases); runs per server and case: {args.runs};"
        f" smtp-source sessions: {args.sessions};"
        f" smtplb workers: {workers_label(args.smtplb_workers)}",
    ]
    out += [f"- {k}: {v}" for k, v in info.items()]
    out += [
        "",
        "Other work may share the machine while this runs: figures are noisy, compare",
        "the two servers within a run rather than across runs, and read the per-run",
        "table before trusting a ratio.",
        "",
    ]
    for case in cases:
        case_results = [r for r in results if r.case == case.key]
        if not case_results:
            continue
        out += [
            f"## Case ({case.key}): {case.title}",
            "",
            f"`{commands[case.key]}`",
            "",
            *summary_table(case_results),
            "",
            *reference_lines(case_results),
            *baseline_lines(case_results, args.baseline_label),
            *dkim_lines(case_results),
        ]
        incomplete = [r for r in case_results if not r.complete]
        for r in incomplete:
            out.append(
                f"- **Incomplete**: {r.server} run {r.run}: sinks counted {sum(r.counts):,}"
                f" of {r.messages:,}; smtp-source exit {r.source_rc}"
                f"{': ' + r.source_err if r.source_err else ''}"
            )
        if incomplete:
            out.append("")
    out += ["## Notes", "", *observations(results, cases, args.smtplb_workers), ""]
    out += ["## Every run", "", *per_run_table(results), ""]
    notes = []
    for name in ("smtplb", "Postfix"):
        warnings = sorted({w for r in results if r.server == name for w in r.warnings})
        if warnings:
            notes.append(f"- {name} logged {len(warnings)} distinct warnings/errors, e.g.:")
            notes += [f"  `{_scrub(w)[:200]}`" for w in warnings[:5]]
    out += [
        "## Method",
        "",
        "- **Accept rate**: messages ÷ seconds from starting `smtp-source` until it exits",
        "  (it has read the `250` of its last message).",
        "- **End-to-end rate**: messages ÷ seconds from starting `smtp-source` until the three",
        "  sinks together have counted every message. Each `smtp-sink -c` prints its",
        "  running `mesg=` counter whenever it receives a message's final `.`; the bench reads",
        "  those counters from the sinks' stdout, so the count is exact, not sampled.",
        "- **Server CPU per message**: user + system CPU of the server's processes between",
        "  the start of the load and 1 s after the last message reached a sink, ÷ messages.",
        "  From `/proc/PID/stat`: for every live process of the server's tree (the root and",
        "  all descendants) utime + stime, plus cutime + cstime — the CPU of children it has",
        "  already reaped. smtplb is one process (threads included). For Postfix the root is",
        "  `master`, run in the foreground as the bench's child; it reaps every daemon that",
        "  exits (smtpd, cleanup, smtp… after max_idle/max_use), so those are in its cutime,",
        "  and the daemons still running add their own. Start-up is left out (1 s settle).",
        "  The load generator and the sinks are not counted for either server.",
        "- **Peak RSS**: smtplb: `VmHWM` of its process, or with several workers the largest"
        " sum sampled over its processes. Postfix: the largest sum",
        "  of RSS over all of its processes seen by a sampler every 0.25 s. Postfix's daemons",
        "  share their program text and libraries, so the RSS sum counts shared pages once",
        "  per process; **peak PSS** (sampled, `/proc/PID/smaps_rollup`, shared pages",
        "  divided among the processes sharing them) is the fairer comparison of memory.",
        "- **Machine CPU busy**: all cores, from `/proc/stat`, over the run: what the server,",
        "  `smtp-source`, the sinks and anything else on the machine used — near 100 % means",
        "  the run was CPU-bound on this machine, not limited by the server alone.",
        "- Each run starts with a fresh server (empty queue / spool) and fresh sinks.",
        "  Postfix relays to the sinks through `randmap` (a random sink per recipient):",
        "  smtp-source's `-N` numbers each recipient so Postfix's resolve caches do not pin",
        "  every message to one sink. smtplb uses round robin over three relay members.",
        "- Postfix writes its log to a file through postlogd (counted: it is one of master's",
        "  children); smtplb writes its JSON Lines delivery log (counted).",
        "",
        "### Commands and configuration",
        "",
        "`$WORK` is the temporary directory of the run; `PORT`s are picked free at run time.",
        "",
    ]
    out += [f"- {k}: `{v}`" for k, v in commands.items() if k not in {c.key for c in CASES}]
    for name, text in configs.items():
        out += ["", f"{name}:", "", "```", text.rstrip(), "```"]
    if notes:
        out += ["", "### Logged warnings", "", *notes]
    return "\n".join(out) + "\n"


def _scrub(text: str) -> str:
    """No paths of this machine in the report."""
    return text.replace(str(Path.cwd()), ".")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--messages", type=int, default=20_000, help="per run, 5 KB cases; half for 50 KB"
    )
    parser.add_argument("--runs", type=int, default=2, help="runs per server and case (2)")
    parser.add_argument(
        "--smtplb-workers",
        type=int,
        default=None,
        help="smtplb's `workers` (default: the key left out, as a new user runs it:"
        " smtplb's default, one per core, as Postfix uses every core)",
    )
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source -s (20)")
    parser.add_argument("--cases", default="abcd", help="which cases, e.g. 'ab' (abcd)")
    parser.add_argument("--quick", action="store_true", help="2 000 messages, 2 runs")
    parser.add_argument("--timeout", type=float, default=600, help="per run, seconds (600)")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install")
    parser.add_argument("--no-report", action="store_true", help="do not write RESULTS.md")
    parser.add_argument(
        "--no-haproxy", action="store_true", help="skip the HAProxy TCP reference (case a)"
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="the smtplb executable of another build (e.g. a checkout of the commit before"
        " a change, with its own venv), run as a third server in the same runs",
    )
    parser.add_argument(
        "--baseline-label", default="baseline", help="what to call --baseline in the report"
    )
    parser.add_argument(
        "--dkim",
        action="store_true",
        help="case a: also run smtplb signing with RSA-2048 and with Ed25519 (same runs)",
    )
    parser.add_argument(
        "--suppressions",
        type=int,
        default=0,
        help="start this build with N suppressed addresses (the --baseline with none): the"
        " intake cost of the list, e.g. --baseline .venv/bin/smtplb --suppressions 1000000",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.runs = 2_000, 2
    unknown = set(args.cases) - {c.key for c in CASES}
    if unknown:
        parser.error(f"--cases: unknown {''.join(sorted(unknown))} (expected letters of abcd)")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started, t_start = datetime.now(UTC), time.perf_counter()
    become_subreaper()
    try:
        tools = find_tools(install=not args.no_install)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    cases = [c for c in CASES if c.key in args.cases]
    results: list[RunResult] = []
    with terminate_on_sigterm(), Workdir(args.keep, args.workdir) as work:
        sink_port = free_port_on_all(SINK_HOSTS)
        sinks = SinkSet(tools, sink_port)
        postfix = PostfixRelay(tools, work / "postfix", free_port(), sinks.relays)
        prefill = (
            suppression_db(work / "suppressed.db", args.suppressions) if args.suppressions else None
        )
        smtplb = SmtplbServer(
            work / "smtplb", sinks.relays, workers=args.smtplb_workers, prefill=prefill
        )
        baseline = (
            SmtplbServer(
                work / "smtplb-base",
                sinks.relays,
                workers=args.smtplb_workers,
                command=[str(Path(args.baseline).absolute())],
                name=BASELINE,
            )
            if args.baseline
            else None
        )
        signing = (
            [dkim_server(work, sinks.relays, args.smtplb_workers, n) for n in DKIM_SERVERS]
            if args.dkim
            else []
        )
        haproxy_bin = None if args.no_haproxy else find_haproxy(not args.no_install)
        haproxy = (
            HaproxyTcp(haproxy_bin, work / "haproxy", free_port(), sinks.relays)
            if haproxy_bin
            else None
        )
        try:
            postfix.setup()
            info = machine_info(tools, work, postfix.version())
            info["HAProxy"] = haproxy.version() if haproxy else "not run"
            print("  ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
            for case in cases:
                for run in range(1, args.runs + 1):
                    order: tuple[Server, ...] = (smtplb, postfix) if run % 2 else (postfix, smtplb)
                    if baseline is not None:
                        order = (baseline, *order) if run % 2 else (*order, baseline)
                    if haproxy is not None and case.key == "a":
                        order += (haproxy,)  # the reference, in the issue's case only
                    if case.key == "a":
                        order += tuple(signing if run % 2 else reversed(signing))
                    for server in order:
                        result = one_run(
                            tools,
                            server,
                            sinks,
                            case,
                            run,
                            messages=case.messages(args.messages),
                            sessions=args.sessions,
                            timeout=args.timeout,
                        )
                        results.append(result)
                        print(
                            f"case {case.key} run {run} {server.name:<8}"
                            f" accept {fmt(result.accept_rate):>6} msg/s"
                            f"  end-to-end {fmt(result.e2e_rate):>6} msg/s"
                            f"  CPU {result.cpu_ms_per_msg:.3f} ms/msg"
                            f"  RSS {result.peak_rss / 1e6:,.0f} MB"
                            f"  PSS {result.peak_pss / 1e6:,.0f} MB"
                            f"  sinks {'/'.join(map(str, result.counts))}"
                            + ("" if result.complete else "  INCOMPLETE"),
                            flush=True,
                        )
        except KeyboardInterrupt:
            print("interrupted: servers and sinks stopped", file=sys.stderr)
            return 130
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        finally:
            smtplb.stop()
            if baseline is not None:
                baseline.stop()
            for server in signing:
                server.stop()
            postfix.stop()
            if haproxy is not None:
                haproxy.stop()
            sinks.stop()
            reap_orphans()
        commands = _commands(tools, args, cases, sinks)
        configs = {
            "Postfix main.cf": postfix.main_cf,
            "Postfix master.cf": postfix.master_cf,
            "smtplb config": smtplb.config_text,
        }
        if haproxy is not None:
            commands["HAProxy"] = "haproxy -db -f $WORK/haproxy.cfg (case a only)"
            configs["HAProxy haproxy.cfg"] = haproxy.config_text.replace(
                f":{haproxy.port}", ":HAPROXY_PORT"
            )
        configs = {k: v.replace(str(work), "$WORK") for k, v in configs.items()}
        configs = {k: _ports(v, sinks.port, postfix.port, smtplb) for k, v in configs.items()}
    wall = time.perf_counter() - t_start
    if not args.no_report and results:
        update_results(
            "run",
            report(
                args,
                shown_argv("bench/run.py", argv),
                info,
                results,
                cases,
                commands,
                configs,
                started,
                wall,
            ),
            first=True,
        )
        print("wrote bench/RESULTS.md")
    print(f"done in {wall / 60:.1f} minutes")
    return 0 if all(r.complete for r in results) else 1


def _ports(text: str, sink_port: int, postfix_port: int, smtplb: SmtplbServer) -> str:
    return (
        text.replace(f":{sink_port}", ":SINK_PORT")
        .replace(f":{postfix_port}", ":POSTFIX_PORT")
        .replace(f":{smtplb.port}", ":SMTPLB_PORT")
        .replace(f":{smtplb.http_port}", ":HTTP_PORT")
    )


def _commands(
    tools: Tools,
    args: argparse.Namespace,
    cases: list[Case],
    sinks: SinkSet,
) -> dict[str, str]:
    commands = {}
    for case in cases:
        cmd = source_command(
            tools,
            0,
            messages=case.messages(args.messages),
            size=case.size,
            sessions=args.sessions,
            per_connection=case.per_connection,
        )
        commands[case.key] = shown(cmd).replace("127.0.0.1:0", "127.0.0.1:PORT")
    commands["sinks"] = f"smtp-sink -c -u {sinks.user} 127.0.0.N:SINK_PORT 1024 (N = 2, 3, 4)"
    commands["Postfix"] = "postfix -c $WORK/etc check; master -c $WORK/etc (in the foreground)"
    commands["smtplb"] = "smtplb run -c $WORK/smtplb.toml"
    return commands


if __name__ == "__main__":
    sys.exit(main())
