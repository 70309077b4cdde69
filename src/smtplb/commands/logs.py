"""`smtplb logs analyze`: deliverability from delivery logs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click
import msgspec

from smtplb.observability.analyze import DIMENSIONS, Analyzer, render_table
from smtplb.observability.log_reader import chronological, read_lines
from smtplb.observability.record import DeliveryRecord
from smtplb.routing.providers import OTHER, ProviderTable


@click.group()
def logs() -> None:
    """Read delivery logs (smtplb's JSON Lines or Postfix's mail log)."""


def _provider_of(table: ProviderTable) -> Callable[[DeliveryRecord], str | None]:
    """A record's provider from its recipient domain, else its relay host's name
    (Postfix's ``relay=alt1.gmail-smtp-in.l.google.com[…]:25``), else ``other``."""

    def provider_of(record: DeliveryRecord) -> str | None:
        by_domain = table.by_domain(record.recipient_domain or "")
        if by_domain is not None:
            return by_domain
        host = (record.member or "").rpartition(":")[0] or record.member or ""
        return (table.by_mx([host]) if host else None) or OTHER

    return provider_of


@logs.command("analyze")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--by",
    default="",
    metavar="DIMS",
    help=f"Group by a comma list of: {', '.join(DIMENSIONS)}.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def logs_analyze(files: tuple[Path, ...], by: str, as_json: bool) -> None:
    """Deliverability, bounces, deferrals, complaints and latency from log FILES.

    Reads smtplb's delivery log and Postfix's mail log, auto-detected per line,
    rotated and gzip-compressed files included; - is standard input. Rotated
    siblings (log.2.gz, log.1, log) are read oldest first, whatever the order
    given. Rates: deliverability = delivered / final outcomes (delivered,
    bounced, expired); complaints per delivered; deferred% = recipients ever
    deferred / attempted. Latency is the upstream transaction, delay the time
    since receipt (Postfix: the last part of delays=, and delay=).
    """
    dims = [d.strip() for d in by.split(",") if d.strip()]
    try:
        analyzer = Analyzer(dims, provider_of=_provider_of(ProviderTable.build()))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--by") from None
    missing = [p for p in files if str(p) != "-" and not p.is_file()]
    if missing:
        for p in missing:
            what = "is not a file" if p.exists() else "no such file"
            click.echo(f"smtplb logs analyze: {p}: {what}", err=True)
        sys.exit(1)
    for path in chronological(list(files)):
        before = analyzer.lines
        try:
            if str(path) == "-":
                analyzer.feed_lines(read_lines(sys.stdin.buffer))
                continue
            with path.open("rb") as stream:
                analyzer.feed_lines(read_lines(stream))
        except PermissionError as exc:
            click.echo(f"smtplb logs analyze: {path}: {exc.strerror}", err=True)
            sys.exit(1)
        except (OSError, EOFError) as exc:  # truncated or corrupt gzip: keep what was read
            analyzer.skip(f"{path}: unreadable after line {analyzer.lines - before:,}: {exc}")
    report = analyzer.report()
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
    else:
        click.echo(render_table(report))
