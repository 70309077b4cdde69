"""Workers 1…N-1 of a node: publish their state for worker 0's API, and follow
worker 0's pauses, drain flag and health verdicts (over :class:`smtplb.workers.PeerLink`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from smtplb.delivery.dispatcher import Dispatcher
from smtplb.delivery.health_check import follow
from smtplb.delivery.member import Member
from smtplb.delivery.pools import PausedMembers
from smtplb.observability.metrics import Metrics
from smtplb.workers import PeerLink

# Workers 1…N-1 render their metrics for worker 0's /metrics this often (seconds);
# the rest of their snapshot goes every SNAPSHOT_EVERY.
METRICS_EVERY = 5.0


class Peer(Protocol):
    """The parts of a worker (:class:`smtplb.service.Service`) its peer link uses."""

    data_dir: Path
    worker: int
    metrics: Metrics
    paused: PausedMembers
    dispatcher: Dispatcher

    def members(self) -> Iterator[Member]: ...

    async def refresh_gauges(self) -> None: ...

    def snapshot(self, metrics: str | None = None) -> dict[str, Any]: ...

    def follow_drain(self, draining: bool) -> None: ...


def peer_link(peer: Peer) -> PeerLink:
    """The link by which worker ``peer.worker`` (> 0) publishes and follows."""

    rendered_at, rendered = -METRICS_EVERY, ""  # this worker's metrics text

    async def snapshot() -> dict[str, Any]:
        # The Prometheus text costs O(members) to render: every METRICS_EVERY
        # seconds, not at each snapshot (a pool of 150 members made it most of
        # an idle worker's CPU).
        nonlocal rendered_at, rendered
        if time.monotonic() - rendered_at >= METRICS_EVERY:
            await peer.refresh_gauges()
            rendered_at, rendered = time.monotonic(), peer.metrics.render().decode()
        return peer.snapshot(rendered)

    def follow_pauses() -> None:
        names = peer.paused.load()
        for member in peer.members():
            member.paused = member.name in names
        peer.dispatcher.wake()

    def follow_health(published: dict[str, dict[str, Any]]) -> None:
        now = peer.dispatcher.clock.monotonic()
        for member in peer.members():  # worker 0 logged the change: no record here
            if member.name in published and follow(member, published[member.name], now):
                peer.dispatcher.wake()

    return PeerLink(
        peer.data_dir,
        peer.worker,
        snapshot=snapshot,
        paused_mtime=peer.paused.mtime,
        on_paused_change=follow_pauses,
        on_drain_change=peer.follow_drain,
        on_health=follow_health,
    )
