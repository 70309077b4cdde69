"""The README's Layout section names every module of the package, and only modules that
exist: a newcomer reads the tree from it, so it may not drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "smtplb"
ENTRY = re.compile(r"^  (?P<name>[a-z_]+(?:/|\.py))")
MODULE = re.compile(r"\b([a-z_]+)\.py\b")


def layout_entries() -> dict[str, str]:
    """The Layout code block as {entry: its text}: a package (``spool/``) or a top-level
    module (``app.py``) at two spaces, with the lines indented under it."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        match = ENTRY.match(line)
        if match:
            current = match["name"]
            entries[current] = line
        elif current is not None and line.startswith("   "):
            entries[current] += "\n" + line
        elif line.strip() and not line.startswith("src/"):
            current = None
    return entries


def modules() -> set[tuple[str, str]]:
    """(package, module) for every module; package "" for the top level."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name in {"__init__.py", "__main__.py"}:
            continue
        rel = path.relative_to(PACKAGE)
        package = rel.parts[0] + "/" if len(rel.parts) > 1 else ""
        found.add((package, path.name))
    return found


def test_every_module_is_named_in_the_layout() -> None:
    entries = layout_entries()
    top_text = "\n".join(text for name, text in entries.items() if name.endswith(".py"))
    missing = []
    for package, module in sorted(modules()):
        named = MODULE.findall(entries.get(package, "") if package else top_text)
        if module.removesuffix(".py") not in named:
            missing.append(package + module)
    assert missing == [], f"README Layout does not name: {missing}"


def test_the_layout_names_no_module_that_does_not_exist() -> None:
    entries = layout_entries()
    existing = modules()
    stale = []
    for name, text in entries.items():
        package = name if name.endswith("/") else ""
        for module in MODULE.findall(text):
            if (package, module + ".py") not in existing:
                stale.append(package + module + ".py")
    assert stale == [], f"README Layout names modules that do not exist: {stale}"
