"""A real ``redis-server`` for tests, on a free port of 127.0.0.1, without persistence:
start, SIGKILL, start again on the same port (empty, as after a crash without AOF)."""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis

from tests.integration.conftest import free_port, tool

# What smtplb's Lua scripts call (INFO commandstats counts them too).
SCRIPT_INSIDE = frozenset(
    {"time", "get", "set", "hget", "hmget", "hset", "hincrby", "expire", "pexpire"}
    | {"zadd", "zremrangebyscore", "zcard", "sadd", "info"}
    # the reputation sync's reads (cluster/reputation.py); a Broadcast's subscribe
    # sends a few of its own (like the hset of its tell, above)
    | {"hgetall"}
)


class RedisServer:
    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        self._temp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:  # a temporary one, removed on stop
            self._temp = tempfile.TemporaryDirectory()
            workdir = Path(self._temp.name)
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                tool("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.exceptions.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"redis-server did not start on {self.port}:\n{log}")
            time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL: what is in memory is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self._temp is not None:
            self._temp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def commandstats(self) -> dict[str, int]:
        """Calls per command since the start (``INFO commandstats``)."""
        info: dict[str, Any] = self.client().info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}

    def sent_since(self, before: dict[str, int]) -> dict[str, int]:
        """What clients sent since ``before`` (a :meth:`commandstats`), by command: the
        commands scripts run inside are left out (they cost no round trip), and so is
        the ``INFO`` that reads the stats. A pipeline's commands count one each."""
        after = self.commandstats()
        return {
            k: v - before.get(k, 0)
            for k, v in after.items()
            if v > before.get(k, 0) and k not in SCRIPT_INSIDE
        }

    def port_free(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) != 0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
