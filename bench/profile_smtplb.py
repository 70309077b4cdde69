"""Where smtplb spends its time under case (a) of bench/run.py, sampled with py-spy.

    .venv/bin/python bench/profile_smtplb.py [--messages 20000] [--rate 200] [--raw FILE]

Starts the three smtp-sinks and smtplb as bench/run.py does, attaches
``py-spy record --nonblocking`` to smtplb, drives it with case (a) (1 message per
connection, 5 KB, 20 sessions), then ranks functions by self time (the sample's
innermost frame) and by inclusive time (anywhere on the stack), and writes both to the
"Profile" section of bench/RESULTS.md. py-spy is a dev tool: ``pip install py-spy``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness import (
    SINK_HOSTS,
    SinkSet,
    SmtplbServer,
    find_tools,
    section_marker,
    shown,
    shown_argv,
    source_command,
    update_results,
)
from procs import (
    BenchError,
    Workdir,
    become_subreaper,
    free_port_on_all,
    reap_orphans,
    stop_process,
    terminate_on_sigterm,
    tree_cpu,
)

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def short_path(path: str) -> str:
    """A frame's file without this machine's directories (py-spy already shortens the
    files it finds on sys.path: ``smtplb/spool/sqlite.py``, ``asyncio/runners.py``)."""
    if not path.startswith("/"):
        return path
    for marker in ("/site-packages/", "/src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return Path(path).name


def frame_key(frame: str) -> str:
    m = _FRAME.match(frame)
    if m is None:
        return frame
    return f"{m.group('func')} ({short_path(m.group('file'))})"


@dataclass
class Profile:
    self_time: Counter[str] = field(default_factory=Counter)  # innermost frame
    inclusive: Counter[str] = field(default_factory=Counter)  # anywhere, once per stack
    files: Counter[str] = field(default_factory=Counter)  # innermost frame's file
    threads: Counter[str] = field(default_factory=Counter)
    total: int = 0


def parse_raw(text: str) -> Profile:
    """py-spy's raw (collapsed) output: ``thread (TID): NAME;frame;…;innermost COUNT``."""
    profile = Profile()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw_frames = stack.split(";")
        thread = "?"
        if raw_frames[0].startswith("thread ("):
            thread = raw_frames.pop(0).split(": ", 1)[-1]
        frames = [frame_key(f) for f in raw_frames if _FRAME.match(f)]
        if not frames:
            continue
        profile.total += count
        profile.threads[re.sub(r":.*", "", thread)] += count
        profile.self_time[frames[-1]] += count
        for key in set(frames):
            profile.inclusive[key] += count
        profile.files[frames[-1].rsplit(" (", 1)[-1].rstrip(")")] += count
    return profile


def table(counter: Counter[str], total: int, top: int, what: str) -> list[str]:
    lines = [f"| {what} | samples | % |", "|---|---:|---:|"]
    for key, n in counter.most_common(top):
        lines.append(f"| `{key}` | {n:,} | {100 * n / total:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument(
        "--workers", type=int, default=1, help="smtplb's workers (1; more: --subprocesses)"
    )
    parser.add_argument(
        "--members", type=int, default=3, help="relay members, member i onto sink i mod 3 (3)"
    )
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--native", action="store_true", help="C frames too (py-spy pauses smtplb per sample)"
    )
    parser.add_argument("--raw", type=Path, default=None, help="keep py-spy's raw output here")
    parser.add_argument("--no-report", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        print("profile: py-spy is missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    become_subreaper()
    try:
        tools = find_tools(install=False)
    except BenchError as exc:
        print(f"profile: {exc}", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    with terminate_on_sigterm(), Workdir() as work:
        sinks = SinkSet(tools, free_port_on_all(SINK_HOSTS))
        relays = [sinks.relays[i % len(sinks.relays)] for i in range(args.members)]
        smtplb = SmtplbServer(work / "smtplb", relays, workers=args.workers)
        raw = args.raw or work / "profile.txt"
        spy: subprocess.Popen[bytes] | None = None
        try:
            sinks.start()
            smtplb.start()
            time.sleep(1)
            spy_mode = ["--native"] if args.native else ["--nonblocking"]
            spy_mode += ["--threads"] + (["--subprocesses"] if args.workers > 1 else [])
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(smtplb.pid),
                    "--rate",
                    str(args.rate),
                    *spy_mode,
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(2)  # py-spy attaches
            if spy.poll() is not None:
                err = spy.stderr.read().decode() if spy.stderr else ""
                raise BenchError(f"py-spy did not attach: {err}")
            cmd = source_command(
                tools,
                smtplb.port,
                messages=args.messages,
                size=5120,
                sessions=args.sessions,
                per_connection=False,
            )
            cpu0, t0 = tree_cpu(smtplb.pid), time.perf_counter()
            source = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
            while sinks.total() < args.messages and time.perf_counter() - t0 < 600:
                time.sleep(0.01)
            elapsed, cpu = time.perf_counter() - t0, tree_cpu(smtplb.pid) - cpu0
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            delivered = sinks.total()
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BenchError as exc:
            print(f"profile: {exc}", file=sys.stderr)
            return 1
        finally:
            stop_process(spy, 10)
            smtplb.stop()
            sinks.stop()
            reap_orphans()
        profile = parse_raw(raw.read_text())
    total = profile.total
    if total == 0:
        print("profile: py-spy recorded no samples", file=sys.stderr)
        return 1
    rate = delivered / elapsed
    own = Counter({k: v for k, v in profile.inclusive.items() if "(smtplb/" in k})
    lines = [
        section_marker("profile"),
        "## Profile: smtplb under case (a)",
        "",
        f"`{shown_argv('bench/profile_smtplb.py', sys.argv[1:] if argv is None else argv)}`"
        f" on {started:%Y-%m-%d %H:%M} UTC: py-spy {args.rate} Hz, `{' '.join(spy_mode)}`,"
        f" while `{shown(cmd).replace(str(smtplb.port), 'PORT')}` ran"
        f" (exit {source.returncode}); {delivered:,} messages at the sinks in {elapsed:.1f} s"
        f" ({rate:,.0f} msg/s under the profiler), smtplb CPU {cpu:.1f} s"
        f" ({1000 * cpu / max(delivered, 1):.2f} ms/msg). {total:,} samples of running"
        " (non-idle) threads; % is of those.",
        "",
        *(
            []
            if args.native
            else [
                "Without `--native`, time in C (the event loop, socket calls, SQLite, fsync)",
                "is charged to the Python function that called it.",
                "",
            ]
        ),
        "### By thread",
        "",
        *table(profile.threads, total, 10, "thread"),
        "",
        "### Self time (innermost frame)",
        "",
        *table(profile.self_time, total, args.top, "function (file)"),
        "",
        "### Inclusive time of smtplb's functions (anywhere on the stack)",
        "",
        *table(own, total, args.top, "function (file)"),
        "",
        "### Self time by file",
        "",
        *table(profile.files, total, 15, "file"),
        "",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_report:
        update_results("profile", text)
        print("wrote bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
