"""Fuzzing with hypothesis, two ways (issue 10, "Fuzzing in the suite").

In ``make test`` each fuzz test runs a bounded number of examples (a few
seconds) and a failure fails the test the usual way, shrunk by hypothesis.
``make fuzz`` sets ``SMTPLB_FUZZ_EXAMPLES``: each test then runs that many
examples, and a crash — any exception the target may not raise, or a broken
invariant — is recorded and the run goes on, so one run finds every distinct
crash (by exception type and the line that raised it), each with the shortest
input seen. The end of the run prints, per target, the inputs tried and the
crashes found (``conftest.py``), and fails when there is any.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES = int(os.environ.get("SMTPLB_FUZZ_EXAMPLES", "0") or 0)
FUZZING = FUZZ_EXAMPLES > 0


def fuzz_settings(bounded: int) -> settings:
    """``bounded`` examples in ``make test``; ``SMTPLB_FUZZ_EXAMPLES`` in ``make fuzz``."""
    return settings(
        max_examples=FUZZ_EXAMPLES if FUZZING else bounded,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None if FUZZING else settings.default.database,
    )


@dataclass
class Crash:
    error: str  # "IndexError: list index out of range"
    where: str  # "src/smtplb/x.py:12 in f"
    example: str  # the shortest input that raised it (repr, cut at 600 characters)
    count: int = 1


@dataclass
class Target:
    name: str
    tried: int = 0
    crashes: dict[tuple[str, str], Crash] = field(default_factory=dict)

    def run(self, check: Callable[..., None], *args: Any) -> None:
        """``check(*args)``; in ``make fuzz`` a crash is recorded instead of raised."""
        self.tried += 1
        try:
            check(*args)
        except Exception as exc:
            if not FUZZING:
                raise
            self._record(exc, repr(args))

    def _record(self, exc: Exception, example: str) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        inside = [f for f in frames if "/smtplb/" in f.filename and "/tests/" not in f.filename]
        frame = (inside or frames)[-1]
        where = f"{_short(frame.filename)}:{frame.lineno} in {frame.name}"
        key = (type(exc).__name__, where)
        crash = self.crashes.get(key)
        if crash is None:
            error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            self.crashes[key] = Crash(error, where, example[:600])
        else:
            crash.count += 1
            if len(example) < len(crash.example):
                crash.example = example[:600]


def _short(path: str) -> str:
    for marker in ("/src/", "/tests/"):
        if marker in path:
            return marker[1:] + path.split(marker, 1)[1]
    return path


TARGETS: dict[str, Target] = {}


def target(name: str) -> Target:
    return TARGETS.setdefault(name, Target(name))
