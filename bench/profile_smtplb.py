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
from datetime import UTC, datetime
from pathlib import Path

from harness import (
    SINK_HOSTS,
    BenchError,
    SinkSet,
    SmtplbServer,
    Workdir,
    become_subreaper,
    find_tools,
    free_port_on_all,
    reap_orphans,
    section_marker,
    shown,
    source_command,
    stop_process,
    terminate_on_sigterm,
    tree_cpu,
    update_results,
)

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def short_path(path: str) -> str:
    """A frame's file without this machine's directories."""
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail if marker != "/lib/python3" else "stdlib/" + tail.split("/", 1)[-1]
    return Path(path).name


def frame_key(frame: str) -> str:
    m = _FRAME.match(frame)
    if m is None:
        return frame
    return f"{m.group('func')} ({short_path(m.group('file'))})"


def parse_raw(text: str) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    """py-spy's raw (collapsed) output: ``frame;frame;…;innermost COUNT`` per line.

    Returns self samples per function, inclusive samples per function (once per stack),
    self samples per file, and the total."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    files: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_key(f) for f in stack.split(";") if f and "(" in f]
        if not frames:
            continue
        total += count
        self_t[frames[-1]] += count
        for key in set(frames):
            incl[key] += count
        leaf = _FRAME.match(stack.split(";")[-1])
        files[short_path(leaf.group("file")) if leaf else "?"] += count
    return self_t, incl, files, total


def table(counter: Counter[str], total: int, top: int, what: str) -> list[str]:
    lines = [f"| {what} | samples | % |", "|---|---:|---:|"]
    for key, n in counter.most_common(top):
        lines.append(f"| `{key}` | {n:,} | {100 * n / total:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
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
        smtplb = SmtplbServer(work / "smtplb", sinks.relays)
        raw = args.raw or work / "profile.txt"
        spy: subprocess.Popen[bytes] | None = None
        try:
            sinks.start()
            smtplb.start()
            time.sleep(1)
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(smtplb.pid),
                    "--rate",
                    str(args.rate),
                    "--nonblocking",
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
        self_t, incl, files, total = parse_raw(raw.read_text())
    if total == 0:
        print("profile: py-spy recorded no samples", file=sys.stderr)
        return 1
    rate = delivered / elapsed
    lines = [
        section_marker("profile"),
        "## Profile: smtplb under case (a)",
        "",
        f"`python bench/profile_smtplb.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
        f" on {started:%Y-%m-%d %H:%M} UTC: py-spy {args.rate} Hz, `--nonblocking`,"
        f" while `{shown(cmd).replace(str(smtplb.port), 'PORT')}` ran"
        f" (exit {source.returncode}); {delivered:,} messages at the sinks in {elapsed:.1f} s"
        f" ({rate:,.0f} msg/s under the profiler), smtplb CPU {cpu:.1f} s"
        f" ({1000 * cpu / max(delivered, 1):.2f} ms/msg). {total:,} samples of running"
        " (non-idle) threads; % is of those.",
        "",
        "### Self time (innermost frame)",
        "",
        *table(self_t, total, args.top, "function (file)"),
        "",
        "### Inclusive time (anywhere on the stack)",
        "",
        *table(incl, total, args.top, "function (file)"),
        "",
        "### Self time by file",
        "",
        *table(files, total, 15, "file"),
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
