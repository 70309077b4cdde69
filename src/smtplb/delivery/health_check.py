"""Active health checks: connect, 220 banner, EHLO, QUIT (HAProxy's smtpchk).

Relay members are checked at their upstream. Egress members are checked only
when they name a ``check_target`` (a bind+connect probe from their source IP).
The rise/fall decision is :class:`smtplb.balancing.health.ActiveHealth`, reached
through :meth:`Member.record_check`. Each path (target, source IP, EHLO name,
TLS: :func:`path_of`) is checked on its own schedule (:meth:`HealthChecker.interval`,
faster while a change of state is pending), timed by the injected clock, and
every member on that path gets the result: members relaying onto the same
upstream share its checks.

With several workers only worker 0 checks (one node's rate of checks at the
target, not N times it): it publishes :func:`verdicts` and the peers
:func:`follow` them (the file is :mod:`smtplb.workers`' business).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from smtplb.balancing.health import Transition
from smtplb.clock import Clock, SystemClock
from smtplb.config import HealthConfig
from smtplb.delivery.connection import ConnectError, ConnectionSettings, SmtpClientConnection
from smtplb.delivery.member import Member
from smtplb.units import parse_hostport

MemberEvent = Callable[[Member, str, str], None]
Probe = Callable[[Member, float], Awaitable[tuple[bool, str]]]


async def probe(member: Member, timeout: float) -> tuple[bool, str]:
    """One check. Returns (ok, reason)."""
    target = member.config.relay or member.config.check_target
    if target is None:
        return True, "no check target"
    host, port = parse_hostport(target)
    settings = ConnectionSettings(
        ehlo_name=member.settings.ehlo_name,
        tls="none",
        implicit_tls=member.config.implicit_tls,
        connect_timeout=timeout,
        command_timeout=timeout,
    )
    try:
        conn = await asyncio.wait_for(
            SmtpClientConnection.open(host, port, settings, source_ip=member.source_ip), timeout
        )
    except ConnectError as exc:
        return False, f"{exc.reason}: {exc}"
    except TimeoutError:
        return False, "timeout"
    except OSError as exc:
        return False, str(exc)
    await conn.quit()
    return True, "ok"


class HealthChecker:
    def __init__(
        self,
        config: HealthConfig,
        on_event: MemberEvent,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        check: Probe = probe,
    ) -> None:
        self.config = config
        self.on_event = on_event
        self.clock = clock if clock is not None else SystemClock()
        self._rng = rng if rng is not None else random.Random()
        self._check = check

    def interval(self, member: Member) -> float:
        base = float(self.config.interval)
        if member.checks.changing or not member.checks.up:
            base = max(base / 2, 0.2)  # check faster while a change of state is pending
        return base * self._rng.uniform(0.9, 1.1)

    async def run(self, members: Callable[[], Iterable[Member]]) -> None:
        """Check every path on its own schedule until cancelled: members that share
        one (:func:`path_of`) share its checks, so a pool of 150 members relaying
        onto 3 upstreams probes 3 times per interval, not 150."""
        tasks: dict[Path, tuple[tuple[int, ...], asyncio.Task[None]]] = {}
        try:
            while True:
                groups: dict[Path, list[Member]] = {}
                for m in members():
                    if checked(m):
                        groups.setdefault(path_of(m), []).append(m)
                for path, (ids, task) in list(tasks.items()):
                    group = groups.get(path)
                    if group is None or task.done() or tuple(map(id, group)) != ids:
                        task.cancel()
                        del tasks[path]
                for path, group in groups.items():
                    if path not in tasks:
                        task = asyncio.get_running_loop().create_task(self._loop(group))
                        tasks[path] = (tuple(map(id, group)), task)
                await self.clock.sleep(1.0)
        finally:
            for _, task in tasks.values():
                task.cancel()

    async def _loop(self, group: list[Member]) -> None:
        """Probe the path of ``group`` (members sharing it) and tell each the result."""
        while True:
            ok, reason = await self._check(group[0], self.config.timeout)
            now = self.clock.monotonic()
            for member in group:
                transition = member.record_check(ok, reason, now)
                if transition is not None:
                    self.on_event(member, transition.event, transition.reason)
            await self.clock.sleep(min(self.interval(m) for m in group))


# What a probe tests: the target, from which source IP, with which EHLO name and TLS.
Path = tuple[str | None, str | None, bool, str]


def path_of(member: Member) -> Path:
    """Members with the same path get the same answer to a probe (see :func:`probe`)."""
    c = member.config
    return (c.relay or c.check_target, member.source_ip, c.implicit_tls, member.settings.ehlo_name)


def checked(member: Member) -> bool:
    """Does this member get active checks (a relay, or an egress with a check target)?"""
    return member.config.relay is not None or member.config.check_target is not None


def verdicts(members: Iterable[Member]) -> dict[str, dict[str, Any]]:
    """The checker's verdict on each checked member, for the workers that do not check."""
    return {
        m.name: {"up": m.checks.up, "reason": m.checks.last_reason} for m in members if checked(m)
    }


def follow(member: Member, verdict: dict[str, Any], now: float) -> Transition | None:
    """Apply the node checker's verdict to this worker's copy of ``member``: the
    same effects as its own checks rising or falling (a member back up starts
    afresh and ramps up)."""
    transition = member.checks.adopt(bool(verdict["up"]), str(verdict.get("reason", "")))
    if transition is not None and transition.event == "member_up":
        member.health.reset(now)
        member.start_ramp(now)
    return transition
