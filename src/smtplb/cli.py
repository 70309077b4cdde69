"""The ``smtplb`` command (SPEC §3.1). Commands that talk to a running service
use its HTTP API (``--api URL``, default from the config's ``[http] listen``)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import smtplib
import sys
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import click

from smtplb.commands.admin import drain, members, queue, suppress
from smtplb.commands.common import CONFIG_OPTION, config_or_exit
from smtplb.commands.experiment import experiment
from smtplb.commands.logs import logs
from smtplb.commands.providers import providers
from smtplb.commands.warmup import warmup
from smtplb.mailauth.commands import auth, dkim
from smtplb.units import parse_hostport


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="smtplb")
def main() -> None:
    """smtplb: an outbound SMTP load balancer and smart relay."""


@main.command()
@CONFIG_OPTION
@click.option("--worker", type=int, default=None, hidden=True, help="Run as worker N.")
def run(config_path: Path | None, worker: int | None) -> None:
    """Run the service in the foreground (SIGTERM drains, SIGHUP reloads)."""
    from smtplb.app import build_service
    from smtplb.workers import Supervisor, set_drain_flag

    config = config_or_exit(
        config_path, warn=worker is None, keys=True
    )  # the supervisor warns once
    logging.basicConfig(
        level=getattr(logging, config.log.level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    resolved = config_path or (Path("smtplb.toml") if Path("smtplb.toml").is_file() else None)
    if config.workers > 1 and worker is None:
        set_drain_flag(Path(config.data_dir), False)  # a new run takes mail
        sys.exit(Supervisor(resolved, config.workers).run())
    _install_uvloop()
    service = build_service(config, resolved, worker or 0)
    _tune_gc()
    try:
        asyncio.run(service.run_forever())
    except OSError as exc:
        click.echo(f"smtplb: cannot start: {exc}", err=True)
        sys.exit(1)


def _tune_gc() -> None:
    """Each message makes many short-lived objects and almost no reference cycles:
    run the cyclic collector's young generation less often, and never rescan the
    long-lived objects built at start (config, modules, metrics)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _install_uvloop() -> None:
    if os.environ.get("SMTPLB_NO_UVLOOP"):
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@main.command()
@CONFIG_OPTION
def check(config_path: Path | None) -> None:
    """Validate a config: exit 0 when usable, else 1 naming each key and problem."""
    config = config_or_exit(config_path, keys=True)
    pools = ", ".join(f"{p.name} ({p.strategy}, {len(p.members)} members)" for p in config.pools)
    dkim_domains = len({d.domain for d in config.dkim})
    click.echo(
        f"config ok: pools {pools}; {len(config.routes)} routes; "
        f"DKIM: {len(config.dkim)} keys for {dkim_domains} domains"
    )


@main.command()
@click.option("--from", "sender", required=True, help='Envelope sender ("" for <>).')
@click.option("--to", "recipients", required=True, multiple=True, help="Recipient (repeatable).")
@click.option("--subject", default="Test message from smtplb")
@click.option("--body", default=None, help="Body text.")
@click.option(
    "--file",
    "eml",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A whole RFC 5322 message to send instead of --subject/--body.",
)
@click.option("--server", default=None, help="HOST:PORT (default: the config's first listener).")
@CONFIG_OPTION
def send(
    sender: str,
    recipients: tuple[str, ...],
    subject: str,
    body: str | None,
    eml: Path | None,
    server: str | None,
    config_path: Path | None,
) -> None:
    """Submit a message over SMTP."""
    if server is None:
        server = config_or_exit(config_path).smtp.listen[0]
    host, port = parse_hostport(server)
    if eml is not None:
        raw = eml.read_bytes()
        data = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    else:
        msg = EmailMessage()
        msg["From"] = sender or "MAILER-DAEMON"
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = subject
        msg.set_content(body if body is not None else "Sent with smtplb send.\n")
        data = msg.as_bytes(policy=SMTP)  # CRLF line ends, as SMTP requires
    try:
        with smtplib.SMTP(host, port, timeout=30) as client:
            client.ehlo()
            code, text = client.mail(sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, text, sender)
            refused = {}
            for rcpt in recipients:
                code, text = client.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = (code, text)
            if len(refused) == len(recipients):
                raise smtplib.SMTPRecipientsRefused(refused)
            code, text = client.data(data)
            if code != 250:
                raise smtplib.SMTPDataError(code, text)
    except (smtplib.SMTPException, OSError) as exc:
        click.echo(f"send failed: {exc}", err=True)
        sys.exit(1)
    for rcpt, (code, text) in refused.items():
        click.echo(f"refused {rcpt}: {code} {text.decode(errors='replace')}", err=True)
    click.echo(text.decode(errors="replace"))


main.add_command(queue)
main.add_command(members)
main.add_command(suppress)
main.add_command(drain)
main.add_command(warmup)
main.add_command(logs)
main.add_command(experiment)
main.add_command(providers)
main.add_command(dkim)
main.add_command(auth)


@main.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sink(args: tuple[str, ...]) -> None:
    """A smart sink for tests and demos: `smtplb sink --listen ADDR [--profile FILE]`."""
    from smtplb.sink.server import main as sink_main

    # The sink parses its own options (and --help), as `python -m smtplb.sink` does.
    sys.exit(sink_main(list(args), prog="smtplb sink"))


@main.command()
@click.option("--duration", default=60.0, show_default=True, help="Seconds of traffic.")
@click.option("--rate", default=40.0, show_default=True, help="Messages per second.")
@click.option("--http-port", default=8025, show_default=True, help="0: any free port.")
@click.option("--smtp-port", default=2525, show_default=True, help="0: any free port.")
@click.option(
    "--experiment",
    is_flag=True,
    help="Instead: an A/B experiment, round robin against latency-aware balancing "
    "over a fast and a slow (+300 ms) upstream, and its report.",
)
def demo(duration: float, rate: float, http_port: int, smtp_port: int, experiment: bool) -> None:
    """Run smtplb with sandbox upstreams and traffic: balancing, failover, dashboard."""
    from smtplb.demo import run_demo, run_experiment_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _install_uvloop()
    run = run_experiment_demo if experiment else run_demo
    sys.exit(asyncio.run(run(duration, rate, http_port, smtp_port)))


if __name__ == "__main__":
    main()
