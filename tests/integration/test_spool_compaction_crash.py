"""Compaction under kill -9: a process that stores, delivers most, defers a few and
compacts, round after round, is killed at random moments; whatever it left, every
message still in the spool reads back byte for byte, the segments' counters match the
rows, and no file is left that no message uses."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from smtplb.spool.segments import segments_dir
from smtplb.spool.sqlite import SqliteSpool

# The child: rounds of 40 messages of ~8 KB into 30 KB segments; 30 delivered, 10 deferred
# for long; then a compaction pass that may move anything (min_age 0).
CHILD = r"""
import asyncio, sys
from pathlib import Path
from smtplb.model import RecipientState
from smtplb.spool.base import NewMessage, NewRecipient, RecipientResult
from smtplb.spool.segments import CompactionPolicy
from smtplb.spool.sqlite import SqliteSpool

T0 = 1_000_000.0

def content(qid):
    return (qid + ":").encode() * (8000 // (len(qid) + 1))

async def main(db, start):
    policy = CompactionPolicy(min_age=0.0, step=8_000, interval=1e9)
    spool = SqliteSpool(db, segment_max=30_000, compaction=policy)
    await spool.open()
    r = start
    while True:
        for i in range(40):
            qid = f"r{r}-{i}"
            await spool.store(NewMessage(
                queue_id=qid, sender="a@x.test",
                recipients=(NewRecipient("u@y.test", "default"),),
                content=content(qid), message_id=f"<{qid}@x>",
                received_at=T0, expires_at=T0 + 1e9))
        claimed = await spool.claim_ready(T0, 100)
        await spool.record([
            RecipientResult(m.recipients[0].rid,
                            RecipientState.DEFERRED if n % 4 == 0 else RecipientState.DELIVERED,
                            next_attempt=T0 + 1e8)
            for n, m in enumerate(claimed)])
        await spool.store(NewMessage(
            queue_id=f"nudge{r}", sender="a@x.test", recipients=(), content=b"n",
            message_id="<n@x>", received_at=T0, expires_at=T0 + 1e9))
        print("compacting", flush=True)
        emptied = await spool.compact()
        print(f"round {r} compacted {len(emptied)}", flush=True)
        r += 1

asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
"""


def content(qid: str) -> bytes:
    return (qid + ":").encode() * (8000 // (len(qid) + 1))


def check(db: Path) -> int:
    """Open the spool as a restart would; check it; the number of live messages."""

    async def main() -> int:
        spool = SqliteSpool(db)
        await spool.open()
        try:
            conn = sqlite3.connect(db)
            try:
                live = [
                    qid
                    for (qid,) in conn.execute(
                        "SELECT queue_id FROM messages WHERE seg IS NOT NULL"
                    )
                ]
                counted = dict(conn.execute("SELECT id, bytes FROM segments WHERE live > 0"))
                actual = dict(
                    conn.execute(
                        "SELECT seg, sum(size) FROM messages WHERE seg IS NOT NULL GROUP BY seg"
                    )
                )
            finally:
                conn.close()
            assert counted == actual
            on_disk = {int(p.stem) for p in segments_dir(db).glob("*.seg")}
            assert on_disk == set(actual)  # opening removed what nothing uses
            for qid in live:
                assert await spool.get_content(qid) == content(qid), qid
            return len(live)
        finally:
            await spool.close()

    return asyncio.run(asyncio.wait_for(main(), 60))


def test_kill_9_during_compaction_loses_no_content(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"
    rng = random.Random(17)
    compacted = interrupted = 0
    start = 0
    for _ in range(10):
        with subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db), str(start)], stdout=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None
            try:
                for _ in range(rng.randint(1, 3)):
                    assert proc.stdout.readline() == "compacting\n"
                    line = proc.stdout.readline()
                    assert line.startswith("round"), f"child stopped: {line!r}"
                    compacted += int(line.split()[-1])
                assert proc.stdout.readline() == "compacting\n"
                time.sleep(rng.uniform(0, 0.005))  # in (or just after) the next pass
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
            # The pass did not finish (killed in it, or before it could say so).
            interrupted += not proc.stdout.read().startswith("round")
        start += 100
        check(db)
    print(f"segments compacted {compacted}, passes interrupted {interrupted} of 10")
    assert compacted > 0 and interrupted > 0
    assert check(db) >= 10 * 3  # at least the deferred messages of each child's first round
