"""Several worker processes, one spool shard each: naming, the admin view over
all shards, and adoption of shards left behind when ``workers`` shrinks."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from smtplb.model import RecipientState
from smtplb.spool.base import (
    MessageView,
    NewMessage,
    NewRecipient,
    Spool,
    SpoolAdmin,
    SpoolError,
    TraceStep,
)
from smtplb.spool.segments import segments_dir
from smtplb.spool.sqlite import SqliteSpool

log = logging.getLogger("smtplb.spool")

_SHARD = re.compile(r"^spool(?:-(\d+))?\.db$")


def shard_path(data_dir: Path, worker: int) -> Path:
    """Worker 0 keeps ``spool.db`` (a single-process node's spool); others ``spool-N.db``."""
    return data_dir / ("spool.db" if worker == 0 else f"spool-{worker}.db")


def shard_index(path: Path) -> int | None:
    match = _SHARD.match(path.name)
    if match is None:
        return None
    return int(match.group(1) or 0)


class ShardedQueue:
    """The queue as operators see it: every shard's messages, one answer. The
    whole of :class:`~smtplb.spool.base.SpoolAdmin` (the contract suite checks).

    The first spool is this process's own; the others belong to peer workers and
    are opened without crash recovery (their owners are alive)."""

    def __init__(self, spools: Sequence[SpoolAdmin]) -> None:
        self.spools = list(spools)

    async def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for part in await asyncio.gather(*(s.stats() for s in self.spools)):
            for state, count in part.items():
                total[state] = total.get(state, 0) + count
        return total

    async def oldest_age(self, now: float) -> dict[str, float]:
        oldest: dict[str, float] = {}
        for part in await asyncio.gather(*(s.oldest_age(now) for s in self.spools)):
            for state, age in part.items():
                oldest[state] = max(oldest.get(state, 0.0), age)
        return oldest

    async def list_messages(
        self, *, state: RecipientState | None = None, limit: int = 100, offset: int = 0
    ) -> list[MessageView]:
        parts = await asyncio.gather(
            *(s.list_messages(state=state, limit=limit + offset) for s in self.spools)
        )
        merged = sorted((m for part in parts for m in part), key=lambda m: -m.received_at)
        return merged[offset : offset + limit]

    async def get(self, queue_id: str) -> MessageView | None:
        for spool in self.spools:
            view = await spool.get(queue_id)
            if view is not None:
                return view
        return None

    async def get_content(self, queue_id: str) -> bytes | None:
        for spool in self.spools:
            content = await spool.get_content(queue_id)
            if content is not None:
                return content
        return None

    async def retry(self, queue_id: str | None = None) -> int:
        return sum(await asyncio.gather(*(s.retry(queue_id) for s in self.spools)))

    async def delete(self, queue_id: str) -> bool:
        return any(await asyncio.gather(*(s.delete(queue_id) for s in self.spools)))

    async def purge(self, older_than: float) -> int:
        return sum(await asyncio.gather(*(s.purge(older_than) for s in self.spools)))

    async def trace(self, queue_id: str) -> list[TraceStep]:
        """A message's steps from every shard (a message lives in one, but its
        trace is wherever the worker that noted a step keeps it)."""
        parts = await asyncio.gather(*(s.trace(queue_id) for s in self.spools))
        return sorted((step for part in parts for step in part), key=lambda step: step[0])


async def adopt_orphans(data_dir: Path, workers: int, into: Spool) -> int:
    """Move the mail of shards no worker owns any more (``workers`` was lowered)
    into ``into``, then remove them. At-least-once: a crash half-way may repeat
    a message, never lose one. A shard that cannot be moved now (a full disk) is
    left for the next start. Returns how many messages moved."""
    moved = 0
    for path in sorted(data_dir.glob("spool-*.db")):  # noqa: ASYNC240 - once, at start
        index = shard_index(path)
        if index is None or index < workers:
            continue
        try:
            moved += await _adopt(path, into)
        except SpoolError as exc:
            log.warning("spool %s: not adopted now, left for the next start: %s", path, exc)
            continue
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)  # noqa: ASYNC240
        shutil.rmtree(segments_dir(path), ignore_errors=True)
    return moved


async def _adopt(path: Path, into: Spool) -> int:
    moved = 0
    orphan = SqliteSpool(path)
    await orphan.open()
    try:
        while batch := await orphan.claim_ready(float("inf"), 500):
            for claimed in batch:
                try:
                    await into.store(
                        NewMessage(
                            queue_id=claimed.queue_id,
                            sender=claimed.sender,
                            recipients=tuple(
                                NewRecipient(r.address, r.pool, r.priority)
                                for r in claimed.recipients
                            ),
                            content=claimed.content,
                            message_id=claimed.message_id,
                            received_at=claimed.received_at,
                            expires_at=claimed.expires_at,
                            content_class=claimed.content_class,
                            is_dsn=claimed.is_dsn,
                            client_ip=claimed.client_ip,
                            plain_lines=claimed.plain_lines,
                        )
                    )
                except SpoolError:
                    # Already adopted before a crash (same queue id): drop the copy.
                    if await into.get(claimed.queue_id) is None:
                        raise
                await orphan.delete(claimed.queue_id)
                moved += 1
    finally:
        await orphan.close()
    return moved
