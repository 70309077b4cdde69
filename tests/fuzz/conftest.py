"""``make fuzz`` ends with a table: per target, the inputs tried and the crashes.
With ``SMTPLB_FUZZ_REPORT=FILE`` the same goes to FILE as Markdown (``make fuzz``
then puts it in the "Fuzz" section of bench/RESULTS.md)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import hypothesis
import pytest

from tests.fuzz.harness import FUZZ_EXAMPLES, FUZZING, TARGETS

_STARTED = time.monotonic()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FUZZING or not TARGETS:
        return
    write = terminalreporter.write_line
    write("")
    write(f"fuzzing: up to {FUZZ_EXAMPLES:,} examples per test")
    write(f"{'target':<34} {'inputs tried':>13} {'crashes':>8}")
    for t in TARGETS.values():
        write(f"{t.name:<34} {t.tried:>13,} {len(t.crashes):>8}")
    total = sum(t.tried for t in TARGETS.values())
    crashes = sum(len(t.crashes) for t in TARGETS.values())
    write(f"{'total':<34} {total:>13,} {crashes:>8}")
    for t in TARGETS.values():
        for crash in t.crashes.values():
            write(f"crash in {t.name}: {crash.error} at {crash.where} ({crash.count}x)")
            write(f"  shortest input: {crash.example}")
    report = os.environ.get("SMTPLB_FUZZ_REPORT")
    if report:
        Path(report).write_text(markdown(time.monotonic() - _STARTED))


def markdown(seconds: float) -> str:
    total = sum(t.tried for t in TARGETS.values())
    crashes = sum(len(t.crashes) for t in TARGETS.values())
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    lines = [
        "## Fuzz: the SMTP sessions and the config loader",
        "",
        f"`make fuzz FUZZ_EXAMPLES={FUZZ_EXAMPLES}` on {when} UTC, {seconds / 60:.1f} minutes;"
        f" Python {platform.python_version()}, hypothesis {hypothesis.__version__}."
        " The tests are in `tests/fuzz/` (what each feeds and which invariants it checks"
        " is in its docstring); `make test` runs the same tests with a few hundred"
        " examples each.",
        "",
        "| target | inputs tried | distinct crashes |",
        "|---|---:|---:|",
        *(f"| {t.name} | {t.tried:,} | {len(t.crashes)} |" for t in TARGETS.values()),
        f"| **total** | **{total:,}** | **{crashes}** |",
        "",
    ]
    for t in TARGETS.values():
        for crash in t.crashes.values():
            lines.append(
                f"- {t.name}: `{crash.error}` at `{crash.where}` ({crash.count}×);"
                f" shortest input `{crash.example}`"
            )
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if FUZZING and any(t.crashes for t in TARGETS.values()):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
