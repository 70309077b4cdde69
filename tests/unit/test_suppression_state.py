"""The embedded reputation state: the suppression list in the spool database."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from smtplb.reputation.embedded import SqliteState
from smtplb.reputation.state import Suppression, is_listed, normalize


def test_add_lookup_list_remove(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "spool.db")

    async def go() -> None:
        added = await state.suppress(
            [Suppression("<A@Example.org>", "550 5.1.1", "bounce", 1.0), Suppression("b@x.test")]
        )
        assert added == 2
        assert await state.suppress([Suppression("a@example.org", "again")]) == 0  # kept first
        assert state.is_suppressed("a@EXAMPLE.org") and not state.is_suppressed("c@x.test")
        assert await state.suppression_count() == 2
        (entry,) = await state.suppressions(address="A@example.org")
        assert entry == Suppression("a@example.org", "550 5.1.1", "bounce", 1.0)
        page = await state.suppressions(limit=1, offset=1)
        assert [e.address for e in page] == ["b@x.test"]
        assert await state.unsuppress(["A@example.org", "nobody@x.test"]) == 1
        assert not state.is_suppressed("a@example.org")

    asyncio.run(go())
    state.close()


def test_the_list_survives_a_reopen_and_is_shared_by_connections(tmp_path: Path) -> None:
    first = SqliteState(tmp_path / "spool.db")
    second = SqliteState(tmp_path / "spool.db")  # another worker on the same node
    asyncio.run(first.suppress([Suppression("x@example.org")]))
    assert second.is_suppressed("x@example.org")
    first.close()
    second.close()
    assert SqliteState(tmp_path / "spool.db").is_suppressed("X@example.org")


def test_an_empty_list_is_not_looked_up_yet_every_change_applies_at_once(
    tmp_path: Path,
) -> None:
    """While the list is empty a lookup is one PRAGMA data_version: it must still see
    an addition or a removal by this process or by another worker at the next lookup."""
    state = SqliteState(tmp_path / "spool.db")
    other = SqliteState(tmp_path / "spool.db")  # another worker on the same node
    for _ in range(3):
        assert not state.is_suppressed("x@example.org")
    assert state._empty_at is not None  # the shortcut is taken
    asyncio.run(other.suppress([Suppression("x@example.org")]))
    assert state.is_suppressed("x@example.org")
    assert not state.is_suppressed("y@example.org")
    assert state._empty_at is None  # not empty: every lookup reads the list
    asyncio.run(other.unsuppress(["x@example.org"]))
    assert not state.is_suppressed("x@example.org")
    asyncio.run(state.suppress([Suppression("z@example.org", domain="shop.test")]))
    assert state.is_suppressed("z@example.org", "shop.test")  # its own writer's commit
    assert not state.is_suppressed("z@example.org")
    asyncio.run(state.unsuppress(["z@example.org"], "shop.test"))
    assert not state.is_suppressed("z@example.org", "shop.test")
    state.close()  # a reopened reader's data_version says nothing of the old one's
    asyncio.run(other.suppress([Suppression("x@example.org")]))
    assert state.is_suppressed("x@example.org")
    state.close()
    other.close()


def test_a_lookup_in_a_million_entries_is_an_index_probe(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "spool.db")
    asyncio.run(state.suppress([Suppression(f"user{i}@example.org") for i in range(200_000)]))
    plan = state._reader.execute(
        "EXPLAIN QUERY PLAN SELECT 1 FROM suppression WHERE address = ? AND domain IN ('', ?)",
        ("x", ""),
    ).fetchall()
    assert "PRIMARY KEY" in str(plan) or "USING" in str(plan), plan
    started = time.perf_counter()
    hits = sum(state.is_suppressed(f"user{i * 7}@example.org") for i in range(10_000))
    per_lookup = (time.perf_counter() - started) / 10_000
    assert hits == 10_000
    assert per_lookup < 200e-6, f"{per_lookup * 1e6:.1f} us per lookup"
    state.close()


def test_normalize() -> None:
    assert normalize(" <Some.One@Example.ORG> ") == "some.one@example.org"


def test_an_unavailable_database_is_opened_at_the_next_use(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet" / "spool.db"  # as unopenable as a full disk
    state = SqliteState(missing)
    assert not state.is_suppressed("x@example.org")
    assert asyncio.run(state.load_book(0)) is None
    missing.parent.mkdir()
    asyncio.run(state.suppress([Suppression("x@example.org")]))
    assert state.is_suppressed("x@example.org")
    state.close()


def test_a_domain_entry_refuses_only_that_sender_domain(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "spool.db")

    async def go() -> None:
        entries = [
            Suppression("a@example.org", "complained", "complaint", 1.0, "Shop.TEST"),
            Suppression("a@example.org", "again", "complaint", 2.0, "news.test"),
            Suppression("b@example.org", "gone", "bounce", 3.0),
        ]
        assert await state.suppress(entries) == 3
        assert await state.suppress([Suppression("A@example.org", domain="shop.test")]) == 0
        assert state.is_suppressed("a@example.org", "shop.test")
        assert state.is_suppressed("a@example.org", "SHOP.test")
        assert not state.is_suppressed("a@example.org", "other.test")
        assert not state.is_suppressed("a@example.org")  # the null sender: global only
        assert state.is_suppressed("b@example.org", "anything.test")
        assert state.is_suppressed("b@example.org")
        assert await state.suppression_count() == 3
        assert await state.suppression_count(domain="") == 1
        assert await state.suppression_count(domain="shop.test") == 1
        listed = await state.suppressions(address="a@example.org")
        assert [e.domain for e in listed] == ["news.test", "shop.test"]
        assert listed[1] == Suppression(
            "a@example.org", "complained", "complaint", 1.0, "shop.test"
        )
        assert [e.address for e in await state.suppressions(domain="")] == ["b@example.org"]
        # Removing is per scope: the global remove leaves the domain entries.
        assert await state.unsuppress(["a@example.org"]) == 0
        assert await state.unsuppress(["a@example.org"], domain="shop.test") == 1
        assert not state.is_suppressed("a@example.org", "shop.test")
        assert state.is_suppressed("a@example.org", "news.test")

    asyncio.run(go())
    state.close()


def test_a_first_release_table_is_migrated_with_its_entries_global(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE suppression (address TEXT PRIMARY KEY, reason TEXT NOT NULL"
            " DEFAULT '', source TEXT NOT NULL DEFAULT 'operator', created_at REAL NOT NULL)"
            " WITHOUT ROWID"
        )
        conn.execute("INSERT INTO suppression VALUES ('old@example.org', 'r', 'bounce', 5.0)")
    conn.close()
    state = SqliteState(path)
    assert state.is_suppressed("old@example.org", "shop.test")
    (entry,) = asyncio.run(state.suppressions())
    assert entry == Suppression("old@example.org", "r", "bounce", 5.0, "")
    asyncio.run(state.suppress([Suppression("old@example.org", domain="shop.test")]))
    assert asyncio.run(state.suppression_count()) == 2
    state.close()
    with sqlite3.connect(path) as conn:  # gone from the spool's file
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'suppression'").fetchall()
    conn.close()
    assert SqliteState(path).is_suppressed("OLD@example.org")  # a second open: nothing to do


def test_the_list_has_a_file_of_its_own_and_a_scoped_spool_table_moves_there(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    with sqlite3.connect(path) as conn:  # as this release's first commit left it
        conn.execute(
            "CREATE TABLE suppression (address TEXT NOT NULL, domain TEXT NOT NULL DEFAULT '',"
            " reason TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT 'operator',"
            " created_at REAL NOT NULL, PRIMARY KEY (address, domain)) WITHOUT ROWID"
        )
        conn.execute("INSERT INTO suppression VALUES ('a@example.org', 'shop.test', '', 'x', 1)")
    conn.close()
    state = SqliteState(path)
    assert state.suppression_path == tmp_path / "suppression.db"
    assert state.is_suppressed("a@example.org", "shop.test")
    assert not state.is_suppressed("a@example.org", "other.test")
    asyncio.run(state.save_book(0, b"book"))
    assert asyncio.run(state.load_book(0)) == b"book"
    state.close()
    with sqlite3.connect(tmp_path / "suppression.db") as conn:
        assert conn.execute("SELECT address, domain FROM suppression").fetchall() == [
            ("a@example.org", "shop.test")
        ]
    conn.close()


def test_is_listed_decides_by_scope() -> None:
    assert is_listed(frozenset({""}), "")
    assert is_listed(frozenset({""}), "shop.test")
    assert is_listed(frozenset({"shop.test"}), "Shop.Test")
    assert not is_listed(frozenset({"shop.test"}), "")
    assert not is_listed(frozenset({"shop.test"}), "news.test")
    assert not is_listed(frozenset(), "shop.test")
