"""The delivery log: JSON Lines at ``data_dir/logs/delivery.jsonl``, rotated (SPEC §2.6).

One :class:`~smtplb.observability.record.DeliveryRecord` per event. Writes are
buffered and flushed at least every ``flush_interval`` seconds and on close,
so logging costs the hot path one timestamp and one list append; the buffer is
encoded in one call at flush. Rotation by size: ``delivery.jsonl.1`` … ``.N``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from smtplb.observability.record import DeliveryRecord

log = logging.getLogger("smtplb.delivery_log")

Listener = Callable[[DeliveryRecord], None]


class DeliveryLog:
    def __init__(
        self,
        path: Path,
        *,
        max_size: int = 100_000_000,
        keep: int = 5,
        flush_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
        rotates: bool = True,
    ) -> None:
        self.path = path
        # With several workers one of them rotates; the others follow the rename.
        self.rotates = rotates
        self.max_size = max_size
        self.keep = keep
        self.flush_interval = flush_interval
        self._clock = clock
        self._encoder = msgspec.json.Encoder()
        self._buffer: list[DeliveryRecord] = []
        self._last_flush = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")  # noqa: SIM115 - kept open for the log's lifetime
        self._size = self._file.tell()
        self.listeners: list[Listener] = []
        self.records = 0

    def write(self, record: DeliveryRecord) -> None:
        """Stamp ``record.ts``, buffer it and tell the listeners; it must not change after."""
        record.ts = round(self._clock(), 3)
        self._buffer.append(record)
        self.records += 1
        for listener in self.listeners:
            listener(record)
        if time.monotonic() - self._last_flush >= self.flush_interval or len(self._buffer) > 512:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        chunk = self._encoder.encode_lines(self._buffer)
        self._buffer.clear()
        if not self.rotates and self._rotated_away():
            self._file.close()
            self._file = open(self.path, "ab")  # noqa: SIM115
        try:
            self._file.write(chunk)  # O_APPEND: whole chunks from several workers never mix
            self._file.flush()
        except OSError as exc:
            # A full disk must not stop deliveries (their results still go to the spool):
            # what the file object holds is written by a later flush, once there is room.
            log.warning("delivery log %s: %s", self.path, exc)
            return
        self._size = os.fstat(self._file.fileno()).st_size
        if self.rotates and self._size >= self.max_size:
            self._rotate()

    def _rotated_away(self) -> bool:
        try:
            return os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            return True

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.keep > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        self.flush()
        self._file.close()

    def __repr__(self) -> str:
        return f"DeliveryLog({self.path}, {self.records} records, {len(self._buffer)} buffered)"
