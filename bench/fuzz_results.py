"""Put the report of ``make fuzz`` (a Markdown file) into the "Fuzz" section of
bench/RESULTS.md: ``python bench/fuzz_results.py REPORT.md``."""

from __future__ import annotations

import sys
from pathlib import Path

from harness import section_marker, update_results


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python bench/fuzz_results.py REPORT.md", file=sys.stderr)
        return 2
    path = Path(argv[0])
    if not path.is_file():
        print(f"fuzz_results: no report at {path} (did make fuzz run?)", file=sys.stderr)
        return 1
    update_results("fuzz", section_marker("fuzz") + "\n" + path.read_text())
    print("wrote bench/RESULTS.md (section Fuzz)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
