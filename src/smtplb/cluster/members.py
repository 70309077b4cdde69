"""Operator actions on members seen by every node: a pause or a quarantine on one node
holds on all (a :class:`~smtplb.cluster.broadcast.Broadcast`, ``smtplb:members``:
field ``paused|NAME`` or ``quarantined|NAME``, value ``1`` or ``0``). The node's
worker 0, which serves the API, tells and follows; its peers follow it as before
(the paused-members file)."""

from __future__ import annotations

from collections.abc import Callable

from smtplb.cluster.broadcast import Broadcast
from smtplb.cluster.link import ClusterLink

FLAGS = ("paused", "quarantined")
Follow = Callable[[str, str, bool], None]  # (flag, member, on)


def encode(flag: str, member: str, on: bool) -> tuple[str, str]:
    return f"{flag}|{member}", "1" if on else "0"


def decode(field: str, value: str) -> tuple[str, str, bool]:
    flag, _, member = field.partition("|")
    if flag not in FLAGS or not member or value not in ("0", "1"):
        raise ValueError(f"not a member flag: {field!r} = {value!r}")
    return flag, member, value == "1"


class ClusterMembers:
    def __init__(self, link: ClusterLink, follow: Follow) -> None:
        self.follow = follow
        self.broadcast = Broadcast(link, "members", self._apply)

    def __repr__(self) -> str:
        return f"ClusterMembers({self.broadcast!r})"

    def start(self) -> None:
        self.broadcast.start()

    def tell(self, flag: str, member: str, on: bool) -> None:
        self.broadcast.tell(*encode(flag, member, on))

    def _apply(self, field: str, value: str) -> None:
        self.follow(*decode(field, value))
