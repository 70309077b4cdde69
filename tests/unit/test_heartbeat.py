"""A node's heartbeat record and the cluster view built from the records (pure)."""

from __future__ import annotations

import socket

from smtplb.cluster.heartbeat import cluster_view, heartbeat, node_name

MEMBERS = [
    {"name": "a", "health": "up", "per_minute": 30},
    {"name": "b", "health": "down", "per_minute": 0},
    {"name": "c", "health": "up", "per_minute": None},
]


def record(node: str, ts: float, **extra: object) -> dict[str, object]:
    return {
        **heartbeat(
            node=node,
            smtp=["127.0.0.2:25"],
            http="127.0.0.2:8025",
            queue={"queued": 3, "deferred": 2, "delivered": 100, "in_flight": 1},
            members=MEMBERS,
            version="1.0",
            now=ts,
        ),
        **extra,
    }


def test_the_record_sums_what_waits_and_the_rate_and_counts_members_by_health() -> None:
    beat = record("node-a", 1000.0)
    assert beat["queue_depth"] == 6  # queued + in flight + deferred, not the finished
    assert beat["rate_per_minute"] == 30
    assert beat["health"] == {"down": 1, "up": 2}
    assert beat["members"] == 3 and beat["version"] == "1.0" and beat["ts"] == 1000.0


def test_the_view_lists_every_node_once_sorted_with_this_one_marked_and_fresh() -> None:
    me = record("node-b", 1010.0)
    stale_me = record("node-b", 1002.0)
    view = cluster_view(
        me, [record("node-c", 1009.0), stale_me, {"junk": 1}], redis_state="up", now=1010.5
    )
    assert view["node"] == "node-b" and view["redis"] == "up"
    assert [(n["node"], n["self"], n["age"]) for n in view["nodes"]] == [
        ("node-b", True, 0.5),
        ("node-c", False, 1.5),
    ]


def test_without_redis_the_view_is_this_node_alone() -> None:
    view = cluster_view(record("solo", 5.0), [], redis_state="off", now=5.0)
    assert [n["node"] for n in view["nodes"]] == ["solo"] and view["nodes"][0]["self"]


def test_the_node_name_defaults_to_the_host_name() -> None:
    assert node_name(None) == socket.gethostname()
    assert node_name("node-a") == "node-a"
