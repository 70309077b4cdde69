"""User-space instructions per message of one smtplb worker, counted by callgrind.

    .venv/bin/python bench/instructions.py [--messages 400] [--size 5120] [--per-connection]

Rates and CPU seconds on a shared 2-core machine move by ±20 % from run to run; an
instruction count does not (the same build and load count the same within about 1 %,
whatever else the machine is doing), so this is how a change to the per-message work is
judged before a rate is measured. Starts the three smtp-sinks and smtplb (``workers =
1``, so the one process does all the work) under ``valgrind --tool=callgrind``, sends
``--warm`` messages with ``smtp-source`` (imports, caches, first connections), zeroes the
counters, sends ``--messages`` more and waits until the sinks have them all, dumps the
counters, and prints their total over the messages. Kernel time (syscalls, TCP, fsync)
is not counted: the figure is the Python and C work of the process itself.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import SinkSet, SmtplbServer, find_tools, smtplb_command, source_command
from procs import BenchError, Workdir, free_port


def _summary(path: Path) -> int:
    match = re.search(r"^(?:summary|totals):\s+(\d+)", path.read_text(errors="replace"), re.M)
    if match is None:
        raise BenchError(f"no totals in {path}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400, help="counted (400)")
    parser.add_argument("--warm", type=int, default=100, help="sent before counting (100)")
    parser.add_argument("--size", type=int, default=5120, help="smtp-source -l (5120)")
    parser.add_argument("--sessions", type=int, default=10, help="smtp-source -s (10)")
    parser.add_argument("--per-connection", action="store_true", help="smtp-source -d")
    parser.add_argument("--label", default="smtplb", help="what to call this build")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found: apt-get install valgrind")
    tools = find_tools(install=False)
    with Workdir() as work:
        sinks = SinkSet(tools, free_port()).start()
        out = work / "callgrind.out"
        grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
        server = SmtplbServer(work / "smtplb", sinks.relays, command=[*grind, *smtplb_command()])
        try:
            server.start(wait=False)
            server.wait_ready(timeout=600)

            def send(n: int) -> float:
                target = sinks.total() + n
                started = time.perf_counter()
                cmd = source_command(
                    tools,
                    server.port,
                    messages=n,
                    size=args.size,
                    sessions=args.sessions,
                    per_connection=args.per_connection,
                )
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                while sinks.total() < target:
                    time.sleep(0.05)
                return time.perf_counter() - started

            send(args.warm)
            control = ["callgrind_control"]
            subprocess.run([*control, "-z", str(server.pid)], check=True, capture_output=True)
            took = send(args.messages)
            subprocess.run([*control, "-d", str(server.pid)], check=True, capture_output=True)
            dumps = sorted(work.glob(f"callgrind.out.{server.pid}.*"))
            if not dumps:
                raise BenchError("callgrind wrote no dump")
            total = _summary(dumps[-1])
        finally:
            server.stop()
            sinks.stop()
    per = total / args.messages
    print(
        f"{args.label}: {per / 1e6:.3f} M instructions per message"
        f" ({args.messages} messages of {args.size} bytes,"
        f" {'many' if args.per_connection else 'one'} per connection, {took:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"instructions: {exc}", file=sys.stderr)
        sys.exit(2)
