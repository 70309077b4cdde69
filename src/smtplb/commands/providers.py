"""`smtplb providers`: per mailbox provider and member, limits, connections, rate and
suspensions, from a running node's API."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from smtplb.commands.common import api_client, api_options


@click.command()
@click.option("--json", "as_json", is_flag=True)
@api_options
def providers(
    as_json: bool, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Per mailbox provider and member: limits, connections, rate, suspensions."""
    data = api_client(api_url, api_key, config_path).call("GET", "/api/v1/providers")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"{'PROVIDER':<12}{'MEMBER':<16}{'ACTIVE':>7}{'CONC':>6}{'RATE/MIN':>10}"
        f"{'LIMITED':>9}  SUSPENDED"
    )
    for p in data["providers"]:
        limits = f"max_connections={p.get('max_connections')} rate={p.get('rate') or '-'}"
        held = p.get("suspended")
        line = f"{p['name']:<12}{'(all)':<16}{'':>7}{'':>6}{'':>10}{'':>9}  "
        click.echo(line + (_suspension(held) if held else limits))
        for m in p["members"]:
            rate = m.get("rate_per_minute")
            click.echo(
                f"{'':<12}{m['member']:<16}{m['active']:>7}{m['concurrency']:>6}"
                f"{'-' if rate is None else f'{rate:g}':>10}{m.get('rate_limited', 0):>9}  "
                f"{_suspension(m['suspended']) if m.get('suspended') else '-'}"
            )


def _suspension(held: dict[str, Any]) -> str:
    until = time.strftime("%H:%M:%S", time.localtime(held["until"]))
    return f"until {until} ({held.get('seconds_left', 0):.0f}s left) by rule {held['rule']}"
