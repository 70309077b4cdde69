"""Deep drain of the spool alone: CPU per message to claim and record a backlog of
``--deep`` messages against one of ``--small`` (issue 17, item 4).

    .venv/bin/python bench/spool_drain.py [--small 20000] [--deep 200000] [--size 1024]

Each backlog is stored (QUEUED, due), then drained the way the dispatcher's feeder
does: claim up to ``--batch`` recipients, and record them DELIVERED (the results ride
along with the next claim's commit). Reported: CPU seconds of this process per message
(user + system, the writer thread included) and the drain rate (wall clock: on a shared
machine, read the CPU figure first).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from pathlib import Path

from smtplb.model import RecipientState
from smtplb.spool.base import NewMessage, NewRecipient, RecipientResult
from smtplb.spool.sqlite import SqliteSpool


async def fill(
    spool: SqliteSpool, n: int, size: int, writers: int = 50, *, deferred: bool = False
) -> None:
    """``n`` messages, due. ``deferred``: as if every member had refused them once (an
    attempt per member noted in the trace, the recipient DEFERRED with the reply)."""
    body = (b"Subject: drain\r\n\r\n" + b"x" * size)[:size]
    ids = itertools.count()
    now = time.time() - 60
    refused = "connection refused: [Errno 111] Connect call failed ('127.0.0.2', 25)"

    async def writer() -> None:
        while (i := next(ids)) < n:
            qid = f"{int(now * 1000) + i:011X}D{i:08X}"
            rcpt = NewRecipient(f"user{i}@example.net", "bench")
            m = NewMessage(qid, "app@example.com", (rcpt,), body, f"<{i}@b>", now, now + 1e6)
            spool.note_trace(qid, now, "route", ("bench", 1, "normal", "transactional"))
            stored = await spool.store(m, inflight=deferred)
            if deferred:
                for member in ("sink-1", "sink-2", "sink-3"):
                    spool.note_trace(qid, now, "attempt", (member, None, refused))
                spool.note_trace(qid, now, "deferred", (now, 1, "4.4.1", refused))
                rid = stored.recipients[0].rid
                result = RecipientResult(rid, RecipientState.DEFERRED, next_attempt=now, code=None,
                                         enhanced_code="4.4.1", response=refused)  # fmt: skip
                await spool.record([result])

    await asyncio.gather(*(writer() for _ in range(writers)))


async def drain(spool: SqliteSpool, n: int, batch: int) -> tuple[float, float]:
    done = 0
    pending: set[asyncio.Task[None]] = set()
    cpu0, t0 = time.process_time(), time.perf_counter()
    while done < n:
        claimed = await spool.claim_ready(time.time(), batch)
        if not claimed:
            await asyncio.sleep(0.001)
            continue
        results = []
        for m in claimed:
            for r in m.recipients:
                ok = RecipientResult(r.rid, RecipientState.DELIVERED, code=250, member="sink-1")
                results.append(ok)
                spool.note_trace(m.queue_id, time.time(), "attempt", ("sink-1", 250, "ok"))
        done += len(results)
        task = asyncio.create_task(spool.record(results))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    return (time.process_time() - cpu0) / n, n / (time.perf_counter() - t0)


async def one(directory: Path, n: int, args: argparse.Namespace) -> None:
    spool = SqliteSpool(directory / f"drain-{n}.db")
    await spool.open()
    t = time.perf_counter()
    await fill(spool, n, args.size)
    filled = time.perf_counter() - t
    await spool.close()
    spool = SqliteSpool(directory / f"drain-{n}.db")  # a restart, as in bench/scale.py
    await spool.open()
    cpu, rate = await drain(spool, n, args.batch)
    await spool.close()
    print(
        f"{n:>9,} queued ({filled:.0f} s to fill): drain {cpu * 1e6:,.0f} us CPU/msg,"
        f" {rate:,.0f} msg/s (wall clock)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--deep", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the spools")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in (args.small, args.deep):
            asyncio.run(one(Path(tmp), n, args))


if __name__ == "__main__":
    main()
