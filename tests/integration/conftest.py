"""Real peers for integration tests: smtplb as a subprocess, the project's sinks,
Postfix's smtp-sink/smtp-source and swaks. A missing tool fails the test loudly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtplb.sink.profile import SinkProfile
from smtplb.sink.server import ThreadedSink

SBIN = ("/usr/sbin", "/sbin")


def tool(name: str) -> str:
    """The path of a required external tool; fail (never skip) when it is missing."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))
    if path is None:
        pytest.fail(f"{name} is required: install it (bash .ci/run installs it with apt)")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll an observable condition (an API answer, a file) until true or time is up."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def relay_config(
    data_dir: Path,
    upstreams: list[int],
    *,
    strategy: str = "round_robin",
    weights: list[int] | None = None,
    smtp: dict[str, Any] | None = None,
    health: dict[str, Any] | None = None,
    delivery: dict[str, Any] | None = None,
    pool: dict[str, Any] | None = None,
    http: dict[str, Any] | None = None,
    member: dict[str, Any] | None = None,
    workers: int | str | None = 1,
) -> tuple[str, int, int]:
    """A config with one pool of relay members at 127.0.0.1:PORT for each upstream.

    One worker unless ``workers`` says otherwise (None: the key left out, so the
    default, one per core): the tests count per member, per log file and per process.
    Returns (toml text, smtp port, http port).
    """
    smtp_port, http_port = free_port(), free_port()
    lines = [] if workers is None else [f"workers = {toml_value(workers)}"]
    lines += [
        f"data_dir = {toml_value(str(data_dir))}",
        'hostname = "relay.smtplb.test"',
        "[smtp]",
        f'listen = ["127.0.0.1:{smtp_port}"]',
    ]
    lines += [f"{k} = {toml_value(v)}" for k, v in (smtp or {}).items()]
    lines += ["[http]", f'listen = "127.0.0.1:{http_port}"']
    lines += [f"{k} = {toml_value(v)}" for k, v in (http or {}).items()]
    lines += ["[health]"] + [
        f"{k} = {toml_value(v)}"
        for k, v in {"interval": "1s", "timeout": "2s", **(health or {})}.items()
    ]
    lines += ["[delivery]"] + [
        f"{k} = {toml_value(v)}"
        for k, v in {"retry_base": "1s", "retry_max": "2s", **(delivery or {})}.items()
    ]
    lines += ["[[pools]]", 'name = "main"', f"strategy = {toml_value(strategy)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in (pool or {}).items()]
    for i, port in enumerate(upstreams):
        lines += [
            "[[pools.members]]",
            f'name = "relay-{i + 1}"',
            f'relay = "127.0.0.1:{port}"',
            f"weight = {(weights or [1] * len(upstreams))[i]}",
        ]
        lines += [f"{k} = {toml_value(v)}" for k, v in (member or {}).items()]
    return "\n".join(lines) + "\n", smtp_port, http_port


class Smtplb:
    """`smtplb run` in a subprocess, ready when it logs that it is listening."""

    def __init__(self, workdir: Path, config_text: str, smtp_port: int, http_port: int) -> None:
        self.workdir = workdir
        self.config_path = workdir / "smtplb.toml"
        self.config_path.write_text(config_text)
        self.smtp_port = smtp_port
        self.http_port = http_port
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._ready = threading.Event()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 20.0) -> Smtplb:
        self._ready.clear()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtplb", "run", "-c", str(self.config_path)],
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout):
            self.kill()
            raise AssertionError("smtplb did not start:\n" + "".join(self.output[-40:]))
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                self.output.append(line)
                if "smtplb listening" in line:
                    self._ready.set()

    def _reap(self) -> None:
        self._reader.join(10)

    def kill(self) -> None:
        """kill -9: no chance to flush or clean up."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self._reap()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reap()
        return code

    def api(
        self, path: str, method: str = "GET", body: Any = None, key: str | None = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def delivery_log(self) -> list[dict[str, Any]]:
        path = self.workdir / "var" / "logs" / "delivery.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def sinks() -> Iterator[Callable[..., ThreadedSink]]:
    started: list[ThreadedSink] = []

    def make(profile: SinkProfile | None = None, port: int = 0) -> ThreadedSink:
        sink = ThreadedSink("127.0.0.1", port, profile)
        sink.start()
        started.append(sink)
        return sink

    yield make
    for sink in started:
        sink.stop()


@pytest.fixture
def smtplb(tmp_path: Path) -> Iterator[Callable[..., Smtplb]]:
    running: list[Smtplb] = []

    def make(config_text: str, smtp_port: int, http_port: int) -> Smtplb:
        node = Smtplb(tmp_path, config_text, smtp_port, http_port)
        running.append(node)
        return node

    yield make
    for node in running:
        if node.proc and node.proc.poll() is None:
            node.stop()
