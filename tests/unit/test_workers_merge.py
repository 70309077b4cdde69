"""Worker 0's node view from its peers' snapshots, and a peer following worker 0."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from smtplb.workers import PeerLink, merge_live, merge_members, set_drain_flag


def _member(name: str, **counts: Any) -> dict[str, Any]:
    return {"name": name, "health": "up", "max_connections": 5, "delivered": 0, **counts}


def test_member_counters_add_up_and_health_stays_worker_0s() -> None:
    mine = [_member("a", delivered=3, active=1), _member("b")]
    peer = {"members": [_member("a", delivered=4, active=2, health="ejected"), _member("zz")]}
    merged = merge_members(mine, [peer])
    a = next(m for m in merged if m["name"] == "a")
    assert (a["delivered"], a["active"], a["max_connections"], a["health"]) == (7, 3, 10, "up")
    assert [m["name"] for m in merged] == ["a", "b"]  # a member only a peer knows is left out


def test_live_data_adds_up_and_errors_end_newest_first() -> None:
    totals, series = {"delivered": 1}, {"delivered": [1, 2], "ts": 5}
    errors, waiting = [{"ts": 1}], {"main": 2}
    peer = {
        "totals": {"delivered": 2, "bounced": 1},
        "series": {"delivered": [10, 20], "short": [1]},
        "errors": [{"ts": 3}],
        "waiting": {"main": 1, "other": 4},
    }
    merge_live(totals, series, errors, waiting, [peer])
    assert totals == {"delivered": 3, "bounced": 1}
    assert series == {"delivered": [11, 22], "ts": 5}
    assert errors == [{"ts": 3}, {"ts": 1}]
    assert waiting == {"main": 3, "other": 4}


def test_a_peer_follows_drain_and_its_undo_and_pause_changes(tmp_path: Path) -> None:
    drains: list[bool] = []
    pause_changes: list[float] = []
    mtime = [-1.0]

    async def snapshot() -> dict[str, Any]:
        return {"worker": 1}

    link = PeerLink(
        tmp_path,
        1,
        snapshot=snapshot,
        paused_mtime=lambda: mtime[0],
        on_paused_change=lambda: pause_changes.append(mtime[0]),
        on_drain_change=drains.append,
    )

    async def steps() -> None:
        await link.step()  # first look: the pause list is read once
        set_drain_flag(tmp_path, True)
        await link.step()
        await link.step()  # no change, no call
        mtime[0] = 42.0
        set_drain_flag(tmp_path, False)
        await link.step()

    asyncio.run(steps())
    assert drains == [True, False]
    assert pause_changes == [-1.0, 42.0]
    assert (tmp_path / "run" / "worker-1.json").exists()


def test_the_node_shows_the_worst_reputation_any_worker_holds() -> None:
    from smtplb.workers import merge_members

    mine = [{"name": "a", "max_connections": 1, "reputation": {"state": "ok", "providers": {}}}]
    peer = {"state": "quarantined", "reason": "policy_block rate", "providers": {}}
    merged = merge_members(
        mine, [{"members": [{"name": "a", "max_connections": 1, "reputation": peer}]}]
    )
    assert merged[0]["reputation"] == peer


def test_a_peer_follows_worker_0s_health_verdicts_when_they_change(tmp_path: Path) -> None:
    from smtplb.workers import write_health

    seen: list[dict[str, Any]] = []

    async def snapshot() -> dict[str, Any]:
        return {"worker": 1}

    link = PeerLink(
        tmp_path,
        1,
        snapshot=snapshot,
        paused_mtime=lambda: 0.0,
        on_paused_change=lambda: None,
        on_drain_change=lambda _draining: None,
        on_health=seen.append,
    )

    async def steps() -> None:
        await link.step()  # nothing published yet
        write_health(tmp_path, {"a": {"up": False, "reason": "refused"}})
        await link.step()
        await link.step()  # unchanged file: not read again

    asyncio.run(steps())
    assert seen == [{"a": {"up": False, "reason": "refused"}}]
