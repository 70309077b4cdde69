"""Reputation shared in Redis (:mod:`smtplb.cluster.reputation`): two books, each a
worker (or node) with its own link to a real ``redis-server`` the test starts.
The books' time is a fake clock; the syncs are called, not waited for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from smtplb.clock import FakeClock
from smtplb.cluster.link import ClusterLink
from smtplb.cluster.reputation import RedisReputation
from smtplb.config_sections import ReputationConfig
from smtplb.reputation.book import Change, ReputationBook
from smtplb.reputation.standing import Outcome, Reputation
from smtplb.units import Duration
from tests.integration.redisserver import RedisServer, redis_server  # noqa: F401 (fixture)

CONFIG = ReputationConfig(min_volume=20, quarantine=Duration(3600), probation=5)
T0 = 1_780_000_000.0


async def until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def books(
    url: str, count: int, clock: FakeClock
) -> AsyncIterator[tuple[list[ReputationBook], list[RedisReputation], list[Change]]]:
    events: list[Change] = []
    made, shared = [], []
    for i in range(count):
        book = ReputationBook(CONFIG, clock)
        book.on_change = events.append
        backend = RedisReputation(ClusterLink(url, f"node-{i}"), book)
        backend.start()
        made.append(book)
        shared.append(backend)
    try:
        for backend in shared:
            await backend.sync()  # the first read: shared from now on
        yield made, shared, events
    finally:
        for backend in shared:
            await backend.link.aclose()


def _state(book: ReputationBook, member: str = "m") -> str:
    return str(book.view(member)["state"])


async def _test_each_alone_under_min_volume_the_cluster_over_it_quarantines_everywhere_once(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    clock = FakeClock(T0)
    async with books(redis_server.url, 2, clock) as ((a, b), (ra, rb), events):
        for _ in range(12):
            a.record("m", "example.org", Outcome.POLICY)
        assert _state(a) == "ok"  # 12 < min_volume 20, judged on a's own counts
        await ra.sync()
        for _ in range(12):
            b.record("m", "example.org", Outcome.POLICY)
        # b counts 12 of its own and the 12 of a it read: 24 ≥ 20
        await rb.sync()
        await until(lambda: _state(b) == "quarantined", "b to quarantine")
        await until(lambda: _state(a) == "quarantined", "a to hold b's quarantine")
        await ra.sync()  # a judges the cluster's 24 too: no second change
        await asyncio.sleep(0.2)  # (a proposal would be in flight)
        assert [(e.member, e.new.state) for e in events] == [("m", Reputation.QUARANTINED)]
        assert a.standing("m", "other") == b.standing("m", "other")
        assert b.counts("m", "other").policy_block == 24
        assert ra.counts(("m", "other"), clock.wall()) is not None


async def _test_two_books_deciding_at_once_write_one_event(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    clock = FakeClock(T0)
    async with books(redis_server.url, 2, clock) as ((a, b), (ra, rb), events):
        for book in (a, b):
            for _ in range(10):
                book.record("m", "example.org", Outcome.HARD)
        await ra.sync()
        await rb.sync()
        await ra.sync()  # both see 20 hard bounces and both move "m" to quarantined
        await until(lambda: _state(a) == _state(b) == "quarantined", "both quarantined")
        await asyncio.sleep(0.2)
        assert len(events) == 1, events


async def _test_redis_away_judges_locally_and_adds_the_outage_counts_on_return() -> None:
    clock = FakeClock(T0)
    server = RedisServer().start()
    try:
        async with books(server.url, 2, clock) as ((a, b), (ra, rb), events):
            for _ in range(10):
                a.record("m", "example.org", Outcome.POLICY)
            await ra.sync()
            port = server.port
            server.kill()
            server.stop()  # (its temporary directory)
            for _ in range(10):  # a alone: 20 local attempts, quarantined by a's own book
                a.record("m", "example.org", Outcome.POLICY)
            await ra.link.call(ra.sync)
            assert not ra.active and not ra.link.up
            for _ in range(10):
                a.record("m", "example.org", Outcome.POLICY)
            assert _state(a) == "quarantined"  # (decided on a's 20: ≥ min_volume alone)
            # (proposed before the link knew Redis away: told when the proposal failed)
            await until(lambda: len(events) == 1, "a's own event")
            server = RedisServer(port=port).start()  # empty: what a counted is gone
            await until(lambda: ra.link.up, "a's link back up")
            # the probe's reconciliation added a's outage counts (20) to the 0 left
            assert int(server.client().hlen(f"smtplb:rep:counts:{ra._index(clock.wall())}")) > 0
            await rb.link.call(rb.sync)  # b's first call since the outage may fail
            await until(lambda: rb.link.up, "b's link back up")
            await rb.sync()
            assert b.counts("m", "other").policy_block == 20
    finally:
        server.stop()


async def _test_a_release_starts_the_shared_counts_again_on_every_node(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    clock = FakeClock(T0)
    async with books(redis_server.url, 2, clock) as ((a, b), (ra, rb), events):
        for _ in range(20):
            a.record("m", "example.org", Outcome.POLICY)
        await ra.sync()
        await until(lambda: _state(b) == "quarantined", "b to hold a's quarantine")
        a.release("m")
        await until(lambda: _state(b) == "ok", "b to hold a's release")
        clock.advance(CONFIG.window / 24)  # counts start again at the next slice
        await ra.sync()
        await rb.sync()
        assert _state(a) == _state(b) == "ok"
        assert a.counts("m", "other").attempts == 0 == b.counts("m", "other").attempts
        assert [e.new.state for e in events] == [Reputation.QUARANTINED, Reputation.OK]


def test_each_alone_under_min_volume_the_cluster_over_it_quarantines_everywhere_once(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    asyncio.run(
        _test_each_alone_under_min_volume_the_cluster_over_it_quarantines_everywhere_once(
            redis_server
        )
    )


def test_two_books_deciding_at_once_write_one_event(redis_server: RedisServer) -> None:  # noqa: F811
    asyncio.run(_test_two_books_deciding_at_once_write_one_event(redis_server))


def test_redis_away_judges_locally_and_adds_the_outage_counts_on_return() -> None:
    asyncio.run(_test_redis_away_judges_locally_and_adds_the_outage_counts_on_return())


def test_a_release_starts_the_shared_counts_again_on_every_node(redis_server: RedisServer) -> None:  # noqa: F811
    asyncio.run(_test_a_release_starts_the_shared_counts_again_on_every_node(redis_server))
