"""`smtplb warmup`: projected caps, and a replay of a delivery log against the schedule."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from smtplb.commands.common import CONFIG_OPTION, config_or_exit
from smtplb.observability.log_reader import parse_line, read_lines
from smtplb.observability.record import DeliveryRecord

if TYPE_CHECKING:
    from smtplb.reputation.warmup import Status, WarmupPolicy


@click.group()
def warmup() -> None:
    """IP warm-up: projected caps, and a replay of a delivery log against the schedule."""


@warmup.command("plan")
@click.argument("member")
@click.option("--provider", default=None, help="One provider (default: those with progress).")
@click.option("--days", type=int, default=None, help="Days to show (default: until warm).")
@CONFIG_OPTION
def warmup_plan(
    member: str, provider: str | None, days: int | None, config_path: Path | None
) -> None:
    """Projected caps of MEMBER by date, from its progress in data_dir, while rates stay clean."""
    from smtplb.reputation.warmup_gate import policy_of, warming_members
    from smtplb.reputation.warmup_store import SqliteWarmupState

    config = config_or_exit(config_path)
    starts = warming_members(config)
    if member not in starts:
        names = ", ".join(sorted(starts)) or "none"
        click.echo(
            f"smtplb warmup plan: {member!r} has no warmup = true (warming: {names})", err=True
        )
        sys.exit(1)
    policy = policy_of(config)
    path = Path(config.data_dir) / "warmup.sqlite"
    now = time.time()
    if config.cluster.redis is not None:  # the counts are the cluster's, in Redis
        statuses = _cluster_statuses(config.cluster.redis, policy, starts, member, now)
        for p in [provider] if provider else list(statuses) or ["other"]:
            status = statuses.get(p) or read_statuses_default(policy, starts, member, p, now)
            _print_plan(member, p, status.day, status.sent, policy, now, days)
        return
    # No counts yet (never run): plan from day 1 (or warmup_start), creating nothing.
    state = SqliteWarmupState(path if path.exists() else ":memory:", policy, starts)
    try:
        providers = [provider] if provider else state.providers(member) or ["other"]
        for p in providers:
            status = state.status(member, p, now)
            _print_plan(member, p, status.day, status.sent, policy, now, days)
    finally:
        state.close()


def _cluster_statuses(
    url: str, policy: WarmupPolicy, starts: dict[str, int | None], member: str, now: float
) -> dict[str, Status]:
    """Per provider, where ``member`` stands in the cluster's counts (read-only: no
    lease, no registration). A step not rolled yet today shows as stored."""
    import redis

    from smtplb.cluster.link import PREFIX
    from smtplb.reputation.warmup import Status, day_index, hour_index, initial_step

    client: Any = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
    try:
        out: dict[str, Status] = {}
        for provider in sorted(client.smembers(f"{PREFIX}warmup:{member}:providers")):
            base = f"{PREFIX}warmup:{member}:{provider}"
            raw = client.hget(f"{base}:progress", "step")
            today = day_index(now)
            step = int(raw) if raw is not None else initial_step(starts.get(member), today)
            sent = int(client.hget(f"{base}:day:{today}", "sent") or 0)
            hour = int(client.hget(f"{base}:hour:{hour_index(now)}", "sent") or 0)
            cap = policy.cap(step)
            hourly = None if cap is None else policy.hourly_cap(cap)
            out[provider] = Status(provider, step + 1, cap, sent, hourly, hour)
        return out
    finally:
        client.close()


def read_statuses_default(
    policy: WarmupPolicy, starts: dict[str, int | None], member: str, provider: str, now: float
) -> Status:
    """A provider the cluster has no counts for: day 1 (or from warmup_start)."""
    from smtplb.reputation.warmup import Status, day_index, initial_step

    step = initial_step(starts.get(member), day_index(now))
    cap = policy.cap(step)
    hourly = None if cap is None else policy.hourly_cap(cap)
    return Status(provider, step + 1, cap, 0, hourly, 0)


def _print_plan(
    member: str,
    provider: str,
    day_no: int,
    sent: int,
    policy: WarmupPolicy,
    now: float,
    days: int | None,
) -> None:
    from smtplb.reputation.warmup import day_index, plan
    from smtplb.reputation.warmup_gate import calendar_date

    click.echo(f"{member} × {provider}: today day {day_no}, sent {sent}")
    click.echo(f"  {'DATE':<12}{'DAY':>5}{'CAP':>9}{'PER HOUR':>10}")
    for day, n, cap in plan(policy, day_no - 1, day_index(now), days):
        per_hour = "-" if cap is None else str(policy.hourly_cap(cap))
        click.echo(
            f"  {calendar_date(day):<12}{n:>5}{'warm' if cap is None else cap:>9}{per_hour:>10}"
        )


@warmup.command("simulate")
@click.option("--log", "log_path", required=True, type=click.Path(path_type=Path))
@click.option("--member", "members", multiple=True, help="Only these members (repeatable).")
@CONFIG_OPTION
def warmup_simulate(log_path: Path, members: tuple[str, ...], config_path: Path | None) -> None:
    """Replay a delivery log as if each member had started warm-up at its first
    message: what the schedule would have let through, held back (overflowed
    to a warmed member or waited), and the day reached."""
    from smtplb.reputation.warmup import provider_of, simulate
    from smtplb.reputation.warmup_gate import policy_of

    config = config_or_exit(config_path)
    if not log_path.is_file():
        click.echo(f"smtplb warmup simulate: {log_path}: no such file", err=True)
        sys.exit(1)
    events = []
    with log_path.open("rb") as stream:
        for line in read_lines(stream):
            parsed = parse_line(line)[1]
            if (
                isinstance(parsed, DeliveryRecord)
                and parsed.event in ("delivered", "deferred", "bounced")
                and parsed.member
                and parsed.code
            ):
                provider = provider_of(parsed.recipient_domain or "", parsed.provider or "")
                events.append(
                    (parsed.ts, parsed.member, provider, parsed.event, parsed.code,
                     parsed.enhanced_code or "")
                )  # fmt: skip
    result = simulate(events, policy_of(config), members or None)
    click.echo(f"{len(events):,} attempts replayed from {log_path}")
    click.echo(f"{'MEMBER':<16}{'PROVIDER':<12}{'SENT':>8}{'HELD':>8}{'DAY':>6}")
    for key in sorted(set(result.sent) | set(result.held)):
        click.echo(
            f"{key[0]:<16}{key[1]:<12}{result.sent.get(key, 0):>8}{result.held.get(key, 0):>8}"
            f"{result.days.get(key, 1):>6}"
        )
    for d in result.decisions:
        click.echo(f"  {d.event:<20} {d.member} {d.text()}")
