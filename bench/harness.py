"""What the benchmarks share: Postfix's tools, the three smtp-sink upstreams, a throwaway
Postfix relay instance, smtplb as a subprocess, the load, and RESULTS.md.

Each object that starts something has a ``stop()`` that is safe to call twice, and the
scripts call them from ``finally``. Process accounting lives in ``procs``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import pwd
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from procs import (
    BenchError,
    MemoryPeak,
    all_procs,
    free_port,
    reap,
    stop_process,
    tree,
    tree_cpu,
    vm_hwm,
    wait_banner,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"

SINK_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SENDER = "bench@example.com"
RECIPIENT = "rcpt@example.net"  # smtp-source -N makes each one unique: 1rcpt@, 2rcpt@, …
SEARCH_PATH = ("/usr/sbin", "/sbin", "/usr/lib/postfix/sbin", "/usr/libexec/postfix")


# -- tools ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    smtp_sink: str
    smtp_source: str
    postfix: str
    postconf: str
    master: str

    def postfix_version(self, config_dir: Path | None = None) -> str:
        cmd = [self.postconf, "-h"]
        if config_dir is not None:
            cmd[1:1] = ["-c", str(config_dir)]
        out = subprocess.run(
            [*cmd, "mail_version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        return out or "unknown"


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SEARCH_PATH))


def _install_postfix() -> None:
    """Install Postfix unconfigured, as .ci/run does: the system instance is never set up."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError(
            "Postfix's smtp-sink, smtp-source and master are required: install the 'postfix'"
            " package (Debian: debconf 'No configuration', then apt-get install postfix)"
        )
    print("installing postfix (debconf: No configuration) …", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["debconf-set-selections"],
        input="postfix postfix/main_mailer_type select No configuration\n",
        text=True,
        check=True,
        env=env,
    )
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env)


def find_tools(install: bool = True) -> Tools:
    """Postfix's programs; installs the package when missing (and allowed)."""
    names = ("smtp-sink", "smtp-source", "postfix", "postconf", "master")
    found = {n: _which(n) for n in names}
    if None in found.values() and install:
        _install_postfix()
        found = {n: _which(n) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise BenchError(
            f"missing {', '.join(missing)}: install the Debian package 'postfix'"
            " (smtp-sink/smtp-source in /usr/sbin, master in /usr/lib/postfix/sbin)"
        )
    if os.geteuid() != 0:
        raise BenchError("the benchmark runs a Postfix instance: run it as root")
    return Tools(*(str(found[n]) for n in names))


# -- the upstreams ----------------------------------------------------------------------


class Sink:
    """One smtp-sink; counts the messages it has received from its ``-c`` counters.

    smtp-sink -c prints ``sess=S quit=Q mesg=M`` with a carriage return each time a
    session ends, QUIT is read or a message's final "." is received; ``mesg`` is the
    number of complete messages so far (one recipient each in these benchmarks).
    """

    _MESG = re.compile(rb"mesg=(\d+)")

    def __init__(self, tools: Tools, host: str, port: int, user: str) -> None:
        self.host, self.port = host, port
        self.messages = 0
        self.first_at: float | None = None  # perf_counter of the first message
        self.proc = subprocess.Popen(
            [tools.smtp_sink, "-c", "-u", user, f"{host}:{port}", "1024"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"sink-{host}")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        tail = b""
        while chunk := os.read(fd, 65536):
            counters = (tail + chunk).replace(b"\n", b"\r").split(b"\r")
            tail = counters.pop()
            for item in reversed(counters):
                if m := self._MESG.search(item):
                    count = int(m.group(1))
                    if count and self.first_at is None:
                        self.first_at = time.perf_counter()
                    self.messages = max(self.messages, count)
                    break

    def stop(self) -> None:
        stop_process(self.proc, 5)
        self._reader.join(5)


class SinkSet:
    """Three smtp-sinks on 127.0.0.2, .3 and .4, same port, fresh counters."""

    def __init__(self, tools: Tools, port: int, hosts: Sequence[str] = SINK_HOSTS) -> None:
        self.tools, self.port, self.hosts = tools, port, hosts
        self.sinks: list[Sink] = []
        self.user = "nobody" if _user_exists("nobody") else "postfix"

    def start(self) -> SinkSet:
        self.stop()
        self.sinks = [Sink(self.tools, h, self.port, self.user) for h in self.hosts]
        for sink in self.sinks:
            wait_banner(sink.host, sink.port, 10, sink.proc)
        return self

    def counts(self) -> list[int]:
        return [s.messages for s in self.sinks]

    def total(self) -> int:
        return sum(s.messages for s in self.sinks)

    def first_at(self) -> float | None:
        times = [s.first_at for s in self.sinks if s.first_at is not None]
        return min(times) if times else None

    def stop(self) -> None:
        for sink in self.sinks:
            sink.stop()
        self.sinks = []

    @property
    def relays(self) -> list[str]:
        return [f"{h}:{self.port}" for h in self.hosts]


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# -- servers ----------------------------------------------------------------------------


class Server:
    """What the benchmark needs from a server under test."""

    name: str
    port: int

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        raise NotImplementedError

    def peak_rss_note(self, sampled: MemoryPeak) -> int:
        """Peak RSS for the report: exact where the kernel keeps it, else sampled."""
        return sampled.rss

    def warnings(self) -> list[str]:
        """Warning and error lines from the server's own log."""
        return []


# Upstream Postfix's master.cf services with chroot off (Debian turns it on; a chroot
# needs copies of /etc files inside the queue directory) and smtpd on a private port.
MASTER_CF = """\
# service   type  private unpriv chroot wakeup maxproc command + args
{listen}    inet  n       -       n       -       -       smtpd
pickup      unix  n       -       n       60      1       pickup
cleanup     unix  n       -       n       -       0       cleanup
qmgr        unix  n       -       n       300     1       qmgr
tlsmgr      unix  -       -       n       1000?   1       tlsmgr
rewrite     unix  -       -       n       -       -       trivial-rewrite
bounce      unix  -       -       n       -       0       bounce
defer       unix  -       -       n       -       0       bounce
trace       unix  -       -       n       -       0       bounce
verify      unix  -       -       n       -       1       verify
flush       unix  n       -       n       1000?   0       flush
proxymap    unix  -       -       n       -       -       proxymap
proxywrite  unix  -       -       n       -       1       proxymap
smtp        unix  -       -       n       -       -       smtp
relay       unix  -       -       n       -       -       smtp
showq       unix  n       -       n       -       -       showq
error       unix  -       -       n       -       -       error
retry       unix  -       -       n       -       -       error
discard     unix  -       -       n       -       -       discard
local       unix  -       n       n       -       -       local
virtual     unix  -       n       n       -       -       virtual
lmtp        unix  -       -       n       -       -       lmtp
anvil       unix  -       -       n       -       1       anvil
scache      unix  -       -       n       -       1       scache
postlog     unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
# A throwaway relay instance for the benchmark. Everything not set here is Postfix's
# default: queue files are fsynced before 250, process and concurrency limits as shipped.
compatibility_level = 3.6
queue_directory = {work}/queue
data_directory = {work}/data
maillog_file = {work}/maillog
maillog_file_prefixes = {work}
myhostname = relay.bench.test
mydomain = bench.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
transport_maps = randmap:{{{nexthops}}}
"""


class PostfixRelay(Server):
    """A Postfix instance of its own (config, queue and data directories under ``work``),
    master in the foreground as our child, relaying everything to the sinks at random."""

    name = "Postfix"

    def __init__(self, tools: Tools, work: Path, port: int, relays: Sequence[str]) -> None:
        self.tools, self.work, self.port = tools, work, port
        self.etc = work / "etc"
        self.proc: subprocess.Popen[bytes] | None = None
        self._pids: list[int] = []
        nexthops = ", ".join(f"smtp:[{h}]:{p}" for h, p in (r.split(":") for r in relays))
        self.main_cf = MAIN_CF.format(work=work, nexthops=nexthops)
        self.master_cf = MASTER_CF.format(listen=f"127.0.0.1:{port}".ljust(11))

    def setup(self) -> None:
        """Write the configuration and create a fresh, empty queue."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)
        self.etc.mkdir(exist_ok=True)
        (self.etc / "main.cf").write_text(self.main_cf)
        (self.etc / "master.cf").write_text(self.master_cf)
        shutil.rmtree(self.work / "queue", ignore_errors=True)
        (self.work / "queue").mkdir()
        data = self.work / "data"
        data.mkdir(exist_ok=True)
        shutil.chown(data, "postfix")
        # `postfix check` creates the queue subdirectories with Postfix's ownerships.
        out = subprocess.run(
            [self.tools.postfix, "-c", str(self.etc), "check"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            log = (self.work / "maillog").read_text() if (self.work / "maillog").exists() else ""
            raise BenchError(f"postfix check failed: {out.stderr}{log[-2000:]}")

    def start(self) -> None:
        self.setup()
        # master does setsid(): it leads a process group with all its daemons.
        self.proc = subprocess.Popen(
            [self.tools.master, "-c", str(self.etc)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_banner("127.0.0.1", self.port, 30, self.proc)
        except BenchError as exc:
            self.stop()
            raise BenchError(f"{exc}\n{self.maillog_tail()}") from exc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def maillog_tail(self, n: int = 20) -> str:
        path = self.work / "maillog"
        return "\n".join(path.read_text().splitlines()[-n:]) if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        group = [st.pid for st in all_procs().values() if st.pgrp == self.proc.pid]
        stop_process(self.proc, 30)  # master SIGTERMs its process group, then exits
        reap([p for p in group if p != self.proc.pid])
        self.proc = None

    def version(self) -> str:
        return self.tools.postfix_version(self.etc)

    def warnings(self) -> list[str]:
        path = self.work / "maillog"
        if not path.exists():
            return []
        return [
            line
            for line in path.read_text(errors="replace").splitlines()
            if re.search(r"\b(warning|error|fatal|panic):", line)
        ]


HAPROXY_CFG = """\
# A reference point, not a relay: HAProxy passes each SMTP connection through to a
# sink and stores nothing. Everything not set here is HAProxy's default.
global
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend smtp
    bind 127.0.0.1:{port}
    default_backend sinks

backend sinks
    balance roundrobin
{servers}
"""


def find_haproxy(install: bool = True) -> str | None:
    """HAProxy's binary; installs the Debian package when missing (and allowed)."""
    found = _which("haproxy")
    if found is None and install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing haproxy (the TCP-proxy reference) …", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "haproxy"], check=False, env=env)
        found = _which("haproxy")
    return found


class HaproxyTcp(Server):
    """HAProxy in TCP mode in front of the sinks, round robin: what passing the bytes
    through costs, with no SMTP, no storage and no fsync (the issue's reference)."""

    name = "HAProxy"

    def __init__(self, binary: str, work: Path, port: int, relays: Sequence[str]) -> None:
        self.binary, self.work, self.port = binary, work, port
        servers = "\n".join(f"    server sink{i + 1} {r}" for i, r in enumerate(relays))
        self.config_text = HAPROXY_CFG.format(port=port, servers=servers)
        self.config_path = work / "haproxy.cfg"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        with open(self.work / "haproxy.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_banner("127.0.0.1", self.port, 30, self.proc)  # a sink's banner, proxied
        except BenchError:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self.proc = None

    def version(self) -> str:
        out = subprocess.run([self.binary, "-v"], capture_output=True, text=True, check=False)
        m = re.search(r"version (\S+)", out.stdout)
        return m.group(1) if m else "unknown"


Sections = dict[str, dict[str, str | int | float | bool]]


def smtplb_command() -> list[str]:
    script = Path(sys.executable).with_name("smtplb")
    return [str(script)] if script.exists() else [sys.executable, "-m", "smtplb"]


def toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def smtplb_config(
    data_dir: Path,
    smtp_port: int,
    http_port: int,
    relays: Sequence[str],
    sections: Sections | None = None,
    workers: int | None = 1,
) -> str:
    """One pool, round robin, a relay member per sink; every other key at its default
    unless ``sections`` sets it (``{"health": {"interval": "1s"}}``); ``workers``
    None leaves the key out (smtplb's default: one per core)."""
    lines = [
        f"data_dir = {toml_str(str(data_dir))}",
        *([] if workers is None else [f"workers = {workers}"]),
        'hostname = "relay.bench.test"',
        "",
        "[smtp]",
        f'listen = ["127.0.0.1:{smtp_port}"]',
        'relay_networks = ["127.0.0.0/8"]',
        "",
        "[http]",
        f'listen = "127.0.0.1:{http_port}"',
    ]
    for section, values in (sections or {}).items():
        lines += ["", f"[{section}]"]
        for key, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = toml_str(value)
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
    lines += ["", "[[pools]]", 'name = "bench"', 'strategy = "round_robin"']
    for i, relay in enumerate(relays):
        lines += ["", "  [[pools.members]]", f'  name = "sink-{i + 1}"', f'  relay = "{relay}"']
    return "\n".join(lines) + "\n"


def suppression_db(path: Path, entries: int) -> Path:
    """A suppression database (``suppression.db``, beside the spool) holding
    ``entries`` suppressed addresses (none of them a bench recipient), made once and
    copied into the data directory at each fresh start."""
    import sqlite3

    from smtplb.reputation.embedded import SUPPRESSION_FILE, SqliteState

    path = path.with_name(SUPPRESSION_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    SqliteState(path.with_name("prefill-spool.db"), path).close()
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO suppression (address, reason, source, created_at)"
                " VALUES (?, '', 'import', 0)",
                ((f"suppressed{i}@list.bench.test",) for i in range(entries)),
            )
        # Only this file is copied into data_dir: nothing of the list may stay in the WAL.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return path


class SmtplbServer(Server):
    """``smtplb run -c FILE`` with a generated config; its data_dir under ``work``."""

    name = "smtplb"

    def __init__(
        self,
        work: Path,
        relays: Sequence[str],
        sections: Sections | None = None,
        workers: int | None = 1,
        command: Sequence[str] | None = None,
        name: str = "smtplb",
        prefill: Path | None = None,
    ) -> None:
        self.name = name
        self.prefill = prefill  # a file of data_dir to start from (a full suppression list)
        self.command = list(command) if command else smtplb_command()
        self.work = work
        self.port, self.http_port = free_port(), free_port()
        self.data_dir = work / "data"
        self.config_path = work / "smtplb.toml"
        self.config_text = smtplb_config(
            self.data_dir, self.port, self.http_port, relays, sections, workers
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.launched_at = 0.0

    def start(self, fresh: bool = True, wait: bool = True) -> None:
        if fresh:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            if self.prefill is not None:
                self.data_dir.mkdir(parents=True)
                shutil.copyfile(self.prefill, self.data_dir / self.prefill.name)
        self.work.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        self.launched_at = time.perf_counter()
        with open(self.work / "smtplb.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*self.command, "run", "-c", str(self.config_path)],
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        """Until SMTP greets and the HTTP API answers /healthz."""
        deadline = time.monotonic() + timeout
        try:
            wait_banner("127.0.0.1", self.port, timeout, self.proc)
            while True:
                try:
                    with urllib.request.urlopen(self.api_url + "/healthz", timeout=5):
                        return
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise BenchError(f"smtplb's API did not answer: {exc}") from exc
                    time.sleep(0.05)
        except BenchError as exc:
            self.stop()
            raise BenchError(f"{exc}\n{self.log_tail()}") from exc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log_tail(self, n: int = 30) -> str:
        path = self.work / "smtplb.log"
        return "\n".join(path.read_text().splitlines()[-n:]) if path.exists() else ""

    def peak_rss_note(self, sampled: MemoryPeak) -> int:
        return max(vm_hwm(self.pid), sampled.rss)

    def stop(self) -> None:
        if self.proc is None:
            return
        descendants = [st.pid for st in tree(self.proc.pid)[1:]]
        stop_process(self.proc, 60)
        reap(descendants)
        self.proc = None

    def warnings(self) -> list[str]:
        path = self.work / "smtplb.log"
        if not path.exists():
            return []
        return [
            line
            for line in path.read_text(errors="replace").splitlines()
            if re.search(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b", line)
        ]


# -- redis ------------------------------------------------------------------------------

# Commands Lua scripts run inside EVALSHA: INFO commandstats counts them too, smtplb did not
# send them (and INFO is the bench's own).
SCRIPT_INSIDE = frozenset(
    {"time", "get", "set", "hget", "hmget", "hset", "hincrby", "expire", "pexpire"}
    | {"zadd", "zremrangebyscore", "zcard", "sadd", "info"}
)


class RedisServer:
    """A throwaway ``redis-server`` on a free port (no persistence), for ``[cluster] redis``."""

    def __init__(self, work: Path) -> None:
        self.work, self.port = work, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 10) -> RedisServer:
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is required (Debian: apt-get install redis-server)")
        self.work.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", str(self.work)),
            ],
            stdout=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.ping()
                return self
            except redis.ConnectionError as exc:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise BenchError(f"redis-server did not answer: {exc}") from exc
                time.sleep(0.05)

    def commands_sent(self) -> int:
        """Commands clients sent so far (INFO commandstats, without SCRIPT_INSIDE)."""
        stats = self.client.info("commandstats")
        return sum(
            int(v["calls"])
            for k, v in stats.items()
            if k.removeprefix("cmdstat_") not in SCRIPT_INSIDE
        )

    def usage(self) -> tuple[int, float]:
        """Commands sent so far and redis-server's CPU seconds: a point to measure from."""
        return self.commands_sent(), tree_cpu(self.pid)

    def per_message(self, since: tuple[int, float], messages: int) -> tuple[float, float]:
        """Commands and redis-server CPU µs per message since ``usage()`` said ``since``."""
        sent, cpu = self.usage()
        n = max(1, messages)
        return (sent - since[0]) / n, 1e6 * (cpu - since[1]) / n

    def stop(self) -> None:
        stop_process(self.proc, 5)
        self.proc = None


# -- load -------------------------------------------------------------------------------


def source_command(
    tools: Tools,
    port: int,
    *,
    messages: int,
    size: int,
    sessions: int,
    per_connection: bool,
    recipient: str = RECIPIENT,
) -> list[str]:
    """smtp-source: ``sessions`` parallel sessions, ``size`` bytes of payload, one
    recipient each (``-N`` numbers them so no two are the same); ``-d`` keeps each
    session open for the next message instead of one message per connection."""
    cmd = [tools.smtp_source, "-s", str(sessions), "-l", str(size), "-m", str(messages), "-N"]
    if per_connection:
        cmd.append("-d")
    cmd += ["-M", "client.bench.test", "-f", SENDER, "-t", recipient, f"127.0.0.1:{port}"]
    return cmd


def split_load(messages: int, sessions: int, domains: Sequence[str]) -> list[tuple[int, int, str]]:
    """The same load spread over recipient domains: one smtp-source per domain, the
    messages and sessions shared out (the first ones take the remainders)."""
    n = len(domains)
    return [
        (messages // n + (i < messages % n), max(1, sessions // n + (i < sessions % n)), d)
        for i, d in enumerate(domains)
    ]


def shown_argv(script: str, argv: Sequence[str]) -> str:
    """How the benchmark was invoked, without this machine's paths (--raw /x/y → y)."""
    args = [Path(a).name if a.startswith("/") else a for a in argv]
    return " ".join(["python", script, *args])


def shown(cmd: Sequence[str]) -> str:
    """A command line for the report: program names without this machine's paths."""
    return " ".join(Path(c).name if c.startswith("/") and i == 0 else c for i, c in enumerate(cmd))


# -- the machine and the report ---------------------------------------------------------


def machine_info(tools: Tools, work: Path, postfix_version: str | None = None) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    git = subprocess.run(
        ["git", "-C", str(REPO_DIR), "describe", "--always", "--dirty", "--abbrev=10"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    from smtplb import __version__

    return {
        "CPU": f"{cpu}, {os.cpu_count()} cores",
        "RAM": mem,
        "Kernel": f"{platform.system()} {platform.release()}",
        "OS": _os_release(),
        "Python": platform.python_version() + _event_loop(),
        "Postfix": postfix_version or tools.postfix_version(),
        "smtplb": f"{__version__} (git {git or 'unknown'})",
        "Spool filesystem": filesystem(work),
    }


def _event_loop() -> str:
    try:
        version = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        return " (smtplb on asyncio's default loop)"
    return f" (smtplb on uvloop {version})"


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return "unknown"


def filesystem(path: Path) -> str:
    """The filesystem type holding ``path`` (the spools: fsync cost depends on it)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mount, fstype, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


def update_results(section: str, text: str, *, first: bool = False) -> None:
    """Replace the ``## {section}`` part of RESULTS.md (up to the next ``## `` heading
    that is not one of its own), or add it. ``first`` puts a new section on top."""
    body = RESULTS.read_text() if RESULTS.exists() else ""
    parts = _split_sections(body)
    parts[section] = text.rstrip() + "\n"
    order = list(parts)
    if first and section in order:
        order.remove(section)
        order.insert(0, section)
    RESULTS.write_text("\n".join(parts[s] for s in order))


def _split_sections(body: str) -> dict[str, str]:
    """Top-level parts of RESULTS.md keyed by their marker comment."""
    parts: dict[str, str] = {}
    current, lines = "", list[str]()
    for line in body.splitlines(keepends=True):
        if m := re.match(r"<!-- section: (\w+) -->", line):
            if current or "".join(lines).strip():
                parts[current] = "".join(lines)
            current, lines = m.group(1), [line]
        else:
            lines.append(line)
    if current or "".join(lines).strip():
        parts[current] = "".join(lines)
    return parts


def section_marker(name: str) -> str:
    return f"<!-- section: {name} -->\n"
