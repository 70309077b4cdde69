"""The wiring point builds a service without starting it; one-off tasks are held."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtplb.api import Operations
from smtplb.app import build_service
from smtplb.config import parse_config
from smtplb.service import Service


@pytest.fixture
def build(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """build_service on a fresh data_dir; what it opened (the delivery log) is closed."""
    built: list[Service] = []

    def make(worker: int = 0, **config: Any) -> Service:
        service = build_service(parse_config({"data_dir": str(tmp_path), **config}), None, worker)
        built.append(service)
        return service

    yield make
    for service in built:
        service.delivery_log.close()


def test_build_service_wires_one_spool_and_the_api_on_worker_0(
    build: Callable[..., Service],
) -> None:
    service = build(workers=2)
    ops: Operations = service  # the service is what the API is written against
    assert ops.draining is False
    assert service.http is not None
    assert service.intake.spool is service.spool is service.dispatcher.spool
    assert service.dispatcher.on_bounce is service.dsn
    assert len(service.peer_spools) == 1
    peer = build(1, workers=2)
    assert peer.http is None and peer.peer_spools == []


def test_drain_and_undrain_move_the_flag_the_peers_follow(
    tmp_path: Path, build: Callable[..., Service]
) -> None:
    service = build(workers=2)
    flag = tmp_path / "run" / "draining"
    service.drain()
    assert service.draining and service.intake.refuse() is not None and flag.exists()
    service.undrain()
    assert not service.draining and service.intake.refuse() is None and not flag.exists()


def test_a_spawned_task_is_held_until_it_ends(build: Callable[..., Service]) -> None:
    """The SIGHUP reload runs as such a task: the loop keeps only a weak reference."""
    service = build()

    async def scenario() -> None:
        release = asyncio.Event()

        async def job() -> None:
            await release.wait()  # suspended, not done, while nothing else refers to it

        task = service.spawn(job())
        del task
        gc.collect()
        assert len(service._background) == 1
        [held] = service._background
        release.set()
        # Awaiting it wakes us from a done callback added after the service's own,
        # so by then the service has let go of it.
        await asyncio.wait_for(held, 5)
        del held
        assert service._background == set()

    asyncio.run(scenario())
