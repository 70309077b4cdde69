"""Processes for the benchmarks: starting, stopping and reaping them, and what they cost.

Theory of operation. Every server runs as a descendant of the benchmark process, which
makes itself a child subreaper: when Postfix's master exits, its children are re-parented
to us (not to PID 1), so we can reap them and nothing is left behind. CPU is read from
/proc (see :func:`tree_cpu`); memory is sampled from /proc by a thread (see
:class:`MemorySampler`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    """A problem the user has to fix (a missing tool, a server that did not start)."""


def become_subreaper() -> None:
    """Orphaned descendants (Postfix daemons after master exits) are re-parented to us."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    ppid: int
    pgrp: int
    state: str
    cpu: float  # utime + stime, seconds
    child_cpu: float  # cutime + cstime: children it has reaped, seconds
    rss: int  # bytes


def read_stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 of proc(5): state, ppid, pgrp, …, utime=14, stime, cutime, cstime
    return ProcStat(
        pid,
        int(fields[1]),
        int(fields[2]),
        fields[0],
        (int(fields[11]) + int(fields[12])) / CLK_TCK,
        (int(fields[13]) + int(fields[14])) / CLK_TCK,
        int(fields[21]) * PAGE,
    )


def all_procs() -> dict[int, ProcStat]:
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := read_stat(int(entry))) is not None:
            procs[st.pid] = st
    return procs


def tree(root: int, procs: dict[int, ProcStat] | None = None) -> list[ProcStat]:
    """The root and all its live descendants (zombies included: not yet reaped)."""
    procs = all_procs() if procs is None else procs
    children: dict[int, list[ProcStat]] = {}
    for st in procs.values():
        children.setdefault(st.ppid, []).append(st)
    if root not in procs:
        return []
    out, todo = [], [procs[root]]
    while todo:
        st = todo.pop()
        out.append(st)
        todo.extend(children.get(st.pid, ()))
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by a process tree, including its exited members.

    For each live member (the root and every descendant, zombies too): utime + stime
    of its own, plus cutime + cstime, the CPU of the children it has already reaped.
    Postfix's master reaps every daemon that exits (after max_idle / max_use), so its
    cutime holds them all; the daemons still alive add their own. A daemon that is
    reaped between the /proc reads may be missed or counted twice once: a few ms.
    """
    return sum(st.cpu + st.child_cpu for st in tree(root))


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def vm_hwm(pid: int) -> int:
    """Peak resident set size of one process (VmHWM), bytes."""
    return _status_kb(pid, "VmHWM:")


def rss_anon(pid: int) -> int:
    """Resident anonymous memory (heap, stacks; not file pages such as SQLite's mmap)."""
    return _status_kb(pid, "RssAnon:")


def machine_busy() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(p) for p in parts[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class MemoryPeak:
    rss: int = 0  # largest sum of RSS over the tree seen in one sample
    pss: int = 0  # largest sum of PSS (shared pages split between sharers)
    anon: int = 0  # largest sum of RssAnon (private heap; no file-backed pages)
    processes: int = 0  # most processes in the tree in one sample


class MemorySampler:
    """Samples a process tree's memory every ``interval`` seconds in a thread."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.root = root
        self.interval = interval
        self.peak = MemoryPeak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        live = [st for st in tree(self.root) if st.state != "Z"]
        peak = self.peak
        peak.rss = max(peak.rss, sum(st.rss for st in live))
        peak.pss = max(peak.pss, sum(pss_bytes(st.pid) for st in live))
        peak.anon = max(peak.anon, sum(rss_anon(st.pid) for st in live))
        peak.processes = max(peak.processes, len(live))


def _gone(pid: int) -> bool:
    """Exited: reaped by us now, or already, or a zombie some other parent must reap."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
    st = read_stat(pid)
    return st is None or st.state == "Z"


def reap(pids: Sequence[int], timeout: float = 10.0) -> None:
    """Wait for descendants (ours as subreaper once their parent is gone) to exit;
    SIGKILL the ones still there after ``timeout``."""
    remaining = set(pids)
    deadline = time.monotonic() + timeout
    killed = False
    while remaining := {pid for pid in remaining if not _gone(pid)}:
        if time.monotonic() > deadline:
            if killed:
                return
            for pid in remaining:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed, deadline = True, time.monotonic() + 5
        time.sleep(0.05)


def reap_orphans() -> None:
    """Reap zombies re-parented to us (we are a subreaper) that no Popen owns."""
    for st in all_procs().values():
        if st.ppid == os.getpid() and st.state == "Z":
            _gone(st.pid)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_port_on_all(hosts: Sequence[str]) -> int:
    """A port that is free on every one of ``hosts`` (for the three sinks)."""
    for _ in range(50):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise BenchError(f"no common free port on {', '.join(hosts)}")


def wait_banner(
    host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until an SMTP server on host:port answers with a 220 greeting."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"server for {host}:{port} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise BenchError(f"no SMTP greeting from {host}:{port} after {timeout}s ({last})")


def port_closed(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) != 0


@dataclass
class Workdir:
    """A temporary directory for spools and logs, removed at the end unless kept."""

    keep: bool = False
    parent: Path | None = None
    path: Path = field(init=False)

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix="smtplb-bench-", dir=self.parent))
        self.path.chmod(0o755)  # Postfix's daemons run as postfix and must traverse it
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.keep:
            print(f"kept {self.path}")
        else:
            shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the benchmark like Ctrl-C does, through the ``finally`` blocks."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
