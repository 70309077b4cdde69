"""Pools and members built from the config, at start and at each reload.

A reload keeps a member that is still in the same pool (its connections,
health and counters live on, its settings change); a member new to the
config starts with a ramp (slow start). Operator pauses live in ``data_dir``
(:class:`PausedMembers`) so that they survive a restart and reach every worker.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from smtplb.balancing import make_strategy
from smtplb.balancing.health import ActiveHealth, PassiveHealth
from smtplb.clock import Clock
from smtplb.config import Config, MemberConfig, PoolConfig
from smtplb.delivery.connection import ConnectionSettings
from smtplb.delivery.member import Member
from smtplb.delivery.outcome import RetrySchedule
from smtplb.delivery.pool import PoolRuntime


class PausedMembers:
    """Operator pauses, kept in ``data_dir`` so that they survive a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> set[str]:
        try:
            return {ln.strip() for ln in self.path.read_text().splitlines() if ln.strip()}
        except FileNotFoundError:
            return set()

    def save(self, names: set[str]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{n}\n" for n in sorted(names)))
        tmp.replace(self.path)

    def set(self, name: str, paused: bool) -> None:
        names = self.load()
        (names.add if paused else names.discard)(name)
        self.save(names)

    def mtime(self) -> float:
        """When the list last changed (-1 when there is none): peers poll this."""
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return -1.0

    def __repr__(self) -> str:
        return f"PausedMembers({sorted(self.load())})"


def retry_schedule(config: Config) -> RetrySchedule:
    d = config.delivery
    return RetrySchedule(d.retry_base, d.retry_max, d.retry_jitter)


def connection_settings(config: Config, m: MemberConfig) -> ConnectionSettings:
    d = config.delivery
    return ConnectionSettings(
        ehlo_name=m.ehlo or config.hostname,
        tls=m.tls,  # type: ignore[arg-type]  # validated by config
        implicit_tls=m.implicit_tls,
        tls_verify=m.tls_verify,
        username=m.username,
        password=m.password,
        connect_timeout=d.connect_timeout,
        command_timeout=d.command_timeout,
        data_timeout=d.data_timeout,
    )


def build_pools(
    config: Config,
    existing: Mapping[str, Member],
    paused: set[str],
    workers: int,
    clock: Clock,
) -> dict[str, PoolRuntime]:
    """Every pool of ``config``; members in ``existing`` (by name) are reused.

    ``workers`` is the number of worker processes running (each member takes
    its share of ``max_connections``); a reload does not change it. ``clock``
    times the new members' health and slow start."""
    pools: dict[str, PoolRuntime] = {}
    for pc in config.pools:
        members = [_member(config, pc, mc, existing, paused, workers, clock) for mc in pc.members]
        pools[pc.name] = PoolRuntime(pc, members, make_strategy(pc))
    return pools


def _member(
    config: Config,
    pc: PoolConfig,
    mc: MemberConfig,
    existing: Mapping[str, Member],
    paused: set[str],
    workers: int,
    clock: Clock,
) -> Member:
    hc = config.health
    old = existing.get(mc.name)
    if old is not None and old.pool == pc.name:
        old.reconfigure(mc)
        old.settings = connection_settings(config, mc)
        old.health.fall = hc.fall
        old.slow_start = hc.slow_start
        return old
    health = PassiveHealth(
        fall=hc.fall, base_ejection=hc.base_ejection, max_ejection=hc.max_ejection
    )
    member = Member(
        mc,
        pc.name,
        connection_settings(config, mc),
        health,
        checks=ActiveHealth(rise=hc.rise, fall=hc.fall),
        paused=mc.name in paused,
        slow_start=hc.slow_start,
        workers=workers,
        clock=clock,
    )
    if existing:  # added by a reload, not present at start: ramp up
        member.start_ramp()
    return member


def all_members(pools: Mapping[str, PoolRuntime]) -> Iterator[Member]:
    for pool in pools.values():
        yield from pool.members
