"""The shared-state contracts, run against every backend: embedded (SQLite, in-process)
and Redis (a real ``redis-server`` the test starts).

- :class:`~smtplb.reputation.warmup_store.WarmupState`: ``SqliteWarmupState`` and
  ``RedisWarmupState``. Two instances on one backend are two workers (or nodes).
- :class:`~smtplb.reputation.shaping.RateLimiter`: ``LocalRate`` and ``RedisRate``.
- :class:`~smtplb.experiments.counters.CounterStore`: ``ExperimentStore`` and
  ``RedisExperimentStore``.
- :class:`~smtplb.reputation.state.State` (the suppression list): ``SqliteState`` and
  ``RedisSuppressionState``; two instances are two workers on one file, or two nodes.

The Redis backends answer from leases filled in the background, so a take may first
say ``waiting for a warm-up lease``: :func:`take` retries that one reason (with a
deadline), which is what the dispatcher's next pick does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from smtplb.cluster.experiments import RedisExperimentStore
from smtplb.cluster.link import ClusterLink
from smtplb.cluster.rate import RedisRate
from smtplb.cluster.suppression import RedisSuppressionState
from smtplb.cluster.warmup import WAITING, RedisWarmupState
from smtplb.experiments.counters import CounterStore, ExperimentStore, Observation, StoreError
from smtplb.reputation.embedded import SqliteState
from smtplb.reputation.shaping import LocalRate, RateLimiter, burst
from smtplb.reputation.state import State, Suppression
from smtplb.reputation.warmup import DAY, Decision, WarmupPolicy
from smtplb.reputation.warmup_store import SqliteWarmupState, WarmupState
from tests.integration.redisserver import RedisServer, redis_server  # noqa: F401 (fixture)

BACKENDS = ["embedded", "redis"]
POLICY = WarmupPolicy(schedule=(10, 20), max_hourly_share=1.0)
T0 = 1_780_000_000.0 - 1_780_000_000.0 % DAY + 3600  # 01:00 UTC of some day


Make = Callable[[], WarmupState]


@asynccontextmanager
async def warmup_backend(
    kind: str, tmp_path: Path, server: RedisServer, policy: WarmupPolicy = POLICY
) -> AsyncIterator[Make]:
    """A factory of instances on one backend (each one a worker)."""
    made: list[Any] = []

    def make() -> WarmupState:
        state: WarmupState
        if kind == "embedded":
            state = SqliteWarmupState(tmp_path / "warmup.sqlite", policy, {"new": None})
        else:
            link = ClusterLink(server.url, "node", len(made))
            state = RedisWarmupState(link, policy, {"new": None})
        made.append(state)
        return state

    try:
        yield make
    finally:
        for state in made:
            state.close()
            if isinstance(state, RedisWarmupState):
                await state.link.aclose()


async def take(
    state: WarmupState, n: int = 1, now: float = T0, provider: str = "gmail"
) -> tuple[str | None, list[Decision]]:
    """``take`` as the dispatcher's picks see it: ``waiting for a lease`` is retried."""
    decisions: list[Decision] = []
    deadline = time.monotonic() + 5
    while True:
        reason, more = state.take("new", provider, n, now)
        decisions += more
        if reason != WAITING:
            return reason, decisions
        assert time.monotonic() < deadline, "no lease within 5 s"
        await asyncio.sleep(0.005)


async def settle(*states: WarmupState) -> None:
    for s in states:
        if isinstance(s, RedisWarmupState):
            await s.flush()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


# -- WarmupState ------------------------------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_cap_is_taken_exactly_then_refused_with_the_cap_reason(
    kind: str,
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    async def main() -> None:
        async with warmup_backend(kind, tmp_path, redis_server) as make:
            state = make()
            taken = 0
            for _ in range(15):
                reason, _ = await take(state)
                if reason is None:
                    taken += 1
                else:
                    assert reason.startswith("warm-up cap 10/10 for gmail (day 1)"), reason
            assert taken == 10
            status = state.status("new", "gmail", T0)
            assert (status.day, status.cap, status.sent) == (1, 10, 10)
            assert status.skip_reason() is not None
            assert state.status("new", "yahoo", T0).skip_reason() in (None, WAITING)
            await take(state, provider="yahoo")
            await settle(state)
            assert set(state.providers("new")) >= {"gmail", "yahoo"}

    run(main())


@pytest.mark.parametrize("kind", BACKENDS)
def test_workers_on_one_backend_never_take_more_than_the_cap_together(
    kind: str,
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    async def main() -> None:
        async with warmup_backend(kind, tmp_path, redis_server) as make:
            workers = [make() for _ in range(3)]

            async def worker(state: WarmupState) -> int:
                got = 0
                for _ in range(12):
                    reason, _ = await take(state)
                    got += reason is None
                    await asyncio.sleep(0)
                return got

            counts = await asyncio.gather(*(worker(w) for w in workers))
            assert sum(counts) == 10, counts

    run(main())


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_give_back_frees_what_was_taken_and_the_hourly_cap_holds(
    kind: str,
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    hourly = WarmupPolicy(schedule=(10, 20), max_hourly_share=0.5)  # 5 an hour

    async def main() -> None:
        async with warmup_backend(kind, tmp_path, redis_server, hourly) as make:
            state = make()
            for _ in range(5):
                assert (await take(state))[0] is None
            reason, _ = await take(state)
            assert reason is not None and reason.startswith("warm-up hourly cap 5/5"), reason
            state.give_back("new", "gmail", 2, T0)
            assert [(await take(state))[0] for _ in range(3)][:2] == [None, None]
            later = T0 + 3600  # the next hour: 5 more, 10 in the day
            assert [(await take(state, now=later))[0] for _ in range(5)] == [None] * 5
            reason, _ = await take(state, now=later)
            assert reason is not None and reason.startswith("warm-up cap 10/10"), reason

    run(main())


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_clean_day_advances_the_step_once_whichever_worker_comes_first(
    kind: str,
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    async def main() -> None:
        async with warmup_backend(kind, tmp_path, redis_server) as make:
            a, b = make(), make()
            for _ in range(4):
                assert (await take(a))[0] is None
            a.record("new", "gmail", {"delivered": 4}, T0)
            await settle(a)
            tomorrow = T0 + DAY
            _, first = await take(a, now=tomorrow)
            _, second = await take(b, now=tomorrow)
            _, third = await take(a, now=tomorrow)
            decisions = first + second + third
            assert [(d.event, d.previous_day, d.day) for d in decisions] == [
                ("warmup_advanced", 1, 2)
            ]
            status = b.status("new", "gmail", tomorrow)
            assert (status.day, status.cap) == (2, 20)

    run(main())


# -- RateLimiter ------------------------------------------------------------------


@asynccontextmanager
async def rate_backend(kind: str, server: RedisServer) -> AsyncIterator[Callable[[], RateLimiter]]:
    links: list[ClusterLink] = []

    def make() -> RateLimiter:
        if kind == "embedded":
            return LocalRate()
        link = ClusterLink(server.url, "node", len(links))
        links.append(link)
        return RedisRate(link)

    try:
        yield make
    finally:
        for link in links:
            await link.aclose()


async def drive(limiters: list[RateLimiter], rate: float, seconds: float, key: str) -> list[int]:
    """Each limiter sends whenever it may for ``seconds``; how many each sent."""
    sent = [0] * len(limiters)
    end = time.monotonic() + seconds

    async def one(i: int, limiter: RateLimiter) -> None:
        while (now := time.monotonic()) < end:
            wait = limiter.wait(key, "gmail", rate, now)
            if wait == 0:
                limiter.spend(key, "gmail", rate, now)
                sent[i] += 1
            else:
                await asyncio.sleep(min(wait, 0.01))

    await asyncio.gather(*(one(i, lim) for i, lim in enumerate(limiters)))
    return sent


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_rate_lets_its_burst_then_rate_per_second_through(
    kind: str,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    rate, seconds = 20.0, 1.5

    async def main() -> None:
        async with rate_backend(kind, redis_server) as make:
            (sent,) = await drive([make()], rate, seconds, f"{kind}-one")
            most = burst(rate) + rate * seconds
            print(f"{kind}: {sent} in {seconds} s at {rate}/s (at most {most:.0f})")
            assert rate * seconds * 0.6 <= sent <= most + 1

    run(main())


def test_a_shared_rate_holds_for_all_its_workers_together(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    # Only the Redis backend shares: LocalRate is one process's buckets by design.
    rate, seconds = 20.0, 1.5

    async def main() -> None:
        async with rate_backend("redis", redis_server) as make:
            sent = await drive([make() for _ in range(3)], rate, seconds, "shared")
            most = burst(rate) + rate * seconds
            print(f"3 workers: {sent} in {seconds} s at {rate}/s (at most {most:.0f} together)")
            assert rate * seconds * 0.6 <= sum(sent) <= most + 1
            assert all(n > 0 for n in sent)

    run(main())


# -- State: the suppression list -----------------------------------------------------


@asynccontextmanager
async def state_backend(
    kind: str, tmp_path: Path, server: RedisServer
) -> AsyncIterator[Callable[[], State]]:
    """Instances that share one list: workers on one file, or nodes on one Redis."""
    made: list[State] = []

    def make() -> State:
        state: State
        if kind == "embedded":
            state = SqliteState(tmp_path / "spool.db")
        else:
            local = SqliteState(tmp_path / f"node{len(made)}" / "spool.db")
            link = ClusterLink(server.url, f"node{len(made)}", 0)
            state = RedisSuppressionState(local, link, follows=True)
            state.start()
        made.append(state)
        return state

    try:
        yield make
    finally:
        for state in made:
            state.close()
            if isinstance(state, RedisSuppressionState):
                await state.link.aclose()


async def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, f"not within 5 s: {what}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_suppression_added_or_removed_anywhere_holds_everywhere(
    kind: str,
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    (tmp_path / "node0").mkdir()
    (tmp_path / "node1").mkdir()

    async def main() -> None:
        async with state_backend(kind, tmp_path, redis_server) as make:
            a, b = make(), make()
            await asyncio.sleep(0.2)  # (both subscribed)
            added = await a.suppress(
                [
                    Suppression("Gone@Example.org", "hard bounce", "bounce", T0),
                    Suppression("u@example.org", "complaint", "complaint", T0, "shop.test"),
                ]
            )
            assert added == 2
            await eventually(lambda: b.is_suppressed("gone@example.org"), "a global entry")
            await eventually(lambda: b.is_suppressed("u@example.org", "shop.test"), "scoped")
            assert not b.is_suppressed("u@example.org", "other.test")  # scoped to shop.test
            assert not b.is_suppressed("u@example.org")
            assert await b.suppression_count() == 2
            assert [e.address for e in await b.suppressions()] == [
                "gone@example.org",
                "u@example.org",
            ]
            assert await b.unsuppress(["gone@example.org"]) == 1
            await eventually(lambda: not a.is_suppressed("gone@example.org"), "a removal")
            assert a.is_suppressed("u@example.org", "shop.test")
            assert await a.suppress([Suppression("u@example.org", domain="shop.test")]) == 0

    run(main())


def test_a_node_joining_reads_a_large_list_in_slices_into_its_replica(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The hash already holds 2,500 entries (more than two HSCAN slices) and one that is
    not JSON: a node that subscribes has every good one in its replica, and says which
    one it could not read."""
    from smtplb.cluster.broadcast import SLICE
    from smtplb.cluster.suppression import field_of

    (tmp_path / "late").mkdir()
    n = 2500
    assert n > 2 * SLICE

    async def main() -> None:
        link = ClusterLink(redis_server.url, "late", 0)
        try:
            entries = {
                field_of(f"user{i}@example.org", "shop.test" if i % 2 else ""): msgspec.json.encode(
                    Suppression(
                        f"user{i}@example.org", "import", "api", T0, "shop.test" if i % 2 else ""
                    )
                )
                for i in range(n)
            }
            entries["broken@example.org|"] = b"{not json"
            await link.redis.hset("smtplb:suppression", mapping=entries)  # type: ignore[arg-type]
            state = RedisSuppressionState(
                SqliteState(tmp_path / "late" / "spool.db"), link, follows=True
            )
            state.start()
            # HSCAN reads in hash order, not insertion order: wait for the count, not
            # for one entry or another to show.
            deadline = time.monotonic() + 5
            while (count := await state.suppression_count()) < n:
                assert time.monotonic() < deadline, f"not within 5 s: {count} of {n}"
                await asyncio.sleep(0.01)
            assert count == n
            assert state.is_suppressed("user2499@example.org", "shop.test")
            assert state.is_suppressed("user0@example.org")
            assert not state.is_suppressed("user1@example.org", "other.test")  # scoped
            assert not state.is_suppressed("broken@example.org")
            stats = await link.redis.info("commandstats")
            scans = stats.get("cmdstat_hscan", {}).get("calls", 0)
            assert scans >= 3 and "cmdstat_hgetall" not in stats  # slices, not one HGETALL
            print(
                f"replica after joining: {await state.suppression_count()} of {n}, {scans} HSCANs"
            )
            state.close()
        finally:
            await link.aclose()

    run(main())
    assert any("broken@example.org" in r.getMessage() for r in caplog.records)


# -- CounterStore: experiment counts ---------------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
def test_experiment_counts_are_exact_ordered_and_a_variant_stops_once(
    kind: str,
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    def make() -> CounterStore:
        if kind == "embedded":
            return ExperimentStore(tmp_path / "experiments.sqlite")
        return RedisExperimentStore(redis_server.url)

    a, b = make(), make()  # two workers (or nodes)
    try:
        obs = [
            Observation("exp", "control", "gmail", "delivered", latency=0.1, at=T0),
            Observation("exp", "latency", "gmail", "bounced", deferred_ever=True, at=T0 + 1),
            Observation("exp", "control", "other", "delivered", time_to_deliver=2.5, at=T0 + 2),
        ]
        assert a.add(obs[:2]) == 2 and b.add(obs[2:]) == 1 and a.add([]) == 0
        assert [(r.variant, r.outcome, r.deferred_ever) for r in b.rows("exp")] == [
            ("control", "delivered", False),
            ("latency", "bounced", True),
            ("control", "delivered", False),
        ]
        assert b.rows("exp")[2].time_to_deliver == 2.5 and b.rows("exp")[0].latency == 0.1
        assert a.counts("exp") == {("control", "delivered"): 2, ("latency", "bounced"): 1}
        assert a.counts("other-exp") == {} and a.rows("other-exp") == []
        assert a.running("exp") and not a.running("exp", default=False)
        b.set_running("exp", False, T0 + 3, "by the operator")
        assert not a.running("exp", default=True)
        assert a.stop_variant("exp", "latency", T0 + 4, "guardrail")
        assert not b.stop_variant("exp", "latency", T0 + 5, "again")  # one stop wins
        assert b.stopped_variants("exp") == {"latency": (T0 + 4, "guardrail")}
        a.set_running("exp", True, T0 + 6)
        assert b.stopped_variants("exp") == {} and b.running("exp", default=False)
        assert [(e.event, e.variant) for e in b.events("exp")] == [
            ("stopped", None),
            ("variant_stopped", "latency"),
            ("started", None),
        ]
    finally:
        a.close()
        b.close()


def test_a_redis_experiment_store_that_cannot_reach_redis_raises_store_error(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    store = RedisExperimentStore(redis_server.url)
    redis_server.kill()
    with pytest.raises(StoreError):
        store.add([Observation("exp", "control", "gmail", "delivered")])
    with pytest.raises(StoreError):
        store.counts("exp")
    store.close()
