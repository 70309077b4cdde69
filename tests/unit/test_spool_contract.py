"""The Spool contract: every backend must pass the first part of this file.

The ``backend`` fixture is parametrised over the backends; tests in the first
part use only the :class:`~smtplb.spool.base.Spool` protocol. The second part
checks what only SQLite has: group commit, failure isolation inside a batch,
a failed commit, and durability across ``kill -9``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from smtplb.clock import FakeClock
from smtplb.model import RecipientState
from smtplb.spool import queries
from smtplb.spool.base import (
    ClaimedMessage,
    NewMessage,
    NewRecipient,
    RecipientResult,
    Spool,
    SpoolAdmin,
    SpoolError,
)
from smtplb.spool.shards import ShardedQueue
from smtplb.spool.sqlite import SCHEMA_VERSION, SqliteSpool

T0 = 1_000_000.0
HOUR = 3600.0
S = RecipientState


# -- harness -------------------------------------------------------------------


class ShardedSpool:
    """Worker 0's view: its own shard for the engine, the admin part answered by
    :class:`ShardedQueue` over its shard and a peer's (the merge itself is checked
    with mail in both shards in ``test_sharded_queue_merges_every_shard``)."""

    def __init__(self, own: SqliteSpool, peer: SqliteSpool) -> None:
        self.own, self.peer = own, peer
        self.admin: SpoolAdmin = ShardedQueue([own, peer])
        self.store, self.claim_ready, self.record = own.store, own.claim_ready, own.record
        self.expire_due, self.next_due, self.note_trace = (
            own.expire_due,
            own.next_due,
            own.note_trace,
        )
        a = self.admin
        self.stats, self.oldest_age, self.list_messages, self.get = (
            a.stats,
            a.oldest_age,
            a.list_messages,
            a.get,
        )
        self.get_content, self.trace, self.retry, self.delete, self.purge = (
            a.get_content,
            a.trace,
            a.retry,
            a.delete,
            a.purge,
        )

    async def open(self) -> None:
        await self.own.open()
        await self.peer.open()

    async def close(self) -> None:
        await self.own.close()
        await self.peer.close()


@dataclass
class Backend:
    name: str
    tmp: Path

    def make(self, clock: FakeClock) -> Spool:
        if self.name == "sqlite":
            return SqliteSpool(self.tmp / "spool.db", clock=clock)
        if self.name == "sharded":
            own = SqliteSpool(self.tmp / "spool.db", clock=clock)
            peer = SqliteSpool(self.tmp / "spool-1.db", clock=clock, recover=False)
            return ShardedSpool(own, peer)
        raise AssertionError(self.name)


@pytest.fixture(params=["sqlite", "sharded"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend(request.param, tmp_path)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=60))


SpoolBody = Callable[[Spool, FakeClock], Awaitable[None]]


def spool_test(body: SpoolBody) -> Callable[[Backend], None]:
    """Turn ``async def body(spool, clock)`` into a test run against every backend."""

    def test(backend: Backend) -> None:
        async def main() -> None:
            clock = FakeClock(T0)
            spool = backend.make(clock)
            await spool.open()
            try:
                await body(spool, clock)
            finally:
                await spool.close()

        run(main())

    test.__name__ = body.__name__
    test.__doc__ = body.__doc__
    return test


def msg(
    queue_id: str,
    *addresses: str,
    priority: int = 1,
    received_at: float = T0,
    expires_at: float = T0 + 5 * 24 * HOUR,
    content: bytes = b"Subject: hi\r\n\r\nhello\r\n",
) -> NewMessage:
    return NewMessage(
        queue_id=queue_id,
        sender="app@example.com",
        recipients=tuple(NewRecipient(a, "default", priority) for a in addresses or ("u@x.test",)),
        content=content,
        message_id=f"<{queue_id}@example.com>",
        received_at=received_at,
        expires_at=expires_at,
        client_ip="192.0.2.1",
        auth_user="app",
    )


async def store_rids(spool: Spool, m: NewMessage, *, inflight: bool = False) -> list[int]:
    """Store ``m``; its recipient ids, in order."""
    return [r.rid for r in (await spool.store(m, inflight=inflight)).recipients]


async def claim_all(spool: Spool, now: float) -> dict[int, str]:
    """Claim everything due; rid -> queue_id."""
    return {r.rid: m.queue_id for m in await spool.claim_ready(now, 10_000) for r in m.recipients}


async def states(spool: Spool, queue_id: str) -> list[RecipientState]:
    view = await spool.get(queue_id)
    assert view is not None
    return [r.state for r in view.recipients]


# -- contract: store, claim, record ------------------------------------------------------


@spool_test
async def test_store_returns_recipient_ids_in_order(spool: Spool, clock: FakeClock) -> None:
    m = msg("q1", "a@x.test", "b@y.test", "c@z.test")
    rids = await store_rids(spool, m)
    assert len(rids) == len(set(rids)) == 3
    view = await spool.get("q1")
    assert view is not None
    assert [(r.rid, r.address) for r in view.recipients] == list(
        zip(rids, ["a@x.test", "b@y.test", "c@z.test"], strict=True)
    )
    assert (view.queue_id, view.sender, view.message_id) == ("q1", m.sender, m.message_id)
    assert (view.size, view.received_at, view.expires_at) == (len(m.content), T0, m.expires_at)
    assert (view.content_class, view.is_dsn) == ("transactional", False)
    assert all(r.state is S.QUEUED and r.attempts == 0 for r in view.recipients)
    assert await spool.get_content("q1") == m.content
    assert await spool.get("nope") is None
    assert await spool.get_content("nope") is None


@spool_test
async def test_claim_returns_message_and_marks_in_flight(spool: Spool, clock: FakeClock) -> None:
    m = msg("q1", "a@x.test", "b@y.test")
    rids = await store_rids(spool, m)
    [claimed] = await spool.claim_ready(T0, 10)
    assert (claimed.queue_id, claimed.sender, claimed.content) == ("q1", m.sender, m.content)
    assert (claimed.message_id, claimed.received_at, claimed.expires_at) == (
        m.message_id,
        T0,
        m.expires_at,
    )
    assert sorted(r.rid for r in claimed.recipients) == sorted(rids)
    assert {r.address for r in claimed.recipients} == {"a@x.test", "b@y.test"}
    assert all(r.pool == "default" and r.attempts == 0 for r in claimed.recipients)
    assert await states(spool, "q1") == [S.INFLIGHT, S.INFLIGHT]
    assert await spool.claim_ready(T0 + HOUR, 10) == []


@spool_test
async def test_the_plain_lines_fact_is_kept_with_the_message(
    spool: Spool, clock: FakeClock
) -> None:
    """Intake's word that the content needs no check or dot-stuffing is kept: a message
    claimed back later goes out as it would have from memory. A message without it
    (HTTP, DSN, an older row) is checked and stuffed."""
    stored = await spool.store(dataclasses.replace(msg("mem"), plain_lines=True), inflight=True)
    assert stored.plain_lines
    alone = await spool.store(dataclasses.replace(msg("alone"), plain_lines=True))
    assert alone.plain_lines
    batch = [dataclasses.replace(msg(f"p{i}"), plain_lines=i % 2 == 0) for i in range(6)]
    await asyncio.gather(*(spool.store(m) for m in batch), spool.store(msg("other")))
    claimed = {m.queue_id: m.plain_lines for m in await spool.claim_ready(T0, 100)}
    assert claimed == {"alone": True, "other": False, **{m.queue_id: m.plain_lines for m in batch}}


@spool_test
async def test_claim_waits_for_next_attempt(spool: Spool, clock: FakeClock) -> None:
    await spool.store(msg("later", received_at=T0 + 60))
    assert await spool.claim_ready(T0, 10) == []
    assert await spool.claim_ready(T0 + 59.9, 10) == []
    assert [m.queue_id for m in await spool.claim_ready(T0 + 60, 10)] == ["later"]


@spool_test
async def test_claim_orders_by_priority_then_next_attempt(spool: Spool, clock: FakeClock) -> None:
    await spool.store(msg("low-old", priority=2, received_at=T0 - 50))
    await spool.store(msg("normal-new", priority=1, received_at=T0 - 10))
    await spool.store(msg("high-new", priority=0, received_at=T0 - 5))
    await spool.store(msg("normal-old", priority=1, received_at=T0 - 40))
    await spool.store(msg("high-old", priority=0, received_at=T0 - 30))
    order = []
    for _ in range(5):
        [m] = await spool.claim_ready(T0, 1)
        order.append(m.queue_id)
    assert order == ["high-old", "high-new", "normal-old", "normal-new", "low-old"]


@spool_test
async def test_claim_mixes_queued_and_deferred_by_next_attempt(
    spool: Spool, clock: FakeClock
) -> None:
    [rid] = await store_rids(spool, msg("deferred", received_at=T0 - 100))
    await claim_all(spool, T0)
    await spool.record([RecipientResult(rid, S.DEFERRED, next_attempt=T0 - 20, code=451)])
    await spool.store(msg("queued-old", received_at=T0 - 30))
    await spool.store(msg("queued-new", received_at=T0 - 10))
    got = [m.queue_id for m in await spool.claim_ready(T0, 10)]
    assert got == ["queued-old", "deferred", "queued-new"]


@spool_test
async def test_claim_limit_counts_recipients_and_groups_by_message(
    spool: Spool, clock: FakeClock
) -> None:
    await spool.store(msg("a", "1@x.test", "2@x.test", "3@x.test", received_at=T0 - 2))
    await spool.store(msg("b", "4@x.test", received_at=T0 - 1))
    first = await spool.claim_ready(T0, 2)
    assert [(m.queue_id, len(m.recipients)) for m in first] == [("a", 2)]
    second = await spool.claim_ready(T0, 2)
    assert [(m.queue_id, len(m.recipients)) for m in second] == [("a", 1), ("b", 1)]
    assert await spool.claim_ready(T0, 0) == []


@spool_test
async def test_concurrent_claims_never_claim_a_recipient_twice(
    spool: Spool, clock: FakeClock
) -> None:
    stored: set[int] = set()
    for i in range(40):
        stored.update(await store_rids(spool, msg(f"q{i}", "a@x.test", "b@y.test")))
    batches = await asyncio.gather(*(claim_all_limited(spool, 7) for _ in range(15)))
    claimed = [rid for batch in batches for rid in batch]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) == stored


async def claim_all_limited(spool: Spool, limit: int) -> list[int]:
    return [r.rid for m in await spool.claim_ready(T0, limit) for r in m.recipients]


@spool_test
async def test_record_sets_states_and_last_reply(spool: Spool, clock: FakeClock) -> None:
    rids = await store_rids(spool, msg("q1", "a@x.test", "b@x.test", "c@x.test", "d@x.test"))
    await claim_all(spool, T0)
    await spool.record(
        [
            RecipientResult(rids[0], S.DELIVERED, code=250, enhanced_code="2.0.0",
                            response="ok queued as X", member="relay-1"),
            RecipientResult(rids[1], S.BOUNCED, code=550, enhanced_code="5.1.1",
                            response="no such user", member="relay-2"),
            RecipientResult(rids[2], S.DEFERRED, next_attempt=T0 + 300, code=421,
                            enhanced_code="4.7.0", response="try later", member="relay-1"),
            RecipientResult(rids[3], S.SUPPRESSED, count_attempt=False, response="suppressed"),
        ]
    )  # fmt: skip
    view = await spool.get("q1")
    assert view is not None
    a, b, c, d = view.recipients
    assert (a.state, a.last_code, a.last_enhanced_code, a.member) == (
        S.DELIVERED,
        250,
        "2.0.0",
        "relay-1",
    )
    assert a.last_response == "ok queued as X"
    assert (b.state, b.last_code, b.last_enhanced_code, b.member) == (
        S.BOUNCED,
        550,
        "5.1.1",
        "relay-2",
    )
    assert (c.state, c.next_attempt, c.last_code) == (S.DEFERRED, T0 + 300, 421)
    assert (d.state, d.attempts) == (S.SUPPRESSED, 0)
    assert [a.attempts, b.attempts, c.attempts] == [1, 1, 1]
    assert all(r.updated_at == clock.wall() for r in view.recipients)
    assert await spool.claim_ready(T0 + 299, 10) == []
    [again] = await spool.claim_ready(T0 + 300, 10)
    assert [r.rid for r in again.recipients] == [rids[2]]
    assert again.recipients[0].attempts == 1


@spool_test
async def test_attempts_count_only_when_asked(spool: Spool, clock: FakeClock) -> None:
    [rid] = await store_rids(spool, msg("q1"))
    await claim_all(spool, T0)
    # Give back for immediate failover: no attempt counted, due at once.
    await spool.record([RecipientResult(rid, S.QUEUED, next_attempt=T0, count_attempt=False)])
    [m] = await spool.claim_ready(T0, 10)
    assert m.recipients[0].attempts == 0
    await spool.record([RecipientResult(rid, S.DEFERRED, next_attempt=T0, code=451)])
    [m] = await spool.claim_ready(T0, 10)
    assert m.recipients[0].attempts == 1
    await spool.record([RecipientResult(rid, S.DEFERRED, next_attempt=T0, count_attempt=False)])
    [m] = await spool.claim_ready(T0, 10)
    assert m.recipients[0].attempts == 1
    await spool.record([RecipientResult(rid, S.DEFERRED, next_attempt=T0, code=451)])
    view = await spool.get("q1")
    assert view is not None
    assert view.recipients[0].attempts == 2
    # A reply without a code keeps the last one seen.
    assert view.recipients[0].last_code == 451


@spool_test
async def test_content_is_released_once_every_recipient_is_final(
    spool: Spool, clock: FakeClock
) -> None:
    a, b = await store_rids(spool, msg("q1", "a@x.test", "b@x.test"))
    await claim_all(spool, T0)
    await spool.record([RecipientResult(a, S.DELIVERED, code=250)])
    assert await spool.get_content("q1") is not None
    await spool.record([RecipientResult(b, S.DEFERRED, next_attempt=T0 + 60, code=451)])
    assert await spool.get_content("q1") is not None
    await claim_all(spool, T0 + 60)
    await spool.record([RecipientResult(b, S.BOUNCED, code=550)])
    assert await spool.get_content("q1") is None
    assert await states(spool, "q1") == [S.DELIVERED, S.BOUNCED]  # still shown


@spool_test
async def test_store_in_flight_is_not_claimable(spool: Spool, clock: FakeClock) -> None:
    [rid] = await store_rids(spool, msg("q1"), inflight=True)
    assert await states(spool, "q1") == [S.INFLIGHT]
    assert await spool.claim_ready(T0 + HOUR, 10) == []
    await spool.record([RecipientResult(rid, S.DELIVERED, code=250)])
    assert await states(spool, "q1") == [S.DELIVERED]


# -- contract: expiry, retry, delete, purge ----------------------------------------


@spool_test
async def test_expire_due_takes_only_expired_waiting_recipients(
    spool: Spool, clock: FakeClock
) -> None:
    exp = T0 + HOUR
    q, d, f, done = await store_rids(
        spool, msg("old", "q@x.test", "d@x.test", "f@x.test", "done@x.test", expires_at=exp)
    )
    await spool.store(msg("young", expires_at=exp + HOUR))
    await claim_all(spool, T0)
    await spool.record(
        [
            RecipientResult(q, S.QUEUED, next_attempt=T0, count_attempt=False),
            RecipientResult(d, S.DEFERRED, next_attempt=T0 + 10, code=451,
                            enhanced_code="4.4.1", response="timeout"),
            RecipientResult(done, S.DELIVERED, code=250),
        ]
    )  # fmt: skip
    # ``f`` stays in flight: its attempt may still succeed.
    assert await spool.expire_due(exp - 1) == []
    expired = await spool.expire_due(exp)
    assert {e.rid for e in expired} == {q, d}
    by_rid = {e.rid: e for e in expired}
    e = by_rid[d]
    assert (e.queue_id, e.sender, e.address, e.message_id) == (
        "old",
        "app@example.com",
        "d@x.test",
        "<old@example.com>",
    )
    assert (e.last_code, e.last_enhanced_code, e.last_response) == (451, "4.4.1", "timeout")
    assert by_rid[q].msg_pk == e.msg_pk
    assert await states(spool, "old") == [S.EXPIRED, S.EXPIRED, S.INFLIGHT, S.DELIVERED]
    assert await spool.expire_due(exp) == []
    # Once back from flight, the leftover recipient expires too.
    await spool.record([RecipientResult(f, S.DEFERRED, next_attempt=exp, code=451)])
    assert [x.rid for x in await spool.expire_due(exp)] == [f]
    # The content stays for the DSN that quotes it; purge drops it later.
    assert await spool.get_content("old") == msg("old").content
    assert await spool.purge(clock.wall() + 1) == 1
    assert await spool.get("old") is None
    assert await states(spool, "young") == [S.INFLIGHT]


@spool_test
async def test_expire_due_respects_limit(spool: Spool, clock: FakeClock) -> None:
    for i in range(5):
        await spool.store(msg(f"q{i}", "a@x.test", "b@x.test", expires_at=T0))
    got = [await spool.expire_due(T0, limit=3) for _ in range(5)]
    assert [len(g) for g in got] == [3, 3, 3, 1, 0]
    assert (await spool.stats())["expired"] == 10


@spool_test
async def test_retry_one_and_all(spool: Spool, clock: FakeClock) -> None:
    rids = {}
    for qid in ("a", "b", "c"):
        [rids[qid]] = await store_rids(spool, msg(qid))
    await claim_all(spool, T0)
    await spool.record(
        [RecipientResult(r, S.DEFERRED, next_attempt=T0 + HOUR, code=451) for r in rids.values()]
    )
    clock.advance(5)
    assert await spool.retry("a") == 1
    assert [m.queue_id for m in await spool.claim_ready(clock.wall(), 10)] == ["a"]
    assert await spool.retry("a") == 0  # in flight now: nothing to retry
    assert await spool.retry("unknown") == 0
    assert await spool.retry() == 2
    assert sorted(m.queue_id for m in await spool.claim_ready(clock.wall(), 10)) == ["b", "c"]
    assert (await spool.stats())["deferred"] == 0


@spool_test
async def test_retry_all_takes_the_backlog_in_arrival_order(spool: Spool, clock: FakeClock) -> None:
    """retry --all makes the due recipients due now too: claims then follow rids, not
    the (jittered) times they came due at, and nearby rows share pages."""
    rids = {}
    for qid in ("a", "b", "c", "d"):
        [rids[qid]] = await store_rids(spool, msg(qid))
    await claim_all(spool, T0)
    due_at = {"a": T0 + 30, "b": T0 + 10, "c": T0 + HOUR, "d": T0 + 20}
    await spool.record(
        [RecipientResult(rids[q], S.DEFERRED, next_attempt=t, code=451) for q, t in due_at.items()]
    )
    clock.advance(60)
    assert await spool.retry() == 1  # c: the others were due already
    claimed = [m.queue_id for m in await spool.claim_ready(clock.wall(), 10)]
    assert sorted(claimed) == ["a", "b", "c", "d"]
    if isinstance(spool, SqliteSpool):  # one file: one rid order
        assert claimed == ["a", "b", "c", "d"]
    assert await spool.retry() == 0


def test_retry_all_in_slices_looks_at_each_recipient_once(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        spool = SqliteSpool(tmp_path / "spool.db", clock=clock)
        spool.retry_slice = 2
        await spool.open()
        try:
            for i in range(7):
                await spool.store(msg(f"m{i}", "a@x.test", "b@x.test"))
            rids = list(await claim_all(spool, T0))
            results = [
                RecipientResult(r, S.DEFERRED, next_attempt=T0 + HOUR - r, code=451)
                for r in rids[:-1]
            ]
            await spool.record([*results, RecipientResult(rids[-1], S.DELIVERED, code=250)])
            clock.advance(60)
            assert await spool.retry() == 13  # one delivered: not retried
            claimed = [r.rid for m in await spool.claim_ready(clock.wall(), 100)
                       for r in m.recipients]  # fmt: skip
            assert claimed == rids[:-1]
        finally:
            await spool.close()

    run(main())


@spool_test
async def test_delete(spool: Spool, clock: FakeClock) -> None:
    [rid] = await store_rids(spool, msg("gone", "a@x.test"))
    await spool.store(msg("kept", "b@x.test", "c@x.test"))
    await claim_all(spool, T0)
    assert await spool.delete("gone") is True
    assert await spool.get("gone") is None
    assert await spool.get_content("gone") is None
    assert await spool.delete("gone") is False
    # The attempt of a deleted recipient may still report: harmless.
    await spool.record([RecipientResult(rid, S.DELIVERED, code=250)])
    assert (await spool.stats())["in_flight"] == 2
    assert await spool.get("kept") is not None


@spool_test
async def test_purge_drops_only_long_final_messages(spool: Spool, clock: FakeClock) -> None:
    [a] = await store_rids(spool, msg("done-early"))
    [b] = await store_rids(spool, msg("done-late"))
    await spool.store(msg("waiting"))
    await claim_all(spool, T0)
    await spool.record([RecipientResult(a, S.DELIVERED, code=250)])
    clock.advance(100)
    await spool.record([RecipientResult(b, S.BOUNCED, code=550)])
    purge = spool.purge
    assert await purge(T0) == 0
    assert await purge(T0 + 50) == 1
    assert await spool.get("done-early") is None
    assert await spool.get("done-late") is not None
    assert await purge(T0 + 1000) == 1
    assert [m.queue_id for m in await spool.list_messages()] == ["waiting"]
    stats = await spool.stats()
    assert (stats["delivered"], stats["bounced"], stats["in_flight"]) == (0, 0, 1)


# -- contract: views -----------------------------------------------------------------


@spool_test
async def test_stats_has_every_state_label(spool: Spool, clock: FakeClock) -> None:
    assert await spool.stats() == {s.label: 0 for s in RecipientState}
    a, b, _ = await store_rids(spool, msg("q1", "a@x.test", "b@x.test", "c@x.test"))
    await spool.store(msg("q2", "d@x.test"))
    await spool.claim_ready(T0, 3)
    await spool.record(
        [
            RecipientResult(a, S.DELIVERED, code=250),
            RecipientResult(b, S.DEFERRED, next_attempt=T0 + 60, code=451),
        ]
    )
    stats = await spool.stats()
    assert set(stats) == {s.label for s in RecipientState}
    assert {k: v for k, v in stats.items() if v} == {
        "queued": 1,
        "in_flight": 1,
        "deferred": 1,
        "delivered": 1,
    }


@spool_test
async def test_list_messages_newest_first_with_state_filter(spool: Spool, clock: FakeClock) -> None:
    for i in range(5):
        await spool.store(msg(f"q{i}", received_at=T0 + i))
    [m] = await spool.claim_ready(T0 + 1, 1)
    assert m.queue_id == "q0"
    assert [v.queue_id for v in await spool.list_messages()] == ["q4", "q3", "q2", "q1", "q0"]
    assert [v.queue_id for v in await spool.list_messages(limit=2, offset=1)] == ["q3", "q2"]
    assert [v.queue_id for v in await spool.list_messages(state=S.INFLIGHT)] == ["q0"]
    queued = await spool.list_messages(state=S.QUEUED, limit=3)
    assert [v.queue_id for v in queued] == ["q4", "q3", "q2"]
    assert [r.state for r in queued[0].recipients] == [S.QUEUED]
    assert await spool.list_messages(state=S.BOUNCED) == []


@spool_test
async def test_next_due_and_oldest_age(spool: Spool, clock: FakeClock) -> None:
    assert await spool.next_due() is None
    assert await spool.oldest_age(T0) == {"queued": 0.0, "in_flight": 0.0, "deferred": 0.0}
    [a] = await store_rids(spool, msg("a", received_at=T0 - 100, priority=2))
    await spool.store(msg("b", received_at=T0 - 50, priority=0))
    await spool.store(msg("c", received_at=T0 + 30))
    assert await spool.next_due() == T0 - 100
    [m] = await spool.claim_ready(T0, 1)
    assert m.queue_id == "b"
    assert await spool.next_due() == T0 - 100
    await claim_all(spool, T0)
    await spool.record([RecipientResult(a, S.DEFERRED, next_attempt=T0 + 500, code=451)])
    assert await spool.next_due() == T0 + 30
    ages = await spool.oldest_age(T0 + 100)
    assert ages == {"queued": 70.0, "in_flight": 150.0, "deferred": 200.0}


@spool_test
async def test_store_returns_the_message_as_delivery_takes_it(
    spool: Spool, clock: FakeClock
) -> None:
    """What store() returns is what a claim of the same message returns: intake
    hands it to delivery as it is, nothing rebuilt."""
    stored = await spool.store(msg("q1", "a@x.test", "b@y.test", priority=0))
    [claimed] = await spool.claim_ready(T0, 10)
    assert stored == claimed
    assert stored.client_ip == claimed.client_ip == "192.0.2.1"  # hash_key = "client_ip"
    assert stored.msg_pk > 0 and [r.address for r in stored.recipients] == ["a@x.test", "b@y.test"]
    in_flight = await spool.store(msg("q2"), inflight=True)
    assert in_flight.queue_id == "q2" and in_flight.content == msg("q2").content
    assert await spool.claim_ready(T0, 10) == []  # already in flight


@spool_test
async def test_trace_steps_are_stored_with_the_next_commit(spool: Spool, clock: FakeClock) -> None:
    spool.note_trace("q1", T0, "routed", ("a@x.test", None, "default", 1, "transactional"))
    spool.note_trace("q1", T0 + 1, "deferred", ("default", object()))  # kept as its text
    assert await spool.trace("q1") == []  # no commit yet: nothing of its own
    [rid] = await store_rids(spool, msg("q1"))
    steps = await spool.trace("q1")
    assert [(ts, step) for ts, step, _ in steps] == [(T0, "routed"), (T0 + 1, "deferred")]
    assert steps[0][2] == ("a@x.test", None, "default", 1, "transactional")
    assert isinstance(steps[1][2][1], str) and steps[1][2][1].startswith("<object")
    spool.note_trace("q2", T0, "routed", ("b@x.test", 0, "default", 1, "bulk"))
    await spool.store(msg("q2"))
    assert await spool.delete("q2")
    assert await spool.trace("q2") == []  # deleted with its message
    await spool.record([RecipientResult(rid, S.DELIVERED, code=250)])
    await spool.store(msg("q3"))  # the lazy result rides with this commit
    assert await spool.purge(clock.wall() + 1) == 1
    assert await spool.trace("q1") == []  # purged with its message


# -- contract: restart -----------------------------------------------------------------


def test_crash_recovery_requeues_in_flight(backend: Backend) -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        spool = backend.make(clock)
        await spool.open()
        rids = await store_rids(spool, msg("q1", "a@x.test", "b@x.test"))
        [rid_new] = await store_rids(spool, msg("q2"), inflight=True)
        await spool.claim_ready(T0, 10)
        await spool.record([RecipientResult(rids[1], S.DELIVERED, code=250)])
        await spool.close()  # the process "dies" with a and q2 in flight

        clock.advance(30)
        spool = backend.make(clock)
        await spool.open()
        try:
            assert (await spool.stats())["in_flight"] == 0
            assert await states(spool, "q1") == [S.QUEUED, S.DELIVERED]
            assert await spool.next_due() == clock.wall()
            again = {r.rid: r.attempts for m in await spool.claim_ready(T0 + 30, 10)
                     for r in m.recipients}  # fmt: skip
            assert again == {rids[0]: 0, rid_new: 0}
            assert await spool.get_content("q2") == msg("q2").content
        finally:
            await spool.close()

    run(main())


# -- ShardedQueue: the admin part over several shards ----------------------------------


def test_sharded_queue_merges_every_shard(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        shards = [SqliteSpool(tmp_path / f"spool-{i}.db", clock=clock) for i in range(2)]
        for shard in shards:
            await shard.open()
        queue: SpoolAdmin = ShardedQueue(shards)
        shards[0].note_trace("b1", T0 - 1, "failover", ("relay-1", "refused"))  # another worker
        await shards[0].store(msg("a0", "x@x.test", "y@x.test", received_at=T0 - 3))
        shards[1].note_trace("b1", T0 - 2, "routed", ("z@x.test", None, "default", 1, "bulk"))
        await shards[1].store(msg("b1", "z@x.test", received_at=T0 - 2))
        [c2] = await store_rids(shards[1], msg("c2", received_at=T0 - 1))
        assert (await queue.stats())["queued"] == 4
        assert (await queue.oldest_age(T0))["queued"] == 3
        assert [m.queue_id for m in await queue.list_messages()] == ["c2", "b1", "a0"]
        assert [m.queue_id for m in await queue.list_messages(limit=1, offset=1)] == ["b1"]
        view = await queue.get("b1")
        assert view is not None and view.recipients[0].address == "z@x.test"
        assert await queue.get_content("a0") == msg("a0").content
        assert [step for _, step, _ in await queue.trace("b1")] == ["routed", "failover"]
        later = T0 + HOUR
        for shard in shards:
            claimed = await shard.claim_ready(T0, 10)
            await shard.record(
                [
                    RecipientResult(r.rid, S.DELIVERED if r.rid == c2 and shard is shards[1]
                                    else S.DEFERRED, next_attempt=later, code=250)
                    for m in claimed for r in m.recipients
                ]
            )  # fmt: skip
            await shard.store(msg(f"flush-{shard.path.name}", received_at=later))
        assert await queue.retry() == 5  # 2 + 1 deferred, 1 + 1 flush messages not yet due
        assert await queue.purge(T0 + 1) == 1
        assert await queue.delete("a0") and not await queue.delete("a0")
        assert await queue.get("a0") is None and await queue.get("nope") is None
        for shard in shards:
            await shard.close()

    run(main())


# -- SQLite: group commit, failures, durability ----------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


class Gate:
    """Holds the writer thread inside one operation until released."""

    def __init__(self, spool: SqliteSpool) -> None:
        self.spool = spool
        self.entered = threading.Event()
        self.release = threading.Event()
        self.task: asyncio.Task[None] | None = None

    def _hold(self, conn: sqlite3.Connection) -> None:
        self.entered.set()
        self.release.wait(30)

    async def __aenter__(self) -> Gate:
        self.task = asyncio.create_task(self.spool._write(self._hold))
        await asyncio.to_thread(self.entered.wait, 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self.task is not None
        await self.task


def test_sqlite_concurrent_stores_share_commits(db: Path) -> None:
    async def main() -> None:
        spool = SqliteSpool(db)
        await spool.open()
        before = spool.commits
        rids = await asyncio.gather(*(store_rids(spool, msg(f"q{i}")) for i in range(200)))
        commits = spool.commits - before
        assert len({r for rs in rids for r in rs}) == 200
        assert commits <= 50, f"{commits} commits for 200 concurrent stores: no group commit"
        # Held writer: everything queued meanwhile goes in exactly one more commit.
        async with Gate(spool):
            tasks = [asyncio.create_task(spool.store(msg(f"g{i}"))) for i in range(100)]
            await asyncio.sleep(0)  # let every task enqueue its operation
            assert "100 pending ops" in repr(spool) or "101 pending ops" in repr(spool)
            before = spool.commits
        await asyncio.gather(*tasks)
        assert spool.commits - before == 2  # the gate's batch, then one for all 100
        assert (await spool.stats())["queued"] == 300
        await spool.close()

    run(main())


def test_sqlite_stores_of_one_batch_are_one_insert_per_table_with_sqlites_keys(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inserts: list[tuple[str, int]] = []
    insert_rows = queries._insert_rows

    def counted(conn: sqlite3.Connection, table: str, cols: str, rows: list[Any]) -> None:
        inserts.append((table, len(rows)))
        insert_rows(conn, table, cols, rows)

    monkeypatch.setattr(queries, "_insert_rows", counted)

    async def main() -> None:
        spool = SqliteSpool(db)
        await spool.open()
        first = await spool.store(msg("first", "a@x.test"))
        last = await spool.store(msg("last", "a@x.test", "b@x.test"))
        assert await spool.delete("last")  # SQLite's next key is the largest + 1: reused
        inserts.clear()
        async with Gate(spool):
            tasks = [
                asyncio.create_task(spool.store(m, inflight=i == 1))
                for i, m in enumerate(
                    (msg("b1", "a@x.test", "b@y.test"), msg("b2"), msg("b3", "c@z.test"))
                )
            ]
            await asyncio.sleep(0)  # a yield: each new task runs to its first await
        b1, b2, b3 = await asyncio.gather(*tasks)
        assert inserts == [("messages", 3), ("recipients", 4)]
        assert [m.msg_pk for m in (b1, b2, b3)] == [last.msg_pk + i for i in range(3)]
        rids = [r.rid for m in (b1, b2, b3) for r in m.recipients]
        assert rids == list(range(last.recipients[0].rid, last.recipients[0].rid + 4))
        assert [r.address for r in b1.recipients] == ["a@x.test", "b@y.test"]
        for m in (b1, b2, b3):
            view = await spool.get(m.queue_id)
            assert view is not None and view.msg_pk == m.msg_pk
            assert [r.rid for r in view.recipients] == [r.rid for r in m.recipients]
            assert await spool.get_content(m.queue_id) == m.content
        assert await states(spool, "b2") == [S.INFLIGHT]
        assert await states(spool, "b1") == [S.QUEUED, S.QUEUED]
        assert (await spool.stats())["queued"] == 4 and first.msg_pk < last.msg_pk
        await spool.close()

    run(main())


def test_sqlite_a_store_that_fails_in_a_batch_fails_alone(db: Path) -> None:
    """The batch's stores run as one call; when it raises they run again one by one."""

    async def main() -> None:
        spool = SqliteSpool(db)
        await spool.open()
        await spool.store(msg("dup"))
        async with Gate(spool):
            tasks = [
                asyncio.create_task(spool.store(msg(q, "a@x.test", "b@x.test")))
                for q in ("a", "b", "dup", "c")
            ]
            await asyncio.sleep(0)
        a, b, dup, c = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(dup, SpoolError) and "UNIQUE" in str(dup)
        for m in (a, b, c):
            assert isinstance(m, ClaimedMessage)
            assert [r.rid for r in (await spool.get(m.queue_id)).recipients] == [  # type: ignore[union-attr]
                r.rid for r in m.recipients
            ]
        assert (await spool.stats())["queued"] == 7
        await spool.close()

    run(main())


def test_sqlite_a_claim_reads_content_stored_earlier_in_its_batch(db: Path) -> None:
    """The content of a batch is written just before its commit: a claim in the same
    transaction reads what is not written yet."""

    async def main() -> None:
        spool = SqliteSpool(db)
        await spool.open()
        async with Gate(spool):
            stored = asyncio.create_task(spool.store(msg("q1", content=b"x" * 70_000)))
            await asyncio.sleep(0)
            claimed = asyncio.create_task(spool.claim_ready(T0 + 10, 10))
            await asyncio.sleep(0)
        await stored
        [m] = await claimed
        assert m.queue_id == "q1" and m.content == b"x" * 70_000
        await spool.close()

    run(main())


def test_sqlite_record_waits_for_the_next_commit_instead_of_making_one(db: Path) -> None:
    async def main() -> None:
        spool = SqliteSpool(db, lazy_delay=30)  # the delay never fires in this test
        await spool.open()
        [rid] = await store_rids(spool, msg("q1"))
        before = spool.commits
        recorded = asyncio.create_task(spool.record([RecipientResult(rid, S.DELIVERED, code=250)]))
        # An absence has no event to wait for: give a commit of its own time to show.
        await asyncio.sleep(0.2)
        assert not recorded.done() and spool.commits == before  # no commit of its own
        await spool.store(msg("q2"))  # a message that must be durable now: one commit
        await recorded
        assert spool.commits - before == 1
        assert await states(spool, "q1") == [S.DELIVERED]
        await spool.close()

    run(main())


def test_sqlite_record_alone_is_committed_after_the_lazy_delay(db: Path) -> None:
    async def main() -> None:
        spool = SqliteSpool(db, lazy_delay=0.05)
        await spool.open()
        [rid] = await store_rids(spool, msg("q1"))
        await asyncio.wait_for(spool.record([RecipientResult(rid, S.BOUNCED, code=550)]), 5)
        assert await states(spool, "q1") == [S.BOUNCED]
        await spool.close()

    run(main())


def test_sqlite_close_commits_pending_lazy_records(db: Path) -> None:
    async def main() -> None:
        spool = SqliteSpool(db, lazy_delay=30)
        await spool.open()
        rids = [r for i in range(5) for r in await store_rids(spool, msg(f"q{i}"))]
        recorded = asyncio.create_task(
            spool.record([RecipientResult(r, S.DELIVERED, code=250) for r in rids])
        )
        await asyncio.sleep(0)  # a yield: each new task runs to its first await (its op queued)
        await spool.close()
        await recorded
        spool = SqliteSpool(db)
        await spool.open()
        assert (await spool.stats())["delivered"] == 5
        await spool.close()

    run(main())


@pytest.mark.parametrize(("n", "twice"), [(1, False), (3, False), (600, False), (3, True)])
def test_sqlite_batched_record_updates_exactly_the_given_recipients(
    db: Path, n: int, twice: bool
) -> None:
    """One statement per chunk, padded to a power of two: the padding matches nothing,
    chunks of 500 meet, and a recipient given twice gets both results in order."""

    async def main() -> None:
        spool = SqliteSpool(db, lazy_delay=0.01)
        await spool.open()
        rids = [r for i in range(n + 2) for r in await store_rids(spool, msg(f"q{i}"))]
        mine, others = rids[:n], rids[n:]
        results = [
            RecipientResult(r, S.DELIVERED if i % 2 else S.BOUNCED, code=250 + i % 2,
                            response=f"reply {i}", member=f"m{i}")
            for i, r in enumerate(mine)
        ]  # fmt: skip
        if twice:
            results.append(RecipientResult(mine[0], S.DEFERRED, next_attempt=T0, code=451))
        await spool.record(results)
        for i in range(n):
            [r] = (await spool.get(f"q{i}")).recipients  # type: ignore[union-attr]
            if i == 0 and twice:  # bounced, then deferred: two attempts
                assert (r.state, r.last_code, r.attempts) == (S.DEFERRED, 451, 2)
                assert r.last_response == "reply 0"  # a result without text keeps the last
            else:
                expected = S.DELIVERED if i % 2 else S.BOUNCED
                assert (r.state, r.last_code, r.member) == (expected, 250 + i % 2, f"m{i}")
                assert await spool.get_content(f"q{i}") is None  # final: content released
        for i, r in enumerate(others, start=n):
            view = await spool.get(f"q{i}")
            assert view is not None and view.recipients[0].rid == r
            assert view.recipients[0].state is S.QUEUED
            assert await spool.get_content(f"q{i}") is not None
        await spool.close()

    run(main())


def test_sqlite_record_marks_final_the_messages_whose_last_recipient_it_records(
    db: Path,
) -> None:
    """Results go through a trigger of the writer's connection, one row each, in order:
    a message is final (its content released) when the batch leaves none of its
    recipients to go, whichever row of the batch that was; the counts follow."""

    async def main() -> None:
        spool = SqliteSpool(db, lazy_delay=0.01)
        await spool.open()
        a1, a2 = await store_rids(spool, msg("both", "a1@x.test", "a2@x.test"), inflight=True)
        b1, b2 = await store_rids(spool, msg("half", "b1@x.test", "b2@x.test"), inflight=True)
        [c] = await store_rids(spool, msg("later", "c@x.test"), inflight=True)
        await spool.record(
            [
                RecipientResult(a1, S.DELIVERED, code=250),
                RecipientResult(b1, S.BOUNCED, code=550),
                RecipientResult(c, S.DEFERRED, next_attempt=T0 + 60, code=451),
                RecipientResult(a2, S.BOUNCED, code=550),
                RecipientResult(b2, S.DEFERRED, next_attempt=T0 + 60, code=451),
            ]
        )
        assert await spool.get_content("both") is None
        assert await spool.get_content("half") is not None
        assert await spool.get_content("later") is not None
        assert await states(spool, "half") == [S.BOUNCED, S.DEFERRED]
        stats = await spool.stats()
        assert (stats["delivered"], stats["bounced"], stats["deferred"], stats["in_flight"]) == (
            1, 2, 2, 0,
        )  # fmt: skip
        await spool.record([RecipientResult(c, S.DELIVERED, code=250)])
        assert await spool.get_content("later") is None
        await spool.close()
        conn = sqlite3.connect(db)  # nothing of the trigger's table in the file
        assert conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE 'record%'"
        ).fetchone() == (0,)
        conn.close()

    run(main())


def test_sqlite_failed_operation_fails_only_its_caller(db: Path) -> None:
    async def main() -> None:
        spool = SqliteSpool(db)
        await spool.open()
        await spool.store(msg("dup"))
        async with Gate(spool):
            tasks = [asyncio.create_task(spool.store(msg(q))) for q in ("a", "dup", "b")]
            await asyncio.sleep(0)  # a yield: each new task runs to its first await (its op queued)
            before = spool.commits
        a, dup, b = await asyncio.gather(*tasks, return_exceptions=True)
        assert spool.commits - before == 2  # all three were in one batch
        assert isinstance(dup, SpoolError) and "UNIQUE" in str(dup)
        assert isinstance(a, ClaimedMessage) and isinstance(b, ClaimedMessage)
        assert [m.queue_id for m in await spool.list_messages()] == ["b", "a", "dup"]
        assert (await spool.stats())["queued"] == 3
        await spool.close()

    run(main())


def test_sqlite_failed_commit_fails_the_batch_and_spool_recovers(db: Path) -> None:
    denied: list[str] = []

    def deny_next_commit(conn: sqlite3.Connection) -> None:
        def authorizer(action: int, arg1: str | None, *_: object) -> int:
            if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT" and not denied:
                denied.append(arg1)
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        conn.set_authorizer(authorizer)

    async def main() -> None:
        spool = SqliteSpool(db)
        await spool.open()
        async with Gate(spool):
            poison = asyncio.create_task(spool._write(deny_next_commit))
            tasks = [asyncio.create_task(spool.store(msg(f"q{i}"))) for i in range(5)]
            await asyncio.sleep(0)  # a yield: each new task runs to its first await (its op queued)
        results = await asyncio.gather(poison, *tasks, return_exceptions=True)
        assert denied
        assert all(isinstance(r, SpoolError) for r in results), results
        assert await spool.list_messages() == []
        assert await spool.stats() == {s.label: 0 for s in RecipientState}
        await spool._write(lambda c: c.set_authorizer(None))
        assert len(await store_rids(spool, msg("after"))) == 1
        assert await spool.get("after") is not None
        await spool.close()

    run(main())


def test_sqlite_disk_full_fails_closed_then_recovers(db: Path) -> None:
    async def main() -> None:
        spool = SqliteSpool(db)
        await spool.open()
        await spool.store(msg("small"))
        # "Disk full": the content segment may not grow past 100 kB. The transaction
        # is rolled back; the spool reruns the rest of the batch.
        append = spool.segments.append

        def small_disk(data: bytes) -> tuple[int, int]:
            if len(data) > 100_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return append(data)

        spool.segments.append = small_disk  # type: ignore[method-assign]
        async with Gate(spool):
            tasks = [
                asyncio.create_task(spool.store(m))
                for m in (msg("a"), msg("big", content=b"x" * 1_000_000), msg("b"))
            ]
            await asyncio.sleep(0)  # a yield: each new task runs to its first await (its op queued)
        a, big, b = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(big, SpoolError) and "full" in str(big)
        assert isinstance(a, ClaimedMessage) and isinstance(b, ClaimedMessage)
        spool.segments.append = append  # type: ignore[method-assign]
        await spool.store(msg("big", content=b"x" * 1_000_000))
        assert [m.queue_id for m in await spool.list_messages()] == ["big", "b", "a", "small"]
        await spool.close()

    run(main())


def test_sqlite_reads_do_not_wait_for_the_writer(db: Path) -> None:
    async def main() -> None:
        spool = SqliteSpool(db)
        await spool.open()
        await spool.store(msg("q1"))
        async with Gate(spool):
            assert (await spool.stats())["queued"] == 1
            assert await spool.get("q1") is not None
        await spool.close()

    run(main())


def test_sqlite_cancelled_caller_does_not_break_the_writer(db: Path) -> None:
    async def main() -> None:
        spool = SqliteSpool(db)
        await spool.open()
        async with Gate(spool):
            task = asyncio.create_task(spool.store(msg("cancelled")))
            await asyncio.sleep(0)  # a yield: each new task runs to its first await (its op queued)
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await spool.store(msg("next"))
        assert await spool.get("next") is not None
        await spool.close()

    run(main())


def test_sqlite_schema_version_and_pragmas(db: Path) -> None:
    run(_open_close(db))
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SpoolError, match="upgrade smtplb"):
        run(_open_close(db))


def test_sqlite_trace_steps_of_one_message_and_commit_share_a_row(db: Path) -> None:
    """A message's steps noted before one commit are one row (and one index entry):
    trace persistence runs for every message, so rows are what it costs."""

    async def main() -> None:
        spool = SqliteSpool(db)
        await spool.open()
        spool.note_trace("q1", T0, "routed", ("a@x.test", None, "default", 1, "transactional"))
        spool.note_trace("q2", T0, "routed", ("b@x.test", 0, "default", 1, "bulk"))
        await store_rids(spool, msg("q1"))
        spool.note_trace("q1", T0 + 1, "dispatch", (("a@x.test",), "default", 1, "m1", "rr", ()))
        spool.note_trace("q1", T0 + 2, "attempt", ("m1", "192.0.2.9:25", (("a@x.test", "250 Ok"),)))
        await store_rids(spool, msg("q2"))
        assert [(ts, step) for ts, step, _ in await spool.trace("q1")] == [
            (T0, "routed"),
            (T0 + 1, "dispatch"),
            (T0 + 2, "attempt"),
        ]
        assert (await spool.trace("q1"))[2][2] == ("m1", "192.0.2.9:25", [["a@x.test", "250 Ok"]])
        await spool.close()

    run(main())
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT queue_id, COUNT(*) FROM traces GROUP BY queue_id").fetchall()
    conn.close()
    assert sorted(rows) == [("q1", 2), ("q2", 1)]


def test_sqlite_unopenable_path_is_a_spool_error(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match=f"cannot open spool {tmp_path}"):
        run(_open_close(tmp_path))  # a directory, not a database file


async def _open_close(path: Path) -> None:
    spool = SqliteSpool(path)
    await spool.open()
    assert "open" in repr(spool) and str(path) in repr(spool)
    await spool.close()
    assert "closed" in repr(spool)
    with pytest.raises(SpoolError, match="not open"):
        await spool.store(msg("late"))


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from smtplb.spool.base import NewMessage, NewRecipient
    from smtplb.spool.sqlite import SqliteSpool

    async def main() -> None:
        spool = SqliteSpool(Path(sys.argv[1]))
        await spool.open()
        async def one(i: int) -> None:
            m = NewMessage(f"q{i}", "a@x.test", (NewRecipient(f"r{i}@y.test", "p"),),
                           b"body %d" % i, f"<{i}@x>", 1.0, 2e9)
            stored = await spool.store(m)
            print(f"q{i}", stored.recipients[0].rid, flush=True)
        await asyncio.gather(*(one(i) for i in range(20)))
        print("done", flush=True)
        await asyncio.Event().wait()  # hang: the parent kills us

    asyncio.run(main())
    """
)


def test_sqlite_store_is_durable_when_it_returns(db: Path, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    child = subprocess.Popen(
        [sys.executable, str(script), str(db)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    acked: dict[str, int] = {}
    for line in child.stdout:
        if line.strip() == "done":
            break
        qid, rid = line.split()
        acked[qid] = int(rid)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert len(acked) == 20

    async def check() -> None:
        spool = SqliteSpool(db)
        await spool.open()
        for qid, rid in acked.items():
            view = await spool.get(qid)
            assert view is not None and [r.rid for r in view.recipients] == [rid]
            assert await spool.get_content(qid) == b"body %d" % int(qid[1:])
        await spool.close()

    run(check())


def test_sqlite_commit_waits_for_siblings_and_not_when_alone(db: Path) -> None:
    """With siblings, the writer waits ``commit_delay`` before closing a batch: a store
    queued during that wait shares the commit. Alone, a store is committed at once."""

    async def main() -> None:
        asked = threading.Event()

        def siblings() -> int:
            asked.set()  # the writer has taken the first operation of a batch
            return 3

        spool = SqliteSpool(db, commit_delay=2.0, siblings=siblings)
        await spool.open()
        before = spool.commits
        first = asyncio.create_task(spool.store(msg("first")))
        await asyncio.to_thread(asked.wait, 30)
        second = asyncio.create_task(spool.store(msg("second")))  # during the wait
        await asyncio.gather(first, second)
        assert spool.commits - before == 1
        await spool.close()

        alone = SqliteSpool(db, commit_delay=30.0)  # no siblings: the delay never applies
        await alone.open()
        before = alone.commits
        await asyncio.wait_for(alone.store(msg("third")), 10)
        assert alone.commits - before == 1
        await alone.close()

    run(main())
