"""Serving the API: uvicorn inside the service's event loop (no thread, no
process), with the service keeping the signal handlers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from smtplb.units import parse_hostport


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the service owns SIGTERM/SIGHUP


class HttpServer:
    """The HTTP listener of worker 0 (``[http] listen``)."""

    def __init__(self, app: ASGIApp, listen: str) -> None:
        self.app = app
        self.listen = listen
        self.port = 0
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        host, port = parse_hostport(self.listen)
        config = uvicorn.Config(
            self.app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
        )
        self._server = server = _EmbeddedServer(config)
        self._task = task = asyncio.get_running_loop().create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError(f"HTTP server on {self.listen} did not start")
            await asyncio.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    def __repr__(self) -> str:
        return f"HttpServer({self.listen}, {'serving' if self.port else 'stopped'})"
