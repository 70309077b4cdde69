"""Disk bytes written per message: where a large message's bytes go (issue 17, item 2).

    .venv/bin/python bench/disk_bytes.py [--messages 3000] [--size 51200] [--runs 2]

smtplb relays to three ``smtplb sink`` upstreams; ``smtp-source`` (20 sessions, one
message per connection, like case (c)) sends ``--messages`` of ``--size`` bytes.
Measured over the smtplb process tree, from before the load until every message has
reached a sink: ``write_bytes`` of ``/proc/PID/io`` (bytes the processes caused to be
sent to the block layer: the spool, its WAL and checkpoints, the log) and user + system
CPU, each per message, and the end-to-end rate (wall clock: the machine is shared).
``--strace -c`` also runs ``strace -c -f`` on smtplb for the syscall mix (``--strace
'-y -e trace=write,pwrite64' --strace-out FILE`` for the bytes per file).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import SINK_HOSTS, SmtplbServer, find_tools, smtplb_command, source_command
from procs import BenchError, free_port_on_all, stop_process, tree, tree_cpu


def tree_write_bytes(root: int) -> int:
    total = 0
    for st in tree(root):
        try:
            for line in Path(f"/proc/{st.pid}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def count_lines(paths: list[Path]) -> int:
    n = 0
    for path in paths:
        try:
            with path.open("rb") as f:
                n += sum(1 for _ in f)
        except OSError:
            pass
    return n


def one_run(args: argparse.Namespace, work: Path, run: int) -> dict[str, float]:
    port = free_port_on_all(SINK_HOSTS)
    records = [work / f"sink-{run}-{i}.jsonl" for i in range(len(SINK_HOSTS))]
    sinks = [
        subprocess.Popen(
            [*smtplb_command(), "sink", "--listen", f"{host}:{port}", "--record", str(rec)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for host, rec in zip(SINK_HOSTS, records, strict=True)
    ]
    server = SmtplbServer(work / f"smtplb-{run}", [f"{h}:{port}" for h in SINK_HOSTS],
                          workers=args.workers)  # fmt: skip
    strace: subprocess.Popen[bytes] | None = None
    out = args.strace_out or work / f"strace-{run}.txt"
    try:
        time.sleep(0.5)
        server.start()
        if args.strace:
            strace = subprocess.Popen(
                [
                    "strace",
                    *args.strace.split(),
                    "-f",
                    "-o",
                    str(out),
                    *(f"-p{st.pid}" for st in tree(server.pid)),
                ]
            )
            time.sleep(1.0)
        cmd = source_command(
            args.tools, server.port, messages=args.messages, size=args.size,
            sessions=args.sessions, per_connection=args.per_connection,
        )  # fmt: skip
        wb0, cpu0, t0 = tree_write_bytes(server.pid), tree_cpu(server.pid), time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + args.timeout
        while count_lines(records) < args.messages:
            if time.monotonic() > deadline:
                raise BenchError(f"only {count_lines(records)} of {args.messages} delivered")
            time.sleep(0.1)
        elapsed = time.perf_counter() - t0
        time.sleep(1.0)  # the last lazy commit
        wb1, cpu1 = tree_write_bytes(server.pid), tree_cpu(server.pid)
        if strace is not None:
            stop_process(strace, 10)
            if args.strace_out is None:
                print(out.read_text()[:4000])
        n = args.messages
        return {
            "write_bytes_per_msg": (wb1 - wb0) / n,
            "ratio": (wb1 - wb0) / n / args.size,
            "cpu_us_per_msg": (cpu1 - cpu0) / n * 1e6,
            "rate": n / elapsed,
        }
    finally:
        server.stop()
        for sink in sinks:
            stop_process(sink, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=51200)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--per-connection", action="store_true", help="case (d): smtp-source -d")
    parser.add_argument(
        "--strace", default="", help="run strace with these options (e.g. '-c') on smtplb"
    )
    parser.add_argument("--strace-out", type=Path, default=None, help="keep strace's output")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (spools, logs)")
    args = parser.parse_args()
    args.tools = find_tools(install=False)
    tmp = tempfile.mkdtemp(dir=args.workdir)
    try:
        for run in range(args.runs):
            r = one_run(args, Path(tmp), run)
            print(
                f"run {run + 1}: {args.messages} x {args.size} B, workers={args.workers}:"
                f" write_bytes/msg {r['write_bytes_per_msg']:,.0f}"
                f" ({r['ratio']:.2f}x the message), CPU {r['cpu_us_per_msg']:,.0f} us/msg,"
                f" {r['rate']:,.0f} msg/s end to end (wall clock)",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
