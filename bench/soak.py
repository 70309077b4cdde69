"""Soak: smtplb under a steady moderate load for a long time, with upstream faults.

    .venv/bin/python bench/soak.py [--duration 3600] [--rate 20] [--keep]

smtplb (one pool, round robin) runs in front of three smart sinks (``smtplb sink``) on
127.0.0.2, .3 and .4. A load thread sends ``--rate`` messages a second over SMTP (a new
connection every 50 messages), each to its own recipient. Every ``--fault-every``
seconds (default: 4 minutes, or a quarter of a short run) one sink, in turn, gets a fault
for ``--fault-length`` seconds (default: 60 s, at most half the interval):

- ``kill``:  SIGKILL, down for the fault's length, then started again;
- ``defer``: restarted with a profile that answers every RCPT ``421 4.7.28``;
- ``stall``: restarted with a profile that waits 45 s before answering the data.

Every ``--sample-every`` seconds (10) it samples smtplb's RSS, open files
(``/proc/PID/fd``) and queue depth (``/api/v1/overview``). At the end the load stops,
the sinks are healthy again, and it waits until the queue is empty; then it checks that
every message smtplb accepted (250 after DATA) reached a sink (the sinks' ``--record``
files) and writes the "Soak" section of bench/RESULTS.md: a table over time and a
verdict (flat or not, with the criteria). Loopback only; it stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import smtplib
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from harness import (
    SINK_HOSTS,
    Sections,
    SmtplbServer,
    Tools,
    machine_info,
    section_marker,
    shown_argv,
    smtplb_command,
    update_results,
)
from procs import (
    BenchError,
    Workdir,
    become_subreaper,
    free_port_on_all,
    reap_orphans,
    rss_anon,
    stop_process,
    terminate_on_sigterm,
    tree,
    wait_banner,
)

from smtplb.observability.trace import TraceBook

PROFILES = {
    "normal": '[domains."*"]\naccept = 1.0\n',
    "defer": '[domains."*"]\naccept = 0.0\ndefer = 1.0\nstage = "rcpt"\n',
    "stall": '[domains."*"]\naccept = 1.0\nlatency = 45.0\n',
}
FAULTS = ("kill", "defer", "stall")
NON_FINAL = ("queued", "in_flight", "deferred")
SENDER = "soak@example.com"
BODY = "This is a soak test message.\r\n" * 70  # ~2 KB
PER_CONNECTION = 50
TRACE_CAPACITY = TraceBook().capacity  # traces kept in memory for `queue show`


# -- the upstreams -------------------------------------------------------------------


class SinkProc:
    """One ``smtplb sink`` process; its accepted messages are appended to ``record``."""

    def __init__(self, host: str, port: int, work: Path, index: int) -> None:
        self.host, self.port, self.index = host, port, index
        self.work = work
        self.record = work / f"sink-{index}.jsonl"
        self.log = work / f"sink-{index}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.profile = "normal"
        self._offset = 0
        for name, text in PROFILES.items():
            (work / f"profile-{name}.toml").write_text(text)

    def start(self, profile: str = "normal") -> None:
        # A sink killed while writing a record leaves half a line: end it, so the next
        # record is not glued to it (the half one was never answered 250: it comes again).
        if self.record.exists() and self.record.stat().st_size:
            with open(self.record, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        cmd = [
            *smtplb_command(),
            "sink",
            "--listen",
            f"{self.host}:{self.port}",
            "--record",
            str(self.record),
            "--profile",
            str(self.work / f"profile-{profile}.toml"),
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.profile = profile
        wait_banner(self.host, self.port, 30, self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        self.profile = "down"

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self.proc = None

    def restart(self, profile: str) -> None:
        self.stop()
        self.start(profile)

    def new_records(self) -> list[str]:
        """Recipients of the records appended since the last call (whole lines only)."""
        if not self.record.exists():
            return []
        with open(self.record, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        rcpts: list[str] = []
        for line in chunk[:end].splitlines():
            try:
                rcpts.extend(json.loads(line)["rcpt_to"])
            except (ValueError, KeyError):
                continue  # the half line of a killed sink
        return rcpts


# -- the load ------------------------------------------------------------------------


@dataclass
class Load:
    """Sends ``rate`` messages a second to smtplb until stopped; one recipient each."""

    port: int
    rate: float
    accepted: set[str] = field(default_factory=set)
    refused: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    late: int = 0
    sent: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def _run(self) -> None:
        smtp: smtplib.SMTP | None = None
        on_connection = 0
        start, i = time.monotonic(), 0
        while not self._stop.is_set():
            due = start + i / self.rate
            now = time.monotonic()
            if due > now:
                if self._stop.wait(due - now):
                    break
            elif now - due > 1.0:  # more than a second behind: do not burst to catch up
                self.late += 1
                start, i = now, 0
                due = now
            i += 1
            self.sent += 1
            rcpt = f"soak-{self.sent}@example.net"
            try:
                if smtp is None or on_connection >= PER_CONNECTION:
                    if smtp is not None:
                        with contextlib.suppress(smtplib.SMTPException, OSError):
                            smtp.quit()
                    smtp = smtplib.SMTP("127.0.0.1", self.port, "client.soak.test", timeout=30)
                    on_connection = 0
                on_connection += 1
                smtp.sendmail(SENDER, [rcpt], self._message(rcpt))
            except smtplib.SMTPRecipientsRefused as exc:
                code = next(iter(exc.recipients.values()))[0]
                self.refused[str(code)] += 1
                continue
            except smtplib.SMTPResponseException as exc:
                self.refused[str(exc.smtp_code)] += 1
                continue
            except (smtplib.SMTPException, OSError) as exc:
                self.errors[type(exc).__name__] += 1
                smtp = None
                continue
            with self._lock:
                self.accepted.add(rcpt)
        if smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.quit()

    def _message(self, rcpt: str) -> bytes:
        n = rcpt.split("@")[0]
        return (
            f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: soak {n}\r\n"
            f"Message-ID: <{n}@soak.test>\r\n\r\n{BODY}"
        ).encode()


# -- sampling ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float
    accepted: int
    delivered: int
    queue: dict[str, int]
    rss: int
    anon: int  # RssAnon: heap and stacks, without file pages (SQLite's mmap of the spool)
    fds: int
    faults: str

    @property
    def depth(self) -> int:
        return sum(self.queue.get(s, 0) for s in NON_FINAL)


def open_fds(pid: int) -> int:
    total = 0
    for st in tree(pid):
        if st.state != "Z":
            with contextlib.suppress(OSError):
                total += len(os.listdir(f"/proc/{st.pid}/fd"))
    return total


def tree_rss(pid: int) -> tuple[int, int]:
    """RSS and RssAnon summed over smtplb's process tree."""
    live = [st for st in tree(pid) if st.state != "Z"]
    return sum(st.rss for st in live), sum(rss_anon(st.pid) for st in live)


def queue_stats(api_url: str) -> dict[str, int]:
    with urllib.request.urlopen(api_url + "/api/v1/overview", timeout=10) as resp:
        data = json.load(resp)
    return {k: int(v) for k, v in data["queue"].items()}


# -- the run -------------------------------------------------------------------------


@dataclass
class Fault:
    at: float  # seconds into the run
    kind: str
    sink: int
    until: float
    done: bool = False
    started: bool = False


@dataclass
class Outcome:
    samples: list[Sample]
    faults: list[Fault]
    load: Load
    delivered: Counter[str]
    drained_in: float | None
    missing: list[str]
    log_warnings: list[str]
    smtplb_alive: bool


def plan_faults(duration: float, every: float, length: float) -> list[Fault]:
    faults, n = [], 0
    at = every
    while at + length < duration:
        faults.append(Fault(at, FAULTS[n % len(FAULTS)], n % len(SINK_HOSTS), at + length))
        n += 1
        at += every
    return faults


def soak(work: Path, args: argparse.Namespace) -> Outcome:
    port = free_port_on_all(SINK_HOSTS)
    sinks = [SinkProc(h, port, work, i + 1) for i, h in enumerate(SINK_HOSTS)]
    sections: Sections = {
        "health": {"interval": "1s", "timeout": "2s"},
        "delivery": {"retry_base": "5s", "retry_max": "30s"},
    }
    server = SmtplbServer(work / "smtplb", [f"{h}:{port}" for h in SINK_HOSTS], sections)
    faults = plan_faults(args.duration, args.fault_every, args.fault_length)
    samples: list[Sample] = []
    delivered: Counter[str] = Counter()
    load: Load | None = None
    try:
        for sink in sinks:
            sink.start()
        server.start()
        load = Load(server.port, args.rate)
        t0 = time.monotonic()
        load.start()
        next_sample = 0.0
        while (now := time.monotonic() - t0) < args.duration:
            for fault in faults:
                if not fault.started and now >= fault.at:
                    fault.started = True
                    sink = sinks[fault.sink]
                    print(f"{now:7.0f}s fault: {fault.kind} sink-{sink.index}", flush=True)
                    if fault.kind == "kill":
                        sink.kill()
                    else:
                        sink.restart(fault.kind)
                if fault.started and not fault.done and now >= fault.until:
                    fault.done = True
                    print(f"{now:7.0f}s sink-{sinks[fault.sink].index} healthy", flush=True)
                    sinks[fault.sink].restart("normal")
            if now >= next_sample:
                samples.append(take_sample(now, server, load, sinks, delivered))
                s = samples[-1]
                print(
                    f"{now:7.0f}s accepted {s.accepted:,} delivered {s.delivered:,}"
                    f" queue {s.depth:,} rss {s.rss / 1e6:.1f} MB anon {s.anon / 1e6:.1f} MB"
                    f" fds {s.fds} {s.faults}",
                    flush=True,
                )
                next_sample += args.sample_every
            if server.proc is None or server.proc.poll() is not None:
                raise BenchError(f"smtplb exited during the soak\n{server.log_tail()}")
            wake = min(
                [next_sample, args.duration]
                + [f.at for f in faults if not f.started]
                + [f.until for f in faults if f.started and not f.done]
            )
            time.sleep(max(0.0, min(1.0, wake - (time.monotonic() - t0))))
        load.stop()
        for fault in faults:
            if fault.started and not fault.done:
                fault.done = True
                sinks[fault.sink].restart("normal")
        # Drain: until every accepted message reached a sink and the queue is empty.
        t_end = time.monotonic()
        drained_in = None
        deadline = t_end + args.drain_timeout
        next_sample = time.monotonic() - t0
        while time.monotonic() < deadline:
            now = time.monotonic() - t0
            for sink in sinks:
                delivered.update(sink.new_records())
            depth = sum(queue_stats(server.api_url).get(s, 0) for s in NON_FINAL)
            if depth == 0 and load.accepted <= delivered.keys():
                drained_in = time.monotonic() - t_end
                break
            if now >= next_sample:
                samples.append(take_sample(now, server, load, sinks, delivered, "drain"))
                next_sample += args.sample_every
            time.sleep(0.5)
        samples.append(take_sample(time.monotonic() - t0, server, load, sinks, delivered, "end"))
        alive = server.proc is not None and server.proc.poll() is None
        missing = sorted(load.accepted - delivered.keys())
        return Outcome(
            samples, faults, load, delivered, drained_in, missing, server.warnings(), alive
        )
    finally:
        if load is not None:
            load.stop()
        server.stop()
        for sink in sinks:
            sink.stop()
        reap_orphans()


def take_sample(
    now: float,
    server: SmtplbServer,
    load: Load,
    sinks: list[SinkProc],
    delivered: Counter[str],
    note: str = "",
) -> Sample:
    for sink in sinks:
        delivered.update(sink.new_records())
    faulty = [f"sink-{s.index} {s.profile}" for s in sinks if s.profile != "normal"]
    rss, anon = tree_rss(server.pid)
    return Sample(
        t=now,
        accepted=load.count(),
        delivered=len(delivered),
        queue=queue_stats(server.api_url),
        rss=rss,
        anon=anon,
        fds=open_fds(server.pid),
        faults=", ".join(faulty) or note,
    )


# -- the verdict and the report ------------------------------------------------------


@dataclass(frozen=True)
class Trend:
    name: str
    first: float  # median over the first third of the steady samples
    middle: float  # median over the middle third
    last: float  # median over the last third
    peak: float
    slope_per_hour: float
    allowed: float
    flat: bool
    judged: bool = True  # False: shown, not part of the verdict


def trend(
    name: str, points: list[tuple[float, float]], allowed: float, judged: bool = True
) -> Trend:
    third = max(1, len(points) // 3)
    first = statistics.median(v for _, v in points[:third])
    middle = statistics.median(v for _, v in points[third:-third] or points)
    last = statistics.median(v for _, v in points[-third:])
    slope = 0.0
    if len(points) >= 2:
        slope = statistics.linear_regression([t for t, _ in points], [v for _, v in points])[0]
    peak = max(v for _, v in points)
    flat = last - middle <= allowed
    return Trend(name, first, middle, last, peak, slope * 3600, allowed, flat, judged)


def verdict(outcome: Outcome, duration: float) -> list[Trend]:
    warmup = min(300.0, duration * 0.15)
    steady = [s for s in outcome.samples if warmup <= s.t <= duration]
    if len(steady) < 3:
        steady = outcome.samples[: max(3, len(outcome.samples))]
    rss = [(s.t, s.rss / 1e6) for s in steady]
    anon = [(s.t, s.anon / 1e6) for s in steady]
    return [
        trend("RSS (MB), file pages included", rss, _five(rss), judged=False),
        trend("RssAnon (MB): heap and stacks", anon, _five(anon)),
        trend("open files", [(s.t, float(s.fds)) for s in steady], 10.0),
        trend("queue depth", [(s.t, float(s.depth)) for s in steady], 200.0),
    ]


def _five(points: list[tuple[float, float]]) -> float:
    """5 MB or 5 % of the middle third's median, the larger."""
    third = max(1, len(points) // 3)
    return max(5.0, 0.05 * statistics.median(v for _, v in points[third:-third] or points))


def report(
    command: str,
    args: argparse.Namespace,
    info: dict[str, str],
    outcome: Outcome,
    started: datetime,
    wall: float,
) -> str:
    load = outcome.load
    trends = verdict(outcome, args.duration)
    delivered_ok = not outcome.missing
    flat = all(t.flat for t in trends if t.judged)
    duplicates = sum(1 for n in outcome.delivered.values() if n > 1)
    lines = [
        section_marker("soak"),
        "## Soak: a steady load with upstream faults",
        "",
        f"`{command}` on {started:%Y-%m-%d %H:%M} UTC, {wall / 60:.1f} minutes in all;"
        f" {info['CPU']}, {info['RAM']} RAM, {info['Spool filesystem']},"
        f" smtplb {info['smtplb']}, Python {info['Python']}.",
        "",
        f"smtplb (one worker, one pool, round robin, `retry_base = 5s`, `retry_max = 30s`)"
        f" in front of three `smtplb sink`s on 127.0.0.2–4. Load: {args.rate:g} msg/s of"
        f" ~2 KB over SMTP for {args.duration:,.0f} s (a new connection every"
        f" {PER_CONNECTION} messages, one recipient each). Every {args.fault_every:g} s one"
        f" sink in turn gets a fault for {args.fault_length:g} s: `kill` (SIGKILL, down,"
        " then started again), `defer` (every RCPT answered `421 4.7.28`), `stall` (45 s"
        " before answering the data). Sampled every"
        f" {args.sample_every:g} s: RSS and open files (`/proc/PID/fd`) of smtplb,"
        " queue depth (queued + in flight + deferred, from `/api/v1/overview`).",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| messages sent / accepted (250) | {load.sent:,} / {len(load.accepted):,} |",
        f"| refused by smtplb | {_counter(load.refused)} |",
        f"| load-side errors | {_counter(load.errors)} |",
        f"| times the load fell over 1 s behind its schedule | {load.late:,} |",
        f"| accepted and delivered to a sink | {len(load.accepted) - len(outcome.missing):,} |",
        f"| accepted and **not** delivered | {len(outcome.missing):,} |",
        f"| delivered twice or more (at-least-once after a fault) | {duplicates:,} |",
        f"| faults injected | {sum(1 for f in outcome.faults if f.started)} |",
        "| queue empty after the load stopped | "
        + (f"{outcome.drained_in:.1f} s" if outcome.drained_in is not None else "**no**")
        + " |",
        f"| smtplb warnings/errors in its log | {len(outcome.log_warnings):,}"
        f" ({sum('Traceback' in w for w in outcome.log_warnings)} tracebacks) |",
        "",
        "| trend (after warm-up) | first third | middle third | last third | peak | slope /h"
        " | allowed | |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in trends:
        lines.append(
            f"| {t.name} | {t.first:,.1f} | {t.middle:,.1f} | {t.last:,.1f} | {t.peak:,.1f} |"
            f" {t.slope_per_hour:+,.1f} | +{t.allowed:,.0f} | {_judgement(t)} |"
        )
    ok = flat and delivered_ok and outcome.smtplb_alive
    conclusive = long_enough(args)
    shape = ("flat" if flat else "not flat") if conclusive else "too short to judge flatness"
    lines += [
        "",
        f"**Verdict: {shape}; "
        + ("every accepted message was delivered" if delivered_ok else "messages were lost")
        + ("" if outcome.smtplb_alive else "; smtplb died")
        + f" — {'pass' if ok else 'FAIL'}"
        + ("" if conclusive else " (deliveries only)")
        + ".** Flat means: after warm-up (the first 15 % of"
        " the run, at most 5 minutes) the median of the last third of the samples exceeds"
        " the median of the middle third by no more than the allowance (memory: 5 MB or"
        " 5 %; open files: 10; queue depth: 200 messages, about what one fault holds back):"
        " growth has stopped by the end. Bounded caches fill first: the trace book keeps"
        f" the last {TRACE_CAPACITY:,} messages' traces (`queue show`), full after"
        f" {TRACE_CAPACITY / args.rate:,.0f} s at this rate; a run shorter than three times"
        " that cannot show a plateau (the verdict says so). RSS is shown but not judged:"
        " it counts the pages of SQLite's memory map"
        " of the spool file (up to 64 MiB), which grows while finished messages are kept"
        " (`keep_final`, a day); RssAnon is the process's own memory.",
        "",
        "| t (s) | accepted | delivered | queued | in flight | deferred | RSS (MB)"
        " | RssAnon (MB) | open files | fault |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in _spread(outcome.samples, 30):
        q = s.queue
        lines.append(
            f"| {s.t:,.0f} | {s.accepted:,} | {s.delivered:,} | {q.get('queued', 0):,} |"
            f" {q.get('in_flight', 0):,} | {q.get('deferred', 0):,} | {s.rss / 1e6:.1f} |"
            f" {s.anon / 1e6:.1f} | {s.fds} | {s.faults} |"
        )
    if outcome.missing:
        lines += ["", "Not delivered (first 20): " + ", ".join(outcome.missing[:20])]
    return "\n".join(lines) + "\n"


def _judgement(t: Trend) -> str:
    word = "flat" if t.flat else "grows"
    return (word if t.flat else f"**{word}**") if t.judged else f"{word} (not judged)"


def _counter(c: Counter[str]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(c.items())) or "0"


def _spread(samples: list[Sample], n: int) -> list[Sample]:
    """At most ``n`` samples spread evenly, the first and the last always in."""
    if len(samples) <= n:
        return samples
    step = (len(samples) - 1) / (n - 1)
    return [samples[round(i * step)] for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of load (3600)")
    parser.add_argument("--rate", type=float, default=20.0, help="messages a second (20)")
    parser.add_argument("--fault-every", type=float, default=None, help="seconds (240)")
    parser.add_argument("--fault-length", type=float, default=None, help="seconds (60)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds (10)")
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="seconds (600)")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--no-report", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0 or args.sample_every <= 0:
        parser.error("--duration, --rate and --sample-every must be above 0")
    if args.fault_every is None:
        args.fault_every = min(240.0, args.duration / 4)
    if args.fault_length is None:
        args.fault_length = min(60.0, args.fault_every / 2)
    started, t_start = datetime.now(UTC), time.perf_counter()
    become_subreaper()
    with terminate_on_sigterm(), Workdir(args.keep, args.workdir) as work:
        try:
            # No Postfix here: machine_info only asks it for its version when none is given.
            info = machine_info(cast(Tools, None), work, postfix_version="not used")
            outcome = soak(work, args)
        except KeyboardInterrupt:
            print("interrupted: smtplb and sinks stopped", file=sys.stderr)
            return 130
        except (BenchError, OSError) as exc:
            print(f"soak: {exc}", file=sys.stderr)
            return 1
    wall = time.perf_counter() - t_start
    text = report(shown_argv("bench/soak.py", argv), args, info, outcome, started, wall)
    print(text)
    if not args.no_report:
        update_results("soak", text)
        print("wrote bench/RESULTS.md")
    trends_flat = all(t.flat for t in verdict(outcome, args.duration) if t.judged)
    trends_flat = trends_flat or not long_enough(args)
    return 0 if trends_flat and not outcome.missing and outcome.smtplb_alive else 1


def long_enough(args: argparse.Namespace) -> bool:
    """Long enough for the bounded caches to fill and a plateau to show."""
    return args.duration >= 3 * TRACE_CAPACITY / args.rate


if __name__ == "__main__":
    sys.exit(main())
