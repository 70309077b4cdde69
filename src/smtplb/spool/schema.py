"""The spool's SQLite schema, its pragmas, and opening a connection to it.

Tables: ``messages`` (one row per accepted message; ``content`` released when
every recipient is final), ``recipients`` (one row per recipient, with its
state and last reply), ``state_counts`` (recipient counts per state, kept by
triggers so that stats never scan) and ``traces`` (the steps ``queue show``
prints, one row per step).

Version 2 added ``traces``; version 3 moved new messages' content out of SQLite into
segment files (:mod:`~smtplb.spool.segments`): ``messages.seg``/``seg_off`` say where,
``segments`` counts each file's live messages. Rows written before keep their
``content`` in SQLite and are read from there. Version 4 counts each segment's live
bytes too and indexes messages by segment (compaction: moving the few live messages
of a mostly-dead segment, see :mod:`~smtplb.spool.segments`). Older files are
upgraded in place.

``messages.plain_lines`` (1: intake read the content as CRLF lines, none starting with
a dot, so delivery sends it without checking or stuffing it again) is added to a file
that lacks it without a version bump: an older smtplb names its columns and leaves it
NULL, which reads as "not known" (check and stuff), so going back a release still
opens the file.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from smtplb.model import RecipientState
from smtplb.spool.base import SpoolError

SCHEMA_VERSION = 4

QUEUED = int(RecipientState.QUEUED)
INFLIGHT = int(RecipientState.INFLIGHT)
FINAL_FROM = int(RecipientState.DELIVERED)  # states >= this are final
NON_FINAL = tuple(s for s in RecipientState if not s.is_final)

# ``state IN (0, 2)`` is spelled out literally wherever the ready index must be
# used: SQLite only picks a partial index when the query repeats its WHERE term.
READY = f"state IN ({int(RecipientState.QUEUED)}, {int(RecipientState.DEFERRED)})"

_ZERO_COUNTS = ", ".join(f"({int(s)}, 0)" for s in RecipientState)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS messages (
    pk INTEGER PRIMARY KEY,
    queue_id TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    message_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    client_ip TEXT NOT NULL,
    auth_user TEXT,
    content_class TEXT NOT NULL,
    is_dsn INTEGER NOT NULL,
    final_at REAL,          -- set (and content released) when every recipient is final
    seg INTEGER,            -- content in segment file seg at seg_off (size bytes); NULL when
    seg_off INTEGER,        -- released, or for rows from before version 3 (content below)
    plain_lines INTEGER,    -- 1: content known to be plain lines; NULL/0: not known
    content BLOB            -- last, so reading the other columns skips its overflow pages
);
CREATE INDEX IF NOT EXISTS messages_live_expiry ON messages(expires_at)
    WHERE final_at IS NULL;
CREATE INDEX IF NOT EXISTS messages_final ON messages(final_at)
    WHERE final_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS recipients (
    rid INTEGER PRIMARY KEY,
    msg_pk INTEGER NOT NULL,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    pool TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_code INTEGER,
    last_enhanced TEXT,
    last_response TEXT NOT NULL DEFAULT '',
    member TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS recipients_msg ON recipients(msg_pk);
CREATE INDEX IF NOT EXISTS recipients_state ON recipients(state, msg_pk);
CREATE INDEX IF NOT EXISTS recipients_ready ON recipients(priority, next_attempt)
    WHERE {READY};

CREATE TABLE IF NOT EXISTS state_counts (state INTEGER PRIMARY KEY, n INTEGER NOT NULL);
INSERT OR IGNORE INTO state_counts(state, n) VALUES {_ZERO_COUNTS};

CREATE TRIGGER IF NOT EXISTS recipients_count_ins AFTER INSERT ON recipients BEGIN
    UPDATE state_counts SET n = n + 1 WHERE state = new.state;
END;
CREATE TRIGGER IF NOT EXISTS recipients_count_del AFTER DELETE ON recipients BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = old.state;
END;
CREATE TRIGGER IF NOT EXISTS recipients_count_upd AFTER UPDATE OF state ON recipients
    WHEN old.state <> new.state BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = old.state;
    UPDATE state_counts SET n = n + 1 WHERE state = new.state;
END;

-- Keyed by queue id, not message pk: intake notes the route before the message
-- has a row. Details are JSON, in the order smtplb.observability.trace names them;
-- a row with step '*' holds several steps of one message: [[ts, step, details], ...].
CREATE TABLE IF NOT EXISTS traces (
    queue_id TEXT NOT NULL,
    ts REAL NOT NULL,
    step TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_queue_id ON traces(queue_id);

-- Live messages (and their bytes) per segment file: a file whose count falls to 0 is
-- removed. A row's seg changes when its content is released (to NULL) or moved by
-- compaction (to another segment): the old segment counts down, the new one up.
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    live INTEGER NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_seg ON messages(seg) WHERE seg IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS messages_seg_ins AFTER INSERT ON messages
    WHEN new.seg IS NOT NULL BEGIN
    INSERT INTO segments(id, live, bytes) VALUES (new.seg, 1, new.size)
        ON CONFLICT(id) DO UPDATE SET live = live + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS messages_seg_release AFTER UPDATE OF seg ON messages
    WHEN old.seg IS NOT NULL AND new.seg IS NOT old.seg BEGIN
    UPDATE segments SET live = live - 1, bytes = bytes - old.size WHERE id = old.seg;
END;
CREATE TRIGGER IF NOT EXISTS messages_seg_move AFTER UPDATE OF seg ON messages
    WHEN new.seg IS NOT NULL AND new.seg IS NOT old.seg BEGIN
    INSERT INTO segments(id, live, bytes) VALUES (new.seg, 1, new.size)
        ON CONFLICT(id) DO UPDATE SET live = live + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS messages_seg_del AFTER DELETE ON messages
    WHEN old.seg IS NOT NULL BEGIN
    UPDATE segments SET live = live - 1, bytes = bytes - old.size WHERE id = old.seg;
END;
"""

# Columns added since version 1 of ``messages`` (ALTER TABLE on upgrade).
_ADDED_COLUMNS = (("seg", "INTEGER"), ("seg_off", "INTEGER"), ("plain_lines", "INTEGER"))

# Speed without weakening durability: synchronous stays FULL (fsync per commit).
COMMON_PRAGMAS = (
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-32768",  # 32 MiB per connection
    "PRAGMA mmap_size=67108864",  # hot pages without syscalls; small, it counts in RSS
    "PRAGMA busy_timeout=10000",
)
# Small pages: every commit writes each page it touched to the WAL (and most are
# touched for one row or two of envelope data now that content is in segment files),
# so 1 KiB pages write a quarter of what 4 KiB ones would. Only a new file takes it.
PAGE_SIZE = 1024
WRITER_PRAGMAS = (
    f"PRAGMA page_size={PAGE_SIZE}",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    # Fewer, larger checkpoints: each one fsyncs the main file inside a commit.
    # When the disk runs low the writer checkpoints far sooner (see writer.py).
    "PRAGMA wal_autocheckpoint=4000",
    "PRAGMA journal_size_limit=67108864",
)


def create_file(path: Path) -> None:
    """Create an empty spool file with the spool's page size, unless there is one.

    Called when the spool is built, before anything else (the reputation state shares
    worker 0's file) can create it with SQLite's default page size. Errors are left
    for :func:`connect_writer` to report (a full disk must not stop a start)."""
    if path.exists():
        return
    with contextlib.suppress(sqlite3.Error, OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode=WAL")  # writes the header: the size sticks
        finally:
            conn.close()


def connect_writer(path: Path, *, now: float, recover: bool) -> sqlite3.Connection:
    """Open the writer's connection: WAL, schema created or upgraded, and crash
    recovery (whatever was in flight is delivered again: at-least-once).

    Raises ``sqlite3.Error`` (the disk may be full) or :class:`SpoolError`."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for pragma in (*WRITER_PRAGMAS, *COMMON_PRAGMAS):
            conn.execute(pragma)
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(f"spool {path}: cannot enable WAL (journal_mode={mode})")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SpoolError(
                f"spool {path} has schema version {version}, this smtplb knows"
                f" {SCHEMA_VERSION}: upgrade smtplb"
            )
        conn.execute("BEGIN IMMEDIATE")
        _add_columns(conn)
        _upgrade_segments(conn)
        # executescript() would COMMIT first; run statement by statement instead.
        for stmt in split_sql(SCHEMA):
            conn.execute(stmt)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        if recover:
            conn.execute(
                "UPDATE recipients SET state=?, next_attempt=?, updated_at=? WHERE state=?",
                (QUEUED, now, now, INFLIGHT),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


def _add_columns(conn: sqlite3.Connection) -> None:
    """Upgrade a ``messages`` table from before version 3, or without ``plain_lines``
    (none: a new file)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if have:
        for name, kind in _ADDED_COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE messages ADD COLUMN {name} {kind}")


def _upgrade_segments(conn: sqlite3.Connection) -> None:
    """Upgrade a ``segments`` table from version 3: count bytes, and replace the
    triggers (version 3's did not count a row moved to another segment)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(segments)")}
    if not have or "bytes" in have:
        return
    for trigger in ("messages_seg_ins", "messages_seg_release", "messages_seg_del"):
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    conn.execute("ALTER TABLE segments ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0")
    conn.executemany(
        "UPDATE segments SET bytes = ? WHERE id = ?",
        conn.execute(
            "SELECT sum(size), seg FROM messages WHERE seg IS NOT NULL GROUP BY seg"
        ).fetchall(),
    )


def connect_reader(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in (*COMMON_PRAGMAS, "PRAGMA query_only=ON"):
        conn.execute(pragma)
    return conn


def split_sql(script: str) -> list[str]:
    """Split a schema script into statements, keeping trigger bodies whole."""
    stmts: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--") and not buf:
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            stmts.append(buf.strip())
            buf = ""
    if buf.strip():
        stmts.append(buf.strip())
    return stmts
