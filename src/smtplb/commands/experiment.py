"""`smtplb experiment`: list, report, start and stop A/B experiments (SPEC §2.7)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from smtplb.commands.common import api_client, api_options


@click.group()
def experiment() -> None:
    """A/B experiments: report, start, stop (SPEC §2.7)."""


@experiment.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@api_options
def experiment_list(
    as_json: bool, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """List the configured experiments and their state."""
    data = api_client(api_url, api_key, config_path).call("GET", "/api/v1/experiments")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for e in data["experiments"]:
        variants = ", ".join(
            f"{v['name']} {v['share']:g}%" + (" (stopped)" if v["stopped"] else "")
            for v in e["variants"]
        )
        click.echo(f"{e['name']:<20} pool {e['pool']:<12} {e['state']:<8} {variants}")


@experiment.command("report")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@api_options
def experiment_report(
    name: str, as_json: bool, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Compare an experiment's variants: rates, times, p-values, verdicts."""
    from smtplb.experiments.render import render_text

    data = api_client(api_url, api_key, config_path).call("GET", f"/api/v1/experiments/{name}")
    click.echo(json.dumps(data, indent=2) if as_json else render_text(data))


@experiment.command("start")
@click.argument("name")
@api_options
def experiment_start(
    name: str, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Start (or restart) an experiment; its counts so far are kept."""
    api_client(api_url, api_key, config_path).call("POST", f"/api/v1/experiments/{name}/start")
    click.echo(f"experiment {name} running")


@experiment.command("stop")
@click.argument("name")
@api_options
def experiment_stop(
    name: str, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Stop an experiment; its report stays available."""
    api_client(api_url, api_key, config_path).call("POST", f"/api/v1/experiments/{name}/stop")
    click.echo(f"experiment {name} stopped")
