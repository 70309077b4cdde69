"""Store rate of the SQLite spool: group commit against one commit per message.

    .venv/bin/python bench/spool_bench.py [--writers 20] [--messages 4000] [--size 5120]

Each of ``--writers`` tasks stores messages of ``--size`` bytes back to back,
as intake does (one store in flight per SMTP session). Every store is fsynced
(``synchronous=FULL``) before it returns; ``batch_max=1`` turns group commit off.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from pathlib import Path

from smtplb.spool.base import NewMessage, NewRecipient
from smtplb.spool.sqlite import SqliteSpool


async def run(directory: Path, *, batch_max: int, writers: int, messages: int, size: int) -> None:
    spool = SqliteSpool(directory / f"bench-{batch_max}.db", batch_max=batch_max)
    await spool.open()
    body = (b"Subject: bench\r\n\r\n" + b"x" * size)[:size]
    ids = itertools.count()
    now = time.time()

    async def writer() -> None:
        while (i := next(ids)) < messages:
            rcpt = NewRecipient(f"user{i}@example.net", "default")
            await spool.store(
                NewMessage(
                    f"b{i}", "app@example.com", (rcpt,), body, f"<{i}@bench>", now, now + 1e5
                )
            )

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.perf_counter() - start
    commits = spool.commits
    await spool.close()
    print(
        f"batch_max={batch_max:<4} writers={writers} size={size}B: {messages} stores in"
        f" {elapsed:.2f}s = {messages / elapsed:,.0f} msgs/s, {commits} commits"
        f" ({messages / max(commits, 1):.1f} msgs/commit)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writers", type=int, default=20)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the spool files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for batch_max in (256, 1):
            asyncio.run(
                run(
                    Path(tmp),
                    batch_max=batch_max,
                    writers=args.writers,
                    messages=args.messages,
                    size=args.size,
                )
            )


if __name__ == "__main__":
    main()
