"""A deep queue: smtplb with a million messages spooled while its upstreams are down
(SPEC §4: bounded memory, per-message cost that does not grow with queue depth).

    .venv/bin/python bench/scale.py [--messages 1000000] [--baseline 20000] [--size 1024]

For a small backlog (``--baseline``) and then a deep one (``--messages``):
1. start smtplb with its three relay members' ports closed and queue the messages with
   smtp-source (many per connection); they are deferred; record peak RSS (VmHWM);
2. stop smtplb (SIGTERM), start the three smtp-sinks, start smtplb again, make every
   deferred message due (``POST /api/v1/queue/retry`` = ``smtplb queue retry --all``)
   and time restart → listening → first message at a sink;
3. time the drain until the sinks have counted every message.
Also measured: the relay rate from an empty queue (upstreams up, same load). Targets:
peak RSS ≤ 512 MB, restart to first delivery ≤ 30 s, deep drain rate within 20 % of the
small backlog's. Results go to the "Scale" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import (
    SINK_HOSTS,
    Sections,
    SinkSet,
    SmtplbServer,
    Tools,
    find_tools,
    machine_info,
    section_marker,
    shown_argv,
    source_command,
    update_results,
)
from procs import (
    BenchError,
    MemorySampler,
    Workdir,
    become_subreaper,
    free_port_on_all,
    port_closed,
    reap_orphans,
    rss_anon,
    stop_process,
    terminate_on_sigterm,
    tree_cpu,
    vm_hwm,
)

RSS_TARGET = 512e6
FIRST_DELIVERY_TARGET = 30.0
DRAIN_TARGET = 0.8  # deep drain rate at least 80 % of the small backlog's


class SourceProgress:
    """smtp-source -c prints the number of completed DATA commands (``N\\r``)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.count = 0
        self.timeline: list[tuple[float, int]] = []
        self._thread = threading.Thread(target=self._read, daemon=True, name="source")
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd, tail, next_mark = self.proc.stdout.fileno(), b"", 0.0
        while chunk := os.read(fd, 65536):
            items = (tail + chunk).replace(b"\n", b"\r").split(b"\r")
            tail = items.pop()
            for item in reversed(items):
                if item.strip().isdigit():
                    self.count = int(item)
                    break
            now = time.perf_counter()
            if now >= next_mark:
                self.timeline.append((now, self.count))
                next_mark = now + 1.0
        self.timeline.append((time.perf_counter(), self.count))

    def join(self) -> None:
        self._thread.join(10)


def window_rates(timeline: list[tuple[float, int]], total: int) -> tuple[float, float]:
    """Rates over the first and the last 10 % of ``total`` (msg/s)."""

    def rate_between(lo: int, hi: int) -> float:
        start = next(((t, c) for t, c in timeline if c >= lo), None)
        end = next(((t, c) for t, c in timeline if c >= hi), None)
        if start is None or end is None or end[0] <= start[0]:
            return float("nan")
        return (end[1] - start[1]) / (end[0] - start[0])

    tenth = max(1, total // 10)
    return rate_between(0, tenth), rate_between(total - tenth, total)


@dataclass
class Phase:
    """One backlog: queued while down, then restarted and drained."""

    label: str
    messages: int
    retry_base: str = ""
    queue_s: float = 0.0
    queue_rc: int | None = None
    queue_rate_first: float = float("nan")  # first 10 % of the messages
    queue_rate_last: float = float("nan")  # last 10 %
    queue_rss: int = 0  # VmHWM of the smtplb that queued them
    queue_anon: int = 0  # its peak RssAnon, sampled every second
    queue_cpu: float = 0.0
    queued_stats: dict[str, int] = field(default_factory=dict)
    spool_bytes: int = 0
    stop_s: float = 0.0
    listen_s: float = 0.0  # restart → SMTP greeting
    retry_s: float = 0.0  # the retry call itself
    retried: int = 0
    retry_anon: int = 0  # RssAnon just after the retry call
    first_s: float | None = None  # restart → first message at a sink
    drain_s: float | None = None  # first → last message at the sinks
    drained: int = 0
    drain_rate_first: float = float("nan")
    drain_rate_last: float = float("nan")
    # From the retry call's return to the last delivery: the drain without the retry
    # pass (which rewrites every ready recipient, in slices) competing with it.
    drain_rate_after_retry: float = float("nan")
    drain_rss: int = 0  # VmHWM of the restarted smtplb
    drain_anon: int = 0
    drain_cpu: float = 0.0

    @property
    def queue_rate(self) -> float:
        return self.messages / self.queue_s if self.queue_s else float("nan")

    @property
    def queue_ms(self) -> float:
        return 1000 * self.queue_cpu / max(1, self.messages)

    @property
    def drain_ms(self) -> float:
        return 1000 * self.drain_cpu / max(1, self.drained)

    @property
    def drain_rate(self) -> float:
        if not self.drain_s or self.drained < self.messages:
            return float("nan")
        return (self.messages - 1) / self.drain_s


def api(server: SmtplbServer, path: str, method: str = "GET", timeout: float = 600) -> Any:
    # No body: with data=b"" urllib would declare a form, which the API refuses (415).
    req = urllib.request.Request(server.api_url + path, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_phase(
    tools: Tools,
    work: Path,
    label: str,
    messages: int,
    args: argparse.Namespace,
    sections: Sections,
) -> Phase:
    phase = Phase(label, messages, args.retry_base)
    sinks = SinkSet(tools, free_port_on_all(SINK_HOSTS))
    smtplb = SmtplbServer(work / label, sinks.relays, sections)
    if not all(port_closed(h, sinks.port) for h in SINK_HOSTS):
        raise BenchError(f"sink port {sinks.port} is not closed")
    source: subprocess.Popen[bytes] | None = None
    try:
        # 1. Queue with the upstreams down.
        smtplb.start()
        cmd = source_command(
            tools,
            smtplb.port,
            messages=messages,
            size=args.size,
            sessions=args.sessions,
            per_connection=True,
        )
        cpu0, t0 = tree_cpu(smtplb.pid), time.perf_counter()
        source = subprocess.Popen(
            [cmd[0], "-c", *cmd[1:]], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        progress = SourceProgress(source)
        last_print = t0
        with MemorySampler(smtplb.pid, interval=1.0) as memory:
            while source.poll() is None:
                time.sleep(0.2)
                if time.perf_counter() - last_print > 30:
                    last_print = time.perf_counter()
                    print(
                        f"  {label}: queued {progress.count:,} of {messages:,}"
                        f" ({progress.count / (last_print - t0):,.0f} msg/s),"
                        f" smtplb peak RSS {vm_hwm(smtplb.pid) / 1e6:,.0f} MB",
                        flush=True,
                    )
            phase.queue_s = time.perf_counter() - t0
            phase.queue_rc = source.returncode
            progress.join()
            phase.queue_cpu = tree_cpu(smtplb.pid) - cpu0
            phase.queue_rss = vm_hwm(smtplb.pid)
        phase.queue_anon = memory.peak.anon
        phase.queue_rate_first, phase.queue_rate_last = window_rates(progress.timeline, messages)
        phase.queued_stats = api(smtplb, "/api/v1/queue?limit=0")["stats"]
        print(
            f"  {label}: queued {messages:,} in {phase.queue_s:.0f} s"
            f" (smtp-source exit {phase.queue_rc}), queue {phase.queued_stats},"
            f" peak RSS {phase.queue_rss / 1e6:,.0f} MB (anonymous {phase.queue_anon / 1e6:,.0f})",
            flush=True,
        )
        if phase.queue_rc != 0:
            raise BenchError(f"smtp-source failed while queuing ({phase.queue_rc})")
        t = time.perf_counter()
        smtplb.stop()
        phase.stop_s = time.perf_counter() - t
        phase.spool_bytes = dir_bytes(smtplb.data_dir)

        # 2. Upstreams back, restart, make everything due, drain.
        sinks.start()
        smtplb.start(fresh=False, wait=False)
        launched = smtplb.launched_at
        smtplb.wait_ready(timeout=300)
        phase.listen_s = time.perf_counter() - launched
        cpu0 = tree_cpu(smtplb.pid)
        timeline: list[tuple[float, int]] = []
        with MemorySampler(smtplb.pid, interval=1.0) as memory:
            t = time.perf_counter()
            phase.retried = api(smtplb, "/api/v1/queue/retry", "POST")["retried"]
            retried_at = time.perf_counter()
            phase.retry_s = retried_at - t
            phase.retry_anon = rss_anon(smtplb.pid)
            deadline, last_print = time.perf_counter() + args.timeout, time.perf_counter()
            while sinks.total() < messages and time.perf_counter() < deadline:
                if smtplb.proc is not None and smtplb.proc.poll() is not None:
                    raise BenchError(f"smtplb exited while draining\n{smtplb.log_tail()}")
                now = time.perf_counter()
                timeline.append((now, sinks.total()))
                if now - last_print > 30:
                    last_print = now
                    print(
                        f"  {label}: delivered {sinks.total():,} of {messages:,},"
                        f" smtplb peak RSS {vm_hwm(smtplb.pid) / 1e6:,.0f} MB",
                        flush=True,
                    )
                time.sleep(0.1)
            done = time.perf_counter()
            timeline.append((done, sinks.total()))
            phase.drain_cpu = tree_cpu(smtplb.pid) - cpu0
            phase.drain_rss = vm_hwm(smtplb.pid)
        phase.drain_anon = memory.peak.anon
        first = sinks.first_at()
        phase.drained = sinks.total()
        if first is not None:
            phase.first_s = first - launched
            phase.drain_s = done - first
            phase.drain_rate_first, phase.drain_rate_last = window_rates(timeline, messages)
            at_return = next((n for ts, n in timeline if ts >= retried_at), messages)
            if done > retried_at and at_return < messages:
                phase.drain_rate_after_retry = (messages - at_return) / (done - retried_at)
        print(
            f"  {label}: restart → listening {phase.listen_s:.1f} s, retry {phase.retry_s:.1f} s"
            f" ({phase.retried:,}), → first delivery {phase.first_s or float('nan'):.1f} s;"
            f" drained {phase.drained:,} at {phase.drain_rate:,.0f} msg/s,"
            f" peak RSS {phase.drain_rss / 1e6:,.0f} MB (anonymous {phase.drain_anon / 1e6:,.0f})",
            flush=True,
        )
        return phase
    finally:
        stop_process(source, 5)
        smtplb.stop()
        sinks.stop()
        reap_orphans()


def relay_rate(
    tools: Tools, work: Path, messages: int, args: argparse.Namespace, sections: Sections
) -> tuple[float, float]:
    """End-to-end rate and CPU ms/msg from an empty queue, upstreams up, same load."""
    sinks = SinkSet(tools, free_port_on_all(SINK_HOSTS))
    smtplb = SmtplbServer(work / "relay", sinks.relays, sections)
    try:
        sinks.start()
        smtplb.start()
        time.sleep(1)
        cmd = source_command(
            tools,
            smtplb.port,
            messages=messages,
            size=args.size,
            sessions=args.sessions,
            per_connection=True,
        )
        cpu0, t0 = tree_cpu(smtplb.pid), time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        while sinks.total() < messages and time.perf_counter() - t0 < args.timeout:
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        cpu = tree_cpu(smtplb.pid) - cpu0
        return sinks.total() / elapsed, 1000 * cpu / max(1, sinks.total())
    finally:
        smtplb.stop()
        sinks.stop()
        reap_orphans()


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def report(
    command: str,
    args: argparse.Namespace,
    info: dict[str, str],
    small: Phase,
    deep: Phase,
    relay: tuple[float, float],
    config: str,
    started: datetime,
    wall: float,
) -> str:
    ratio = deep.drain_rate / small.drain_rate if small.drain_rate else float("nan")
    peak = max(deep.queue_rss, deep.drain_rss)

    def s(v: float | None, spec: str = ".1f") -> str:
        return "—" if v is None or v != v else format(v, spec)

    lines = [
        section_marker("scale"),
        "## Scale: a deep queue",
        "",
        f"`{command}` on {started:%Y-%m-%d %H:%M} UTC, {wall / 60:.1f} minutes;"
        f" {info['CPU']}, {info['RAM']} RAM, {info['Spool filesystem']}, smtplb {info['smtplb']}.",
        "",
        f"{deep.messages:,} messages of {args.size:,} bytes (smtp-source `-l {args.size}`, many"
        f" per connection, {args.sessions} sessions) were queued into smtplb while the ports"
        " of its three relay members were closed (every message deferred). Then smtplb was"
        " stopped (SIGTERM), the three smtp-sinks started, smtplb started again and"
        " `POST /api/v1/queue/retry` (`smtplb queue retry --all`) made every deferred"
        " message due. The same was done with a small backlog of"
        f" {small.messages:,} messages for the baseline drain rate.",
        "",
        "| figure | value | target | |",
        "|---|---:|---:|---|",
        f"| peak RSS, queuing {deep.messages:,} (VmHWM) | {deep.queue_rss / 1e6:,.0f} MB"
        f" | ≤ 512 MB | {verdict(deep.queue_rss <= RSS_TARGET)} |",
        f"| peak RSS, restart and drain (VmHWM) | {deep.drain_rss / 1e6:,.0f} MB | ≤ 512 MB"
        f" | {verdict(deep.drain_rss <= RSS_TARGET)} |",
        f"| restart → first delivery | {s(deep.first_s)} s | ≤ 30 s"
        f" | {verdict(deep.first_s is not None and deep.first_s <= FIRST_DELIVERY_TARGET)} |",
        f"| drain rate, {deep.messages:,} queued | {s(deep.drain_rate, ',.0f')} msg/s | | |",
        f"| drain rate, {small.messages:,} queued (baseline) | {s(small.drain_rate, ',.0f')}"
        " msg/s | | |",
        f"| deep / baseline drain rate | {s(ratio, '.2f')} | ≥ 0.80"
        f" | {verdict(ratio == ratio and ratio >= DRAIN_TARGET)} |",
        "",
        "Details:",
        "",
        "| | baseline | deep |",
        "|---|---:|---:|",
        f"| messages | {small.messages:,} | {deep.messages:,} |",
        f"| queuing: accept rate (msg/s) | {s(small.queue_rate, ',.0f')}"
        f" | {s(deep.queue_rate, ',.0f')} |",
        f"| queuing: rate over the first / last 10 % | {s(small.queue_rate_first, ',.0f')}"
        f" / {s(small.queue_rate_last, ',.0f')} | {s(deep.queue_rate_first, ',.0f')}"
        f" / {s(deep.queue_rate_last, ',.0f')} |",
        f"| queuing: smtplb CPU per message (ms) | {s(small.queue_ms, '.2f')}"
        f" | {s(deep.queue_ms, '.2f')} |",
        f"| queuing: peak RSS (MB) | {small.queue_rss / 1e6:,.0f} | {deep.queue_rss / 1e6:,.0f} |",
        f"| queuing: peak anonymous RSS (MB) | {small.queue_anon / 1e6:,.0f}"
        f" | {deep.queue_anon / 1e6:,.0f} |",
        f"| queue by state before the stop | {_states(small)} | {_states(deep)} |",
        f"| spool on disk (data_dir) | {small.spool_bytes / 1e6:,.0f} MB"
        f" | {deep.spool_bytes / 1e6:,.0f} MB |",
        f"| graceful stop (SIGTERM → exit) | {small.stop_s:.1f} s | {deep.stop_s:.1f} s |",
        f"| restart → listening | {small.listen_s:.1f} s | {deep.listen_s:.1f} s |",
        f"| retry --all call ({small.retried:,} / {deep.retried:,} recipients)"
        f" | {small.retry_s:.1f} s | {deep.retry_s:.1f} s |",
        f"| restart → first delivery | {s(small.first_s)} s | {s(deep.first_s)} s |",
        f"| drain: first → last delivery | {s(small.drain_s)} s | {s(deep.drain_s)} s |",
        f"| drain rate (msg/s) | {s(small.drain_rate, ',.0f')} | {s(deep.drain_rate, ',.0f')} |",
        f"| drain rate over the first / last 10 % | {s(small.drain_rate_first, ',.0f')}"
        f" / {s(small.drain_rate_last, ',.0f')} | {s(deep.drain_rate_first, ',.0f')}"
        f" / {s(deep.drain_rate_last, ',.0f')} |",
        f"| drain rate once retry --all had returned (msg/s) |"
        f" {s(small.drain_rate_after_retry, ',.0f')} | {s(deep.drain_rate_after_retry, ',.0f')} |",
        f"| drain: smtplb CPU per message (ms) | {s(small.drain_ms, '.2f')}"
        f" | {s(deep.drain_ms, '.2f')} |",
        f"| drain: peak RSS (MB) | {small.drain_rss / 1e6:,.0f} | {deep.drain_rss / 1e6:,.0f} |",
        f"| drain: peak anonymous RSS (MB) | {small.drain_anon / 1e6:,.0f}"
        f" | {deep.drain_anon / 1e6:,.0f} |",
        f"| anonymous RSS just after retry --all (MB) | {small.retry_anon / 1e6:,.0f}"
        f" | {deep.retry_anon / 1e6:,.0f} |",
        "",
        f"For reference, from an empty queue with the upstreams up (same load,"
        f" {small.messages:,} messages relayed end to end, intake included): {relay[0]:,.0f}"
        f" msg/s, {relay[1]:.2f} ms CPU per message. Peak RSS over the deep run:"
        f" {peak / 1e6:,.0f} MB.",
        "",
        "Peak RSS is `VmHWM`: it includes the spool's database pages that SQLite maps into"
        " smtplb's memory (`PRAGMA mmap_size`, per connection) — clean file pages the kernel"
        " can drop at will — besides SQLite's page caches and Python's heap. Anonymous RSS"
        " (`RssAnon`, sampled every second) leaves file pages out.",
        "",
        *slowdown_note(deep),
        "The machine was shared with other work while this ran: rates are noisy.",
        "",
        "smtplb config (`$WORK` the run's temporary directory):",
        "",
        "```",
        config.rstrip(),
        "```",
    ]
    return "\n".join(lines) + "\n"


def slowdown_note(phase: Phase) -> list[str]:
    first, last = phase.queue_rate_first, phase.queue_rate_last
    if not (first == first and last == last) or last >= 0.8 * first:
        return []
    return [
        f"Intake slowed while queuing, from {first:,.0f} msg/s over the first 10 % to"
        f" {last:,.0f} msg/s over the last 10 %: with `retry_base = {phase.retry_base}`"
        " the deferred messages come due again and again while the upstreams are down, and"
        " each is claimed and deferred once more (a spool write and a delivery-log record"
        " per recipient), competing with intake for the spool's writer thread. The work"
        " done while no member is up grows with the depth of the queue.",
        "",
    ]


def _states(phase: Phase) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in phase.queued_stats.items() if v) or "—"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="deep backlog")
    parser.add_argument("--baseline", type=int, default=20_000, help="small backlog")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes (1024)")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--retry-base", default="1m", help="[delivery] retry_base (1m)")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="per drain, seconds")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    started, t_start = datetime.now(UTC), time.perf_counter()
    become_subreaper()
    try:
        tools = find_tools(install=True)
    except BenchError as exc:
        print(f"scale: {exc}", file=sys.stderr)
        return 2
    sections: Sections = {
        "health": {"interval": "1s", "timeout": "1s"},
        "delivery": {"retry_base": args.retry_base, "retry_max": "1h"},
    }
    with terminate_on_sigterm(), Workdir(args.keep, args.workdir) as work:
        try:
            info = machine_info(tools, work)
            print(f"relay from an empty queue, {args.baseline:,} messages …", flush=True)
            relay = relay_rate(tools, work, args.baseline, args, sections)
            print(f"  {relay[0]:,.0f} msg/s, {relay[1]:.2f} ms CPU/msg", flush=True)
            print(f"baseline backlog, {args.baseline:,} messages …", flush=True)
            small = run_phase(tools, work, "baseline", args.baseline, args, sections)
            print(f"deep backlog, {args.messages:,} messages …", flush=True)
            deep = run_phase(tools, work, "deep", args.messages, args, sections)
            config = (work / "deep" / "smtplb.toml").read_text().replace(str(work), "$WORK")
        except KeyboardInterrupt:
            print("interrupted: smtplb and sinks stopped", file=sys.stderr)
            return 130
        except (BenchError, OSError) as exc:
            print(f"scale: {exc}", file=sys.stderr)
            return 1
    config = re.sub(r":\d{4,5}\b", ":PORT", config)
    wall = time.perf_counter() - t_start
    text = report(
        shown_argv("bench/scale.py", argv), args, info, small, deep, relay, config, started, wall
    )
    print(text)
    if not args.no_report:
        update_results("scale", text)
        print("wrote bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
