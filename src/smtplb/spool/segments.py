"""Message content in append-only segment files, beside the SQLite spool.

Why: content that goes through SQLite is written twice (to the WAL, then again to
the database at checkpoint), a 50 KB message ≈ 2.9× its size in disk writes. Here
each byte is written once: appended to the current segment file, which is
fdatasync'ed in the same group commit as the metadata transaction, *before* its
COMMIT (see :class:`~smtplb.spool.writer.GroupWriter`), so a row that says
"content at segment S, offset O" is never durable before the bytes it points to.

Life of a segment
-----------------
* ``<spool>-segments/<id>.seg``; ids grow and are never reused. Only the current
  segment is appended to; it is replaced by a new one when it reaches
  ``segment_max`` bytes (a small size while the disk is low), after a write error
  (what an failed fsync left in the page cache is not trusted), and when every
  message it holds is done.
* The ``segments`` table counts each segment's live messages and their bytes
  (triggers on ``messages``: a row with ``seg`` set counts until ``seg`` is cleared,
  when its content is released, or changed, when compaction moves it, or until the
  row is deleted). A segment whose count is 0 is unlinked (the current one is
  replaced first); its row goes with the next commit. The writer looks for such
  segments before a COMMIT when a TEMP trigger of its connection saw a count fall to
  0 in the transaction, and every ``_SCAN_EVERY`` commits for what other processes
  emptied.
* On open, files that no live row points to are removed (bytes of a batch that
  never committed, or a segment whose unlink a crash interrupted).

Compaction
----------
A segment goes only when *all* its messages are done, so one message deferred for days
would keep its whole segment on disk. Every ``interval`` seconds the spool looks at
the segments (``segments.bytes`` counts each one's live bytes) and
:func:`plan_compaction` picks those mostly dead (live bytes at most
``max_live_fraction`` of the file) and sealed for at least ``min_age`` (younger ones
are left to empty themselves as their mail is delivered; the age runs on the injected
clock from the first pass that sees the segment sealed, so after a restart every
segment waits ``min_age`` again). :meth:`SegmentStore.compact`
then copies their live messages' content into the current segment, in the writer's
ordinary transaction: appended, fdatasync'ed before COMMIT, and the rows pointed at
the new segment/offset in the same transaction. The triggers count the old segment
down to 0 and it is unlinked after the commit, like any segment whose mail is done.
A crash before COMMIT leaves the rows pointing at the old (intact) bytes and the
copies unreferenced (dead bytes in a segment that a later pass compacts, or a file
removed at open). At most ``max_copy`` bytes are copied per pass, ``step`` bytes
per transaction, so intake is never held up for long.

Messages in flight are moved too: a claim reads the content into memory, so delivery
never reads a segment afterwards. Reads by other threads (``get_content``) that find
the file gone look the row up again (see :func:`smtplb.spool.queries.get_content`).

Appends are not written at once: a transaction's content is queued and written with
one ``pwritev`` just before the fdatasync (:meth:`SegmentStore.sync`), one system call
(and one hand-over of the GIL) per batch instead of one per message. A rolled-back
transaction's queued bytes are simply dropped. Reads are ``os.pread`` on a file
descriptor (the writer thread keeps a few open; other threads open and close per
read); a read in the writer's transaction of bytes still queued writes them first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from smtplb.spool.base import SpoolError

SEGMENT_MAX = 64 << 20  # bytes: a segment is replaced once it holds this much
LOW_SPACE_SEGMENT_MAX = 1 << 20  # while the disk is low: give space back sooner
_READ_FDS = 16  # segment files the writer thread keeps open for reading
_PAGE = 4096  # each batch's content starts at a multiple of this
_IOV_MAX = 1024  # buffers per pwritev (Linux's IOV_MAX)
_SCAN_EVERY = 64  # commits between looks for segments other processes emptied
_EMPTIED_FN = "smtplb_segment_emptied"  # called by the writer connection's TEMP trigger


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    """Which segments are compacted, and how much copying one pass may do."""

    max_live_fraction: float = 0.25  # live bytes at most this share of the file
    min_age: float = 300.0  # seconds since the segment stopped being appended to
    max_copy: int = 16 << 20  # bytes copied per pass ...
    step: int = 2 << 20  # ... in transactions of about this many
    interval: float = 30.0  # seconds between passes


@dataclass(frozen=True, slots=True)
class SegmentUse:
    seg: int
    size: int  # bytes in the file
    live_bytes: int  # content of the messages that still use it
    sealed_for: float  # seconds since it stopped being appended to


@dataclass(frozen=True, slots=True)
class Compacted:
    """What one transaction of compaction did to one segment."""

    seg: int
    messages: int  # moved to the current segment
    copied: int  # their bytes
    size: int  # bytes in the file
    done: bool  # no message uses it any more: it is removed after the commit


def plan_compaction(uses: Iterable[SegmentUse], policy: CompactionPolicy) -> list[int]:
    """The segments to compact in this pass, those whose copying frees the most per
    byte copied first, as many as ``max_copy`` bytes of copying allow. The first one is
    always taken: one with more live bytes than a pass copies is done over several."""
    eligible = sorted(
        (
            u
            for u in uses
            if u.size > 0
            and u.sealed_for >= policy.min_age
            and u.live_bytes <= policy.max_live_fraction * u.size
        ),
        key=lambda u: (u.live_bytes / u.size, u.seg),
    )
    picked: list[int] = []
    total = 0
    for u in eligible:
        if picked and total + u.live_bytes > policy.max_copy:
            break
        picked.append(u.seg)
        total += u.live_bytes
    return picked


def file_sizes(directory: Path, segs: Iterable[int]) -> dict[int, int]:
    """Sizes of these segments' files (those that exist)."""
    sizes: dict[int, int] = {}
    for seg in segs:
        with contextlib.suppress(OSError):
            sizes[seg] = _file(directory, seg).stat().st_size
    return sizes


def segments_dir(db_path: Path) -> Path:
    return Path(f"{db_path}-segments")


def _file(directory: Path, seg: int) -> Path:
    return directory / f"{seg:010d}.seg"


def _seg_id(name: str) -> int | None:
    stem, dot, ext = name.partition(".")
    return int(stem) if dot and ext == "seg" and stem.isdigit() else None


def read_content(directory: Path, seg: int, offset: int, size: int) -> bytes:
    """Content of one message, for threads other than the writer's."""
    try:
        fd = os.open(_file(directory, seg), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SpoolError(f"spool content missing: segment {seg}: {exc}") from exc
    try:
        return _pread(fd, seg, offset, size)
    finally:
        os.close(fd)


def _pread(fd: int, seg: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise SpoolError(
            f"spool content truncated: segment {seg} offset {offset}: {len(data)} of {size} bytes"
        )
    return data


class SegmentStore:
    """The writer thread's side: append, sync before commit, rewind, reclaim, read."""

    def __init__(
        self, directory: Path, *, segment_max: int = SEGMENT_MAX, owner: bool = True
    ) -> None:
        self.directory = directory
        # False in a process that only looks at another's spool (the API worker's view
        # of a peer's shard): it never removes a file, the owner does.
        self.owner = owner
        self.segment_max = segment_max
        self.low = False  # the disk is low: segments are replaced at a small size
        self.current = 0  # id of the segment being appended to (0: none yet)
        self.reclaimed = 0  # segment files removed
        self._next_id = 1
        self._fd: int | None = None  # current segment, for appending
        self._size = 0  # bytes in the current segment
        self._dirty: dict[int, int] = {}  # segment id -> fd, written since the last sync
        self._new_file = False  # a file was created since the last sync: sync the directory
        self._mark: tuple[int, int] | None = None  # (segment, size) when the batch began
        self._queued: list[bytes] = []  # appended to the current segment, not written yet
        self._queued_at = 0  # ... from this offset on
        self._readers: OrderedDict[int, int] = OrderedDict()  # segment id -> read fd
        self._gone: list[int] = []  # unlinked; their rows are deleted with the next commit
        self._done: list[int] = []  # no live message once this transaction commits
        # A segment's count fell to 0 in this transaction (told by a trigger of the
        # writer's connection): sync() must look for segments that are done. Without
        # it sync() looks only every _SCAN_EVERY commits, for what other processes did.
        self._emptied = False
        self._unscanned = 0  # commits since sync() last looked

    # -- opening ------------------------------------------------------------------------

    def open(self, conn: sqlite3.Connection) -> None:
        """Remove what no live message points to; the next append starts a new segment."""
        if not self.owner:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # TEMP: on this connection only (with its function), not in the file, so that
        # no other connection's write to ``segments`` calls a function it lacks.
        conn.create_function(_EMPTIED_FN, 1, self._note_emptied)
        conn.execute(
            f"CREATE TEMP TRIGGER IF NOT EXISTS segment_emptied AFTER UPDATE OF live"
            f" ON main.segments WHEN new.live <= 0 BEGIN SELECT {_EMPTIED_FN}(new.id); END"
        )
        conn.execute("DELETE FROM segments WHERE live <= 0")
        live = {seg for (seg,) in conn.execute("SELECT id FROM segments")}
        highest = max(live, default=0)
        for entry in os.scandir(self.directory):
            seg = _seg_id(entry.name)
            if seg is None:
                continue
            highest = max(highest, seg)
            if seg not in live:
                Path(entry.path).unlink(missing_ok=True)
        self._next_id = highest + 1

    def _note_emptied(self, seg: int) -> None:
        self._emptied = True

    def close(self) -> None:
        for fd in {*self._dirty.values(), *self._readers.values()}:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._fd is not None and self._fd not in self._dirty.values():
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._dirty.clear()
        self._readers.clear()

    # -- the writer's transaction ---------------------------------------------------------

    def begin(self) -> None:
        self._mark = (self.current, self._size) if self._fd is not None else None

    def append(self, data: bytes) -> tuple[int, int]:
        """Queue ``data`` for the current segment; (segment id, offset). Written by
        :meth:`sync` (durable once it returns). Raises OSError (a full disk: ENOSPC) when
        a new segment cannot be created."""
        if not self.owner:
            raise SpoolError(f"spool {self.directory}: stored to by its owner only")
        limit = LOW_SPACE_SEGMENT_MAX if self.low else self.segment_max
        if self._fd is None or self._size >= limit:
            self._write_queued()  # what the old segment holds goes there
            self._rotate()
        assert self._fd is not None
        offset = self._size
        if not self._queued:
            self._queued_at = offset
        self._queued.append(data)
        self._size += len(data)
        self._dirty[self.current] = self._fd
        return self.current, offset

    def _write_queued(self) -> None:
        """Write the queued appends (one pwritev per ``_IOV_MAX`` of them). On an error
        the file is truncated back to where they began, and the transaction fails."""
        if not self._queued:
            return
        assert self._fd is not None
        queued, self._queued = self._queued, []
        at = start = self._queued_at
        try:
            for i in range(0, len(queued), _IOV_MAX):
                at = self._pwritev([*queued[i : i + _IOV_MAX]], at)
        except OSError:
            self._truncate(start)
            raise

    def _pwritev(self, views: list[bytes | memoryview], at: int) -> int:
        assert self._fd is not None
        while views:
            n = os.pwritev(self._fd, views, at)
            if n <= 0:
                raise OSError(errno.ENOSPC, "no bytes written")
            at += n
            while views and n >= len(views[0]):  # drop what was written whole
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = memoryview(views[0])[n:]
        return at

    def sync(self, conn: sqlite3.Connection) -> None:
        """Make this batch's content durable; called just before COMMIT."""
        if self._gone:
            gone, self._gone = self._gone, []
            conn.executemany(
                "DELETE FROM segments WHERE id = ? AND live <= 0", [(s,) for s in gone]
            )
        # Which segments this transaction leaves with no live message: asked here, in
        # the transaction, rather than after COMMIT in a read transaction of its own.
        # Unlinked by reclaim() once the COMMIT has made that so. Asked only when a
        # count fell to 0 in this transaction (most commits: none did, and the query
        # would be one more statement, a GIL hand-over, per commit), and every
        # _SCAN_EVERY commits for counts that other processes' writes (the API
        # worker deleting from this shard) brought to 0.
        self._unscanned += 1
        if self.owner and (self._emptied or self._unscanned >= _SCAN_EVERY):
            self._emptied, self._unscanned = False, 0
            self._done = [
                seg
                for (seg,) in conn.execute("SELECT id FROM segments WHERE live <= 0").fetchall()
                if seg not in self._gone
            ]
        else:
            self._done = []
        appended = self.current in self._dirty
        self._write_queued()
        try:
            for fd in self._dirty.values():
                os.fdatasync(fd)
            if self._new_file:
                dirfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dirfd)
                finally:
                    os.close(dirfd)
                self._new_file = False
        except OSError:
            self._abandon()  # never append again to what the failed sync left behind
            self._release_dirty()
            raise
        self._release_dirty()
        self._mark = None  # synced: a failed COMMIT may still have made its rows durable
        if appended:
            # The next batch starts on a fresh page: rewriting the tail page this one
            # left part-filled would write (and count) that page twice. A hole of
            # ~2 KiB per commit on average, never written.
            self._size = -(-self._size // _PAGE) * _PAGE

    def rollback(self) -> None:
        """The transaction was rolled back: drop what it appended (when it can)."""
        self._done = []
        if self._queued:  # never written: the next append reuses their offsets
            self._queued = []
            self._size = self._queued_at
        if self._mark is not None and self._mark[0] == self.current:
            self._truncate(self._mark[1])

    # -- reading (writer thread) --------------------------------------------------------------

    def read(self, seg: int, offset: int, size: int) -> bytes:
        if seg == self.current and self._queued and offset + size > self._queued_at:
            self._write_queued()  # stored earlier in this transaction (and claimed now)
        fd = self._readers.get(seg)
        if fd is None:
            try:
                fd = os.open(_file(self.directory, seg), os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise SpoolError(f"spool content missing: segment {seg}: {exc}") from exc
            self._readers[seg] = fd
            while len(self._readers) > _READ_FDS:
                os.close(self._readers.popitem(last=False)[1])
        else:
            self._readers.move_to_end(seg)
        return _pread(fd, seg, offset, size)

    # -- compacting ------------------------------------------------------------------------

    def compact(self, conn: sqlite3.Connection, segs: list[int], budget: int) -> list[Compacted]:
        """In the writer's transaction: copy the live content of ``segs`` (in that
        order) to the current segment and point the rows there, until ``budget``
        bytes are copied (one message at least). What was done, per segment."""
        if not self.owner:
            return []
        done: list[Compacted] = []
        copied_total = 0
        for seg in segs:
            if seg == self.current:  # appended to since the plan: not now
                continue
            rows = conn.execute(
                "SELECT pk, seg_off, size FROM messages WHERE seg = ? ORDER BY seg_off", (seg,)
            ).fetchall()
            if not rows:  # nothing points to it: let it go
                conn.execute("UPDATE segments SET live = 0, bytes = 0 WHERE id = ?", (seg,))
            moved = copied = 0
            for pk, offset, size in rows:
                if copied_total and copied_total + size > budget:
                    break
                new_seg, new_offset = self.append(self.read(seg, offset, size))
                conn.execute(
                    "UPDATE messages SET seg = ?, seg_off = ? WHERE pk = ?",
                    (new_seg, new_offset, pk),
                )
                moved += 1
                copied += size
                copied_total += size
            sizes = file_sizes(self.directory, [seg])
            done.append(Compacted(seg, moved, copied, sizes.get(seg, 0), moved == len(rows)))
            if moved < len(rows):
                break
        return done

    # -- reclaiming -----------------------------------------------------------------------

    def reclaim(self, conn: sqlite3.Connection) -> int:
        """After a commit: unlink every segment whose messages are all done (the
        current one too: it is replaced), as :meth:`sync` found them. How many."""
        done, self._done = self._done, []
        try:
            for seg in done:
                if seg == self.current:
                    self._abandon()
                fd = self._readers.pop(seg, None)
                if fd is not None:
                    os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    _file(self.directory, seg).unlink()
                self._gone.append(seg)
                self.reclaimed += 1
        except BaseException:
            self._emptied = True  # what is left is looked for again with the next commit
            raise
        return len(done)

    # -- internals ----------------------------------------------------------------------------

    def _rotate(self) -> None:
        self._abandon()
        seg = self._next_id
        self._next_id += 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._fd = os.open(_file(self.directory, seg), flags, 0o600)
        self.current, self._size, self._new_file = seg, 0, True

    def _abandon(self) -> None:
        """Stop appending to the current segment (it is kept while messages use it)."""
        if self._fd is not None and self.current not in self._dirty:
            os.close(self._fd)
        self._fd, self.current, self._size, self._mark = None, 0, 0, None

    def _release_dirty(self) -> None:
        for fd in self._dirty.values():
            if fd != self._fd:
                os.close(fd)
        self._dirty.clear()

    def _truncate(self, size: int) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, size)
            self._size = size
        except OSError:
            self._abandon()
