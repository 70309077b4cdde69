from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_unattended_and_accounts_for_every_message() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "smtplb",
            "demo",
            "--duration",
            "12",
            "--rate",
            "30",
            "--http-port",
            "0",
            "--smtp-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "dashboard at http://127.0.0.1:" in out
    assert "upstream 'steady' killed" in out and "upstream 'steady' revived" in out
    assert "upstream 'slow' blocks us" in out and "member 'slow' quarantined" in out
    print(out[out.index("summary") :])
    match = re.search(r"accounted for: (\d+) of (\d+) sent  ✓", out)
    assert match and match.group(1) == match.group(2) and int(match.group(2)) > 200, out
    for member in ("steady", "flaky", "slow"):
        assert re.search(rf"{member}\s+\w+\s+delivered\s+[1-9]", out), out
    # The member in warm-up reached its day-1 cap for each provider it was given mail for
    # (gmail.test is recognised as Gmail, the rest is "other"); the excess overflowed, so it
    # delivered exactly the sum of its caps.
    assert re.search(r"fresh\s+warm-up other: day 1, 20 of 20 today", out), out
    sent = [int(n) for n in re.findall(r"fresh\s+warm-up \w+: day 1, (\d+) of 20 today", out)]
    delivered = re.search(r"fresh\s+\w+\s+delivered\s+(\d+)\s", out)
    assert delivered and int(delivered.group(1)) == sum(sent), out
