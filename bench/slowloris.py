"""Slowloris against smtplb on loopback: many connections trickle one byte at a time.

    .venv/bin/python bench/slowloris.py [--connections 1500] [--addresses 150]
        [--interval 5] [--deadline 10] [--max-connections 2000] [--legacy]

smtplb runs as a subprocess (``smtplb run``) with ``[smtp] command_deadline`` set to
``--deadline``. The attack opens ``--connections`` connections from ``--addresses``
source addresses (127.0.1.1, 127.0.1.2, …), reads the greeting and then sends a command
one byte every ``--interval`` seconds, never finishing the line. Meanwhile a normal
client sends one message a second from 127.0.0.1. Printed: how many attack connections
were greeted, closed by smtplb and with what, how long after their first byte, how many
were still open at the end, and how the normal client fared.

``--legacy`` leaves out the keys that older smtplb versions do not know (to show the
problem on them: the connections then stay open until the run ends). The run is bounded:
it stops ``--observe`` seconds (default 3 x deadline + 10) after the last connection is
up. Loopback only; raises the open-files soft limit to the hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import SmtplbServer
from procs import BenchError, become_subreaper, free_port

MESSAGE = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: ok\r\n\r\nnormal client\r\n"


@dataclass
class Attack:
    greeted: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # greeting other than 220
    closed: dict[str, int] = field(default_factory=dict)  # reply that ended it -> count
    lifetimes: list[float] = field(default_factory=list)  # first byte -> closed, seconds
    bytes_sent: list[int] = field(default_factory=list)
    open_now: int = 0
    peak_open: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # connect/greeting errors


def _count(table: dict[str, int], key: str) -> None:
    table[key] = table.get(key, 0) + 1


async def trickler(port: int, source: str, interval: float, stop: asyncio.Event, a: Attack) -> None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 30
        )
        greeting = await asyncio.wait_for(reader.readline(), 30)
    except (OSError, TimeoutError) as exc:
        _count(a.failed, type(exc).__name__)
        return
    if not greeting.startswith(b"220"):
        _count(a.refused, greeting[:9].decode(errors="replace") or "(closed)")
        writer.close()
        return
    a.greeted += 1
    a.open_now += 1
    a.peak_open = max(a.peak_open, a.open_now)
    first: float | None = None
    sent = 0
    command = b"EHLO slowloris.example.test and it goes on and on and on" * 10
    try:
        while not stop.is_set():
            writer.write(command[sent : sent + 1])
            sent += 1
            if first is None:
                first = time.monotonic()
            try:
                answer = await asyncio.wait_for(reader.read(4096), interval)
            except TimeoutError:
                continue
            a.lifetimes.append(time.monotonic() - first)
            a.bytes_sent.append(sent)
            _count(a.closed, answer[:9].decode(errors="replace") or "(closed)")
            return
    except OSError as exc:
        _count(a.closed, type(exc).__name__)
    finally:
        a.open_now -= 1
        writer.close()


@dataclass
class Normal:
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def normal_client(port: int, stop: threading.Event, n: Normal) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="normal.test", timeout=30) as s:
                s.sendmail("a@example.com", ["b@example.net"], MESSAGE)
            n.sent += 1
            n.latencies.append(time.monotonic() - started)
        except (OSError, smtplib.SMTPException) as exc:
            n.failed.append(f"{type(exc).__name__}: {exc}"[:120])
        stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


async def attack(args: argparse.Namespace, port: int) -> tuple[Attack, Normal, float]:
    a, n = Attack(), Normal()
    stop, stop_normal = asyncio.Event(), threading.Event()
    normal = threading.Thread(target=normal_client, args=(port, stop_normal, n), daemon=True)
    normal.start()
    started = time.monotonic()
    tasks = []
    for i in range(args.connections):
        source = f"127.0.1.{i % args.addresses + 1}"
        tasks.append(asyncio.create_task(trickler(port, source, args.interval, stop, a)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # let the accept queue drain
    ramp = time.monotonic() - started
    observe = args.observe if args.observe is not None else 3 * args.deadline + 10
    await asyncio.wait(tasks, timeout=observe)
    still_open = a.open_now
    stop.set()
    await asyncio.gather(*tasks)
    a.open_now = still_open
    stop_normal.set()
    await asyncio.to_thread(normal.join, 40)
    return a, n, ramp


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--connections", type=int, default=1500)
    p.add_argument("--addresses", type=int, default=150, help="127.0.1.1 … (at most 254)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between bytes")
    p.add_argument("--deadline", type=float, default=10.0, help="[smtp] command_deadline, s")
    p.add_argument("--max-connections", type=int, default=2000, help="[smtp] max_connections")
    p.add_argument("--observe", type=float, default=None, help="seconds after the ramp")
    p.add_argument("--legacy", action="store_true", help="leave out the new [smtp] keys")
    args = p.parse_args()
    if not 1 <= args.addresses <= 254 or args.connections > 20_000:
        p.error("--addresses must be 1 to 254 and --connections at most 20000")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 200
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        raise BenchError(f"needs {need} open files; the hard limit is {hard}")
    become_subreaper()
    per_client = -(-args.connections // args.addresses) + 5
    smtp: dict[str, str | int] = {"max_connections_per_client": per_client}
    if not args.legacy:
        smtp |= {"command_deadline": f"{args.deadline:g}s", "max_connections": args.max_connections}
    with tempfile.TemporaryDirectory(prefix="smtplb-slowloris-") as tmp:
        server = SmtplbServer(Path(tmp), [f"127.0.0.1:{free_port()}"])
        relay_line = 'relay_networks = ["127.0.0.0/8"]\n'  # the harness's [smtp] section
        extra = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in smtp.items())
        server.config_text = server.config_text.replace(relay_line, relay_line + extra)
        server.start()
        try:
            a, n, ramp = asyncio.run(attack(args, server.port))
        finally:
            server.stop()
    lifetimes = sorted(a.lifetimes)
    print(f"attack: {args.connections} connections from {args.addresses} addresses, one byte")
    limits = (
        "no command_deadline or max_connections (--legacy)"
        if args.legacy
        else f"command_deadline {args.deadline:g}s, max_connections {args.max_connections}"
    )
    print(f"  every {args.interval:g}s; {limits}; ramp {ramp:.1f}s")
    print(f"  greeted 220: {a.greeted}; refused at greeting: {a.refused or 0}")
    print(f"  connect/greeting errors: {a.failed or 0}; peak open at once: {a.peak_open}")
    print(f"  closed by smtplb: {len(lifetimes)} {a.closed}")
    if lifetimes:
        print(
            f"  first byte -> closed: min {lifetimes[0]:.2f}s, "
            f"median {statistics.median(lifetimes):.2f}s, max {lifetimes[-1]:.2f}s; "
            f"bytes sent each: max {max(a.bytes_sent)}"
        )
    print(f"  still open when the run ended: {a.open_now}")
    lat = sorted(n.latencies)
    print(
        f"normal client: {n.sent} messages accepted, {len(n.failed)} failed"
        + (f", latency median {statistics.median(lat):.3f}s max {lat[-1]:.3f}s" if lat else "")
    )
    for failure in n.failed[:5]:
        print(f"  failed: {failure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
