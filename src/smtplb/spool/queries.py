"""The spool's SQL: one plain function per operation, each run by
:class:`~smtplb.spool.sqlite.SqliteSpool` on the writer's connection (inside a
group-committed transaction) or on the reader's.

Nothing scans the queue: claiming walks the partial index ``recipients_ready``
(non-final, not in flight) one priority at a time; expiry walks the partial
index of live messages by ``expires_at``; state counts are kept by triggers.
When every recipient of a message is final its content is released (set to
NULL), except after expiry, where the DSN still quotes it; ``purge`` deletes
final messages after their retention.

Parameters go to sqlite3 as exact ``int``, ``float`` or ``str`` where they can:
anything else (a ``bool``, an ``IntEnum``, and even ``None`` or ``bytes``) goes
through sqlite3's adaptation lookup, two failed attribute lookups with their error
messages, some 3,000 instructions each.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import msgspec

from smtplb.model import RecipientState, domain_of
from smtplb.spool.base import (
    ClaimedMessage,
    ClaimedRecipient,
    ExpiredRecipient,
    MessageView,
    NewMessage,
    RecipientResult,
    RecipientView,
    SpoolError,
    TraceStep,
)
from smtplb.spool.schema import FINAL_FROM, INFLIGHT, NON_FINAL, QUEUED, READY
from smtplb.spool.segments import SegmentStore, read_content

_MSG_COLS = "pk, queue_id, sender, message_id, size, received_at, expires_at, content_class, is_dsn"
_RCPT_COLS = (
    "rid, address, state, pool, priority, attempts, next_attempt, last_code, last_enhanced,"
    " last_response, member, updated_at"
)
_BELOW_ANY_PRIORITY = -(2**62)
_IN_CHUNK = 500  # bound on host parameters per IN (...) list
_RECORD_SQL: dict[int, str] = {}
_NO_ROW = (-1, 0, 0, 0, 0.0, 0, "", "", "")  # rid -1 matches no recipient


def _chunks(items: list[int]) -> Iterable[list[int]]:
    for i in range(0, len(items), _IN_CHUNK):
        yield items[i : i + _IN_CHUNK]


def _bucket(n: int) -> int:
    """``n`` rounded up to a power of two: batched statements come in a few sizes,
    which SQLite's statement cache keeps prepared."""
    return 1 << (n - 1).bit_length()


def _qmarks(n: int) -> str:
    return ",".join("?" * n)


# -- writes (on the writer's connection, inside its transaction) -----------------


_MSG_INSERT = (
    "pk, queue_id, sender, message_id, size, received_at, expires_at, client_ip, auth_user,"
    " content_class, is_dsn, seg, seg_off, plain_lines"
)
_RCPT_INSERT = "rid, msg_pk, address, domain, pool, priority, state, next_attempt, updated_at"
# One row, the key left to SQLite (the columns after the first).
_INSERT_MESSAGE = f"INSERT INTO messages({_MSG_INSERT[4:]}) VALUES ({_qmarks(13)})"
_INSERT_RECIPIENT = f"INSERT INTO recipients({_RCPT_INSERT[5:]}) VALUES ({_qmarks(8)})"
_ROWS_CHUNK = 256  # rows per multi-row INSERT
_INSERT_SQL: dict[tuple[str, str, int], str] = {}


def _insert_rows(
    conn: sqlite3.Connection, table: str, cols: str, rows: list[tuple[Any, ...]]
) -> None:
    """INSERT ``rows`` with one statement per ``_ROWS_CHUNK`` of them, not one per row
    (each statement is a GIL hand-over to and from SQLite). The row count is padded
    to a power of two with rows of zeros, which the WHERE drops: a few statement texts,
    which SQLite's statement cache keeps prepared. ``cols`` start with one never 0 (a
    key, or text). Zeros, not NULLs: sqlite3 binds None through its adaptation lookup."""
    width = cols.count(",") + 1
    for i in range(0, len(rows), _ROWS_CHUNK):
        chunk = rows[i : i + _ROWS_CHUNK]
        size = _bucket(len(chunk))
        sql = _INSERT_SQL.get((table, cols, size))
        if sql is None:
            row = f"({_qmarks(width)})"
            sql = _INSERT_SQL[(table, cols, size)] = (
                f"INSERT INTO {table}({cols}) VALUES {row}"
                if size == 1
                else f"INSERT INTO {table}({cols}) SELECT * FROM"
                f" (VALUES {','.join([row] * size)}) WHERE column1 <> 0"
            )
        params: list[Any] = [v for r in chunk for v in r]
        params += [0] * (width * (size - len(chunk)))
        conn.execute(sql, params)


def store(
    conn: sqlite3.Connection,
    batch: list[tuple[NewMessage, bool]],
    now: float,
    segments: SegmentStore,
) -> list[ClaimedMessage]:
    """Store each ``(message, inflight)`` of a batch: two INSERT statements in all.

    The keys are given, not left to SQLite: what it would choose (the largest in the
    table plus one; the writer holds the write lock, nobody else inserts meanwhile),
    known before the INSERT, so no RETURNING row (a GIL hand-over each) is needed.
    A message alone (the batch held no other) is stored as it always was: an INSERT
    per row, SQLite picking the keys (one statement fewer)."""
    if len(batch) == 1:
        return [_store_one(conn, *batch[0], now, segments)]
    last_pk, last_rid = conn.execute(
        "SELECT (SELECT max(pk) FROM messages), (SELECT max(rid) FROM recipients)"
    ).fetchone()
    pk, rid = last_pk or 0, last_rid or 0
    messages: list[tuple[Any, ...]] = []
    recipients: list[tuple[Any, ...]] = []
    stored: list[ClaimedMessage] = []
    empty: list[int] = []
    for m, inflight in batch:
        pk += 1
        messages.append((pk, *_message_row(m, segments)))
        claimed = _claimed(pk, m)
        state = INFLIGHT if inflight else QUEUED
        for r in m.recipients:
            rid += 1
            recipients.append(
                (rid, pk, r.address, domain_of(r.address), r.pool, r.priority, state,
                 m.received_at, now)
            )  # fmt: skip
            claimed.recipients.append(ClaimedRecipient(rid, r.address, r.pool, r.priority, 0))
        if not m.recipients:
            empty.append(pk)
        stored.append(claimed)
    _insert_rows(conn, "messages", _MSG_INSERT, messages)
    _insert_rows(conn, "recipients", _RCPT_INSERT, recipients)
    if empty:
        finalize(conn, empty, now)
    return stored


def _message_row(m: NewMessage, segments: SegmentStore) -> tuple[Any, ...]:
    """The ``messages`` row of ``m`` without its key, its content appended to a segment
    (written once, synced before COMMIT; the row says where: SQLite would write it
    twice, to the WAL and again at checkpoint)."""
    seg, seg_off = segments.append(m.content)
    return (m.queue_id, m.sender, m.message_id, len(m.content), m.received_at, m.expires_at,
            m.client_ip, m.auth_user, m.content_class, int(m.is_dsn), seg, seg_off,
            int(m.plain_lines))  # fmt: skip


def _claimed(pk: int, m: NewMessage) -> ClaimedMessage:
    """``m`` as stored under ``pk``, its recipients still to be added."""
    return ClaimedMessage(
        pk, m.queue_id, m.sender, m.message_id, m.content, m.received_at, m.expires_at,
        m.content_class, m.is_dsn, client_ip=m.client_ip, plain_lines=m.plain_lines,
    )  # fmt: skip


def _store_one(
    conn: sqlite3.Connection, m: NewMessage, inflight: bool, now: float, segments: SegmentStore
) -> ClaimedMessage:
    cur = conn.execute(_INSERT_MESSAGE, _message_row(m, segments))
    msg_pk = cur.lastrowid
    assert msg_pk is not None
    stored = _claimed(msg_pk, m)
    state = INFLIGHT if inflight else QUEUED
    for r in m.recipients:
        cur = conn.execute(
            _INSERT_RECIPIENT,
            (msg_pk, r.address, domain_of(r.address), r.pool, r.priority, state,
             m.received_at, now),
        )  # fmt: skip
        assert cur.lastrowid is not None
        stored.recipients.append(ClaimedRecipient(cur.lastrowid, r.address, r.pool, r.priority, 0))
    if not m.recipients:
        finalize(conn, [msg_pk], now)
    return stored


def claim(
    conn: sqlite3.Connection,
    now: float,
    limit: int,
    stamp: float,
    read: Callable[[int, int, int], bytes],
) -> list[ClaimedMessage]:
    rows: list[tuple[int, int, str, str, int, int]] = []
    # Skip from one priority present to the next: one index seek each, however
    # deep the queue; within a priority, a range scan of due recipients.
    prio = _next_priority(conn, _BELOW_ANY_PRIORITY)
    while prio is not None:
        rows += conn.execute(
            "SELECT rid, msg_pk, address, pool, priority, attempts FROM recipients"
            " INDEXED BY recipients_ready"
            f" WHERE {READY} AND priority = ? AND next_attempt <= ?"
            " ORDER BY next_attempt LIMIT ?",
            (prio, now, limit - len(rows)),
        ).fetchall()
        if len(rows) >= limit:
            break
        prio = _next_priority(conn, prio)
    if not rows:
        return []
    # One statement per chunk, not one per recipient (a GIL hand-over each).
    rids = [row[0] for row in rows]
    for chunk in _chunks(rids):
        size = _bucket(len(chunk))
        conn.execute(
            f"UPDATE recipients SET state=?, updated_at=? WHERE rid IN ({_qmarks(size)})",
            [INFLIGHT, stamp, *chunk, *[chunk[0]] * (size - len(chunk))],
        )
    msg_pks = list(dict.fromkeys(row[1] for row in rows))
    messages: dict[int, ClaimedMessage] = {}
    for chunk in _chunks(msg_pks):
        found = conn.execute(
            "SELECT pk, queue_id, sender, message_id, received_at, expires_at, content_class,"
            " is_dsn, client_ip, seg, seg_off, size, plain_lines, content FROM messages"
            f" WHERE pk IN ({_qmarks(len(chunk))})",
            chunk,
        )
        for pk, qid, sender, mid, recv, exp, cclass, dsn, ip, seg, off, size, plain, blob in found:
            content = read(seg, off, size) if seg is not None else blob or b""
            messages[pk] = ClaimedMessage(
                pk, qid, sender, mid, content, recv, exp, cclass, bool(dsn), client_ip=ip,
                plain_lines=plain == 1,
            )  # fmt: skip
    for rid, msg_pk, address, pool, priority, attempts in rows:
        messages[msg_pk].recipients.append(ClaimedRecipient(rid, address, pool, priority, attempts))
    return [messages[pk] for pk in msg_pks]


def record(conn: sqlite3.Connection, results: list[RecipientResult], now: float) -> None:
    """One INSERT of the results into ``temp.record_results`` per chunk of them: its
    trigger (:data:`WRITER_SETUP`) updates each recipient, marks its message final
    when that was its last recipient still to go, and drops the row. One statement
    (a GIL hand-over) per batch of results, not one per result and another per
    message; and no temporary b-trees, which a multi-row UPDATE (of a table with
    triggers, or with FROM, IN or RETURNING) opens in SQLite, each costing more than
    the rows it updates. Rows are taken in order: a rid twice ends as the last says."""
    for i in range(0, len(results), _IN_CHUNK):
        chunk = results[i : i + _IN_CHUNK]
        size = _bucket(len(chunk))
        sql = _RECORD_SQL.get(size)
        if sql is None:
            sql = _RECORD_SQL[size] = "INSERT INTO temp.record_results VALUES " + ",".join(
                [_RESULT_ROW] * size
            )
        params: list[object] = [now]
        for r in chunk:
            params += _record_params(r)
        params += _NO_ROW * (size - len(chunk))  # padding: a fixed set of statement texts
        conn.execute(sql, params)


# Of a ``messages`` row: not yet final, and none of its recipients still to go. The one
# rule both finalize() and the record trigger (WRITER_SETUP) mark a message final by.
_ALL_FINAL = (
    "final_at IS NULL AND NOT EXISTS"
    f" (SELECT 1 FROM recipients WHERE msg_pk = messages.pk AND state < {FINAL_FROM})"
)

# A result's columns, in the order of _record_params; ?1 is the time.
_RESULT_COLS = (
    "rid", "state", "count_attempt", "not_final", "next_attempt", "code", "enhanced",
    "response", "member",
)  # fmt: skip
_RESULT_ROW = f"(?1,{_qmarks(len(_RESULT_COLS))})"

# Run on the writer's connection once it is open (TEMP: this connection's own, never
# in the file). A BEFORE INSERT trigger that ends with RAISE(IGNORE) keeps its updates
# and drops the row it was given: the table stays empty.
WRITER_SETUP = (
    f"CREATE TEMP TABLE IF NOT EXISTS record_results (now REAL, {', '.join(_RESULT_COLS)})",
    "CREATE TEMP TRIGGER IF NOT EXISTS record_result BEFORE INSERT ON record_results BEGIN"
    " UPDATE recipients SET state = new.state, attempts = attempts + new.count_attempt,"
    " next_attempt = CASE WHEN new.not_final THEN new.next_attempt ELSE next_attempt END,"
    " last_code = COALESCE(new.code, last_code),"
    " last_enhanced = COALESCE(new.enhanced, last_enhanced),"
    " last_response = CASE WHEN new.response <> '' THEN new.response ELSE last_response END,"
    " member = CASE WHEN new.member <> '' THEN new.member ELSE member END,"
    " updated_at = new.now WHERE rid = new.rid;"  # no row: deleted while in flight
    " UPDATE messages SET final_at = new.now, content = NULL, seg = NULL"
    f" WHERE new.state >= {FINAL_FROM}"
    f" AND pk = (SELECT msg_pk FROM recipients WHERE rid = new.rid) AND {_ALL_FINAL};"
    " SELECT RAISE(IGNORE);"
    " END",
)


def _record_params(r: RecipientResult) -> tuple[object, ...]:
    return (r.rid, int(r.state), int(r.count_attempt), int(not r.state.is_final),
            r.next_attempt, r.code, r.enhanced_code, r.response, r.member)  # fmt: skip


def finalize(
    conn: sqlite3.Connection, msg_pks: list[int], now: float, *, release: bool = True
) -> None:
    """Mark final the messages whose recipients are now all final, releasing
    their content unless ``release`` is false (purge drops it later)."""
    for chunk in _chunks(msg_pks):
        size = _bucket(len(chunk))
        conn.execute(
            "UPDATE messages SET final_at = ?1, content = CASE WHEN ?2 THEN NULL ELSE content END,"
            " seg = CASE WHEN ?2 THEN NULL ELSE seg END"
            f" WHERE pk IN ({_qmarks(size)}) AND {_ALL_FINAL}",
            [now, int(release), *chunk, *[chunk[0]] * (size - len(chunk))],
        )


def expire(
    conn: sqlite3.Connection, now: float, limit: int, stamp: float
) -> list[ExpiredRecipient]:
    # CROSS JOIN pins the join order: walk live messages by expiry, not recipients.
    rows = conn.execute(
        "SELECT r.rid, r.msg_pk, m.queue_id, m.sender, r.address, m.message_id,"
        " r.last_code, r.last_enhanced, r.last_response, m.received_at, m.is_dsn"
        " FROM messages AS m CROSS JOIN recipients AS r ON r.msg_pk = m.pk"
        " WHERE m.final_at IS NULL AND m.expires_at <= ?"
        f" AND r.{READY} LIMIT ?",
        (now, limit),
    ).fetchall()
    if not rows:
        return []
    conn.executemany(
        "UPDATE recipients SET state=?, updated_at=? WHERE rid=?",
        [(int(RecipientState.EXPIRED), stamp, row[0]) for row in rows],
    )
    # The content stays until purge: the delay DSN quotes the original headers.
    finalize(conn, list(dict.fromkeys(row[1] for row in rows)), stamp, release=False)
    return [
        ExpiredRecipient(
            rid, pk, qid, sender, addr, mid, code, enhanced_code, resp, recv, bool(dsn)
        )
        for rid, pk, qid, sender, addr, mid, code, enhanced_code, resp, recv, dsn in rows
    ]


def retry_slice(
    conn: sqlite3.Connection, now: float, after: int, limit: int
) -> tuple[int, int, int]:
    """Make due now the next ``limit`` ready recipients after rid ``after``, in rid
    order: (recipients looked at, of those not due before, the last rid).

    Every ready recipient gets ``next_attempt = now``, the already due ones too: the
    claim then takes the backlog in rid (arrival) order, where consecutive recipients
    share table and index pages. Left at their old times, the due ones come out in
    ``next_attempt`` order, which the retry jitter has shuffled across a window of
    thousands of messages: each claim and record then touches a different page per
    recipient, and once the spool outgrows SQLite's page cache each of those is a read
    from the file (a deep drain slowest at its start). The rid cursor makes the pass
    linear: each row is looked at once, however many slices."""
    rows = conn.execute(
        f"SELECT rid, next_attempt > ? FROM recipients NOT INDEXED WHERE rid > ? AND {READY}"
        " ORDER BY rid LIMIT ?",
        (now, after, limit),
    ).fetchall()
    if not rows:
        return 0, 0, after
    for chunk in _chunks([rid for rid, _ in rows]):
        size = _bucket(len(chunk))
        conn.execute(
            "UPDATE recipients SET next_attempt=?, updated_at=?"
            f" WHERE rid IN ({_qmarks(size)}) AND next_attempt <> ?",
            [now, now, *chunk, *[chunk[0]] * (size - len(chunk)), now],
        )
    return len(rows), sum(due for _, due in rows), rows[-1][0]


def retry_one(conn: sqlite3.Connection, queue_id: str, now: float) -> int:
    cur = conn.execute(
        f"UPDATE recipients SET next_attempt=?, updated_at=? WHERE {READY}"
        " AND msg_pk = (SELECT pk FROM messages WHERE queue_id = ?)",
        (now, now, queue_id),
    )
    return cur.rowcount


def delete(conn: sqlite3.Connection, queue_id: str) -> bool:
    row = conn.execute("SELECT pk FROM messages WHERE queue_id=?", (queue_id,)).fetchone()
    conn.execute("DELETE FROM traces WHERE queue_id=?", (queue_id,))
    if row is None:
        return False
    conn.execute("DELETE FROM recipients WHERE msg_pk=?", row)
    conn.execute("DELETE FROM messages WHERE pk=?", row)
    return True


def purge(conn: sqlite3.Connection, older_than: float, limit: int) -> int:
    rows = conn.execute(
        "SELECT pk, queue_id FROM messages WHERE final_at IS NOT NULL AND final_at < ? LIMIT ?",
        (older_than, limit),
    ).fetchall()
    conn.executemany("DELETE FROM recipients WHERE msg_pk=?", [(pk,) for pk, _ in rows])
    conn.executemany("DELETE FROM traces WHERE queue_id=?", [(qid,) for _, qid in rows])
    conn.executemany("DELETE FROM messages WHERE pk=?", [(pk,) for pk, _ in rows])
    return len(rows)


# Objects other than JSON's types in a step's details are kept as their text (str()),
# which is what queue show prints of them. (TraceBook hands replies over as text: msgspec
# would encode a dataclass as an object, not call the hook.)
_TRACE_ENCODER = msgspec.json.Encoder(enc_hook=str)
# The step of a row that holds several steps of one message: details are
# [[ts, step, details], ...]. Steps of a message noted before the same commit (dispatch
# and attempt, mostly) share a row: fewer rows and index entries to write.
STEPS_ROW: Final = "*"


def insert_traces(conn: sqlite3.Connection, steps: list[tuple[str, float, str, Any]]) -> None:
    by_message: dict[str, list[tuple[float, str, Any]]] = {}
    for qid, ts, step, details in steps:
        entries = by_message.get(qid)
        if entries is None:
            by_message[qid] = [(ts, step, details)]
        else:
            entries.append((ts, step, details))
    encode = _TRACE_ENCODER.encode
    _insert_rows(
        conn,
        "traces",
        "queue_id, ts, step, details",
        [
            (qid, e[0][0], e[0][1], encode(e[0][2]).decode())
            if len(e) == 1
            else (qid, e[0][0], STEPS_ROW, encode(e).decode())
            for qid, e in by_message.items()
        ],
    )


# -- reads (on the reader's connection) --------------------------------------------


def _next_priority(conn: sqlite3.Connection, after: int) -> int | None:
    """The smallest priority above ``after`` with a ready recipient: one index seek."""
    row = conn.execute(
        f"SELECT priority FROM recipients INDEXED BY recipients_ready WHERE {READY}"
        " AND priority > ? ORDER BY priority LIMIT 1",
        (after,),
    ).fetchone()
    return None if row is None else int(row[0])


def next_due(conn: sqlite3.Connection) -> float | None:
    best: float | None = None
    prio = _next_priority(conn, _BELOW_ANY_PRIORITY)
    while prio is not None:
        due = conn.execute(
            "SELECT MIN(next_attempt) FROM recipients INDEXED BY recipients_ready"
            f" WHERE {READY} AND priority = ?",
            (prio,),
        ).fetchone()[0]
        best = due if best is None else min(best, due)
        prio = _next_priority(conn, prio)
    return best


def stats(conn: sqlite3.Connection) -> dict[str, int]:
    counts = dict(conn.execute("SELECT state, n FROM state_counts").fetchall())
    return {s.label: int(counts.get(int(s), 0)) for s in RecipientState}


def oldest_age(conn: sqlite3.Connection, now: float) -> dict[str, float]:
    # Message pks grow with arrival, so the smallest pk in a state is its oldest.
    ages: dict[str, float] = {}
    for s in NON_FINAL:
        row = conn.execute(
            "SELECT m.received_at FROM messages m WHERE m.pk ="
            " (SELECT MIN(msg_pk) FROM recipients WHERE state = ?)",
            (int(s),),
        ).fetchone()
        ages[s.label] = max(0.0, now - row[0]) if row else 0.0
    return ages


def list_views(
    conn: sqlite3.Connection, state: RecipientState | None, limit: int, offset: int
) -> list[MessageView]:
    params: tuple[int, ...]
    if state is None:
        sql, params = "SELECT pk FROM messages ORDER BY pk DESC LIMIT ? OFFSET ?", (limit, offset)
    else:
        sql = (
            "SELECT DISTINCT msg_pk FROM recipients WHERE state = ?"
            " ORDER BY msg_pk DESC LIMIT ? OFFSET ?"
        )
        params = (int(state), limit, offset)
    return _views(conn, [pk for (pk,) in conn.execute(sql, params)])


def get_view(conn: sqlite3.Connection, queue_id: str) -> MessageView | None:
    row = conn.execute("SELECT pk FROM messages WHERE queue_id=?", (queue_id,)).fetchone()
    if row is None:
        return None
    views = _views(conn, [row[0]])
    return views[0] if views else None


def _views(conn: sqlite3.Connection, pks: list[int]) -> list[MessageView]:
    views: dict[int, MessageView] = {}
    for chunk in _chunks(pks):
        marks = _qmarks(len(chunk))
        for pk, qid, sender, mid, size, recv, exp, cclass, dsn in conn.execute(
            f"SELECT {_MSG_COLS} FROM messages WHERE pk IN ({marks})", chunk
        ):
            views[pk] = MessageView(pk, qid, sender, mid, size, recv, exp, cclass, bool(dsn))
        for msg_pk, rid, address, st, *rest in conn.execute(
            f"SELECT msg_pk, {_RCPT_COLS} FROM recipients WHERE msg_pk IN ({marks}) ORDER BY rid",
            chunk,
        ):
            views[msg_pk].recipients.append(RecipientView(rid, address, RecipientState(st), *rest))
    return [views[pk] for pk in pks if pk in views]


def get_content(conn: sqlite3.Connection, queue_id: str, directory: Path) -> bytes | None:
    sql = "SELECT seg, seg_off, size, content FROM messages WHERE queue_id=?"
    row = conn.execute(sql, (queue_id,)).fetchone()
    while row is not None:
        seg, off, size, blob = row
        if seg is None:
            return None if blob is None else bytes(blob)
        try:
            return read_content(directory, seg, off, size)
        except SpoolError:
            # Compaction may have moved it (and removed the file) since the row was
            # read: look again, and fail only if the row still says the same.
            again = conn.execute(sql, (queue_id,)).fetchone()
            if again == row:
                raise
            row = again
    return None


def live_segments(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    """(segment id, live bytes) of every segment some message still uses."""
    return conn.execute("SELECT id, bytes FROM segments WHERE live > 0").fetchall()


def read_trace(conn: sqlite3.Connection, queue_id: str) -> list[TraceStep]:
    steps: list[TraceStep] = []
    for ts, step, details in conn.execute(
        "SELECT ts, step, details FROM traces WHERE queue_id=? ORDER BY rowid", (queue_id,)
    ):
        if step == STEPS_ROW:
            steps += [(ts, step, tuple(details)) for ts, step, details in json.loads(details)]
        else:
            steps.append((ts, step, tuple(json.loads(details))))
    return steps
