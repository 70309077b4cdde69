"""The ``smtplb`` command (SPEC §3.1). Commands that talk to a running service
use its HTTP API (``--api URL``, default from the config's ``[http] listen``)."""

from __future__ import annotations

import asyncio
import csv
import gc
import json
import logging
import os
import smtplib
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import IO, Any

import click
import msgspec

from smtplb.config import Config, ConfigError, load_config, parse_hostport
from smtplb.mailauth.commands import auth, dkim
from smtplb.mailauth.keys import load_keyring
from smtplb.observability.analyze import DIMENSIONS, Analyzer, render_table
from smtplb.observability.log_reader import chronological, read_lines
from smtplb.observability.record import DeliveryRecord
from smtplb.routing.providers import OTHER, ProviderTable

CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (TOML). Default: ./smtplb.toml if present, else built-in defaults.",
)


def _config(config_path: Path | None, *, warn: bool = True, keys: bool = False) -> Config:
    """The config, its warnings on stderr (keys accepted that do nothing yet);
    exit 1 listing every problem when it cannot be used. ``keys``: also load the DKIM
    keys (for commands that sign or vouch for the config)."""
    if config_path is None and Path("smtplb.toml").is_file():
        config_path = Path("smtplb.toml")
    warnings: list[str] = []
    try:
        config = load_config(config_path, warnings)
        if keys:
            load_keyring(config.dkim)
    except ConfigError as exc:
        for line in exc.problems:
            click.echo(f"config error: {line}", err=True)
        sys.exit(1)
    finally:
        for line in warnings if warn else ():
            click.echo(f"config warning: {line}", err=True)
    return config


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

    config = _config(config_path, warn=worker is None, keys=True)  # the supervisor warns once
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
    config = _config(config_path, keys=True)
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
        server = _config(config_path).smtp.listen[0]
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


# -- API client ----------------------------------------------------------------------


class Api:
    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        self.key = key

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.key:
            req.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read())
                text = f"{detail.get('title', exc.reason)}: {detail.get('detail', '')}".rstrip(": ")
            except ValueError:
                text = str(exc.reason)
            click.echo(f"error {exc.code}: {text}", err=True)
            sys.exit(1)
        except urllib.error.URLError as exc:
            click.echo(f"cannot reach the smtplb API at {self.url}: {exc.reason}", err=True)
            sys.exit(1)


API_OPTIONS = [
    click.option("--api", "api_url", default=None, help="API base URL (default from config)."),
    click.option(
        "--api-key",
        envvar="SMTPLB_API_KEY",
        default=None,
        help="API key (default: $SMTPLB_API_KEY or the config's first key).",
    ),
    CONFIG_OPTION,
]


def api_options(f: Any) -> Any:
    for option in reversed(API_OPTIONS):
        f = option(f)
    return f


def _api(api_url: str | None, api_key: str | None, config_path: Path | None) -> Api:
    if api_url is None or api_key is None:
        config = _config(config_path)
        if api_url is None:
            host, port = parse_hostport(config.http.listen)
            api_url = f"http://{host}:{port}"
        if api_key is None and config.http.api_keys:
            api_key = config.http.api_keys[0]
    return Api(api_url, api_key)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


@main.group()
def queue() -> None:
    """Inspect and manage the queue."""


@queue.command("list")
@click.option("--state", default=None, help="Only messages with a recipient in this state.")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@api_options
def queue_list(
    state: str | None,
    limit: int,
    as_json: bool,
    api_url: str | None,
    api_key: str | None,
    config_path: Path | None,
) -> None:
    """List messages, newest first."""
    path = f"/api/v1/queue?limit={limit}" + (f"&state={state}" if state else "")
    data = _api(api_url, api_key, config_path).call("GET", path)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    now = time.time()
    click.echo(f"{'QUEUE ID':<22}{'AGE':>6}  {'SENDER':<30} RECIPIENTS")
    for m in data["messages"]:
        rcpts = ", ".join(f"{r['address']} ({r['state']})" for r in m["recipients"])
        sender = m["sender"] or "<>"
        click.echo(f"{m['queue_id']:<22}{_age(now - m['received_at']):>6}  {sender:<30} {rcpts}")


@queue.command("show")
@click.argument("queue_id")
@click.option("--json", "as_json", is_flag=True)
@api_options
def queue_show(
    queue_id: str, as_json: bool, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Show one message: each recipient's state, member and last reply."""
    m = _api(api_url, api_key, config_path).call("GET", f"/api/v1/queue/{queue_id}")
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    click.echo(f"queue id:    {m['queue_id']}")
    click.echo(f"message-id:  {m['message_id']}")
    click.echo(f"sender:      {m['sender'] or '<>'}")
    click.echo(f"size:        {m['size']} bytes   class: {m['content_class']}")
    click.echo(f"received:    {time.ctime(m['received_at'])}")
    click.echo(f"expires:     {time.ctime(m['expires_at'])}")
    for r in m["recipients"]:
        click.echo(f"  {r['address']}: {r['state']}, pool {r['pool']}, attempts {r['attempts']}")
        if r["member"]:
            click.echo(f"    last member: {r['member']}")
        if r["last_code"]:
            enhanced_code = r["last_enhanced_code"] or ""
            click.echo(f"    last reply: {r['last_code']} {enhanced_code} {r['last_response']}")
        if r["state"] == "deferred":
            click.echo(f"    next attempt: {time.ctime(r['next_attempt'])}")
    if m.get("trace"):
        click.echo("trace:")
    for step in m.get("trace", []):
        when = time.strftime("%H:%M:%S", time.localtime(step["ts"]))
        kind = step["step"]
        if kind == "routed":
            click.echo(
                f"  {when} routed {step['recipient']}: {step['route']} → pool "
                f"{step['pool']}, lane {step['lane']}, class {step['content_class']}"
            )
        elif kind == "dispatch":
            click.echo(
                f"  {when} {step['strategy']} chose {step['member']} in pool "
                f"{step['pool']} ({step['lane']} lane)"
            )
            for name, why in step["skipped"].items():
                click.echo(f"           skipped {name}: {why}")
        elif kind == "attempt":
            for rcpt, reply in step["outcomes"].items():
                click.echo(f"  {when} {step['member']} ({step['upstream']}): {rcpt} → {reply}")
        else:
            detail = step.get("reason", "")
            click.echo(f"  {when} {kind} {step.get('member', step.get('pool', ''))}: {detail}")


@queue.command("stats")
@click.option("--json", "as_json", is_flag=True)
@api_options
def queue_stats(
    as_json: bool, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Recipients by state, and the age of the oldest in each."""
    data = _api(api_url, api_key, config_path).call("GET", "/api/v1/queue?limit=0")
    if as_json:
        click.echo(json.dumps({"stats": data["stats"], "oldest_age": data["oldest_age"]}))
        return
    for state, count in data["stats"].items():
        age = data["oldest_age"].get(state)
        click.echo(f"{state:<12}{count:>10}" + (f"   oldest {_age(age)}" if age else ""))


@queue.command("retry")
@click.argument("queue_id", required=False)
@click.option("--all", "retry_all", is_flag=True, help="Retry every deferred message now.")
@api_options
def queue_retry(
    queue_id: str | None,
    retry_all: bool,
    api_url: str | None,
    api_key: str | None,
    config_path: Path | None,
) -> None:
    """Make a deferred message (or all with --all) due now."""
    if (queue_id is None) == (not retry_all):
        raise click.UsageError("give a QUEUE_ID or --all")
    path = "/api/v1/queue/retry" if retry_all else f"/api/v1/queue/{queue_id}/retry"
    data = _api(api_url, api_key, config_path).call("POST", path)
    click.echo(f"{data['retried']} recipients due now")


@queue.command("delete")
@click.argument("queue_id")
@api_options
def queue_delete(
    queue_id: str, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Remove a message from the queue."""
    _api(api_url, api_key, config_path).call("DELETE", f"/api/v1/queue/{queue_id}")
    click.echo(f"deleted {queue_id}")


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@api_options
@click.pass_context
def members(ctx: click.Context, /, **options: Any) -> None:
    """List, pause and resume members (no verb: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(members_list, **options)


@members.command("list")
@click.option("--json", "as_json", is_flag=True)
@api_options
def members_list(
    as_json: bool = False,
    api_url: str | None = None,
    api_key: str | None = None,
    config_path: Path | None = None,
) -> None:
    """Every member with health, load and counters."""
    data = _api(api_url, api_key, config_path).call("GET", "/api/v1/members")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"{'MEMBER':<16}{'POOL':<12}{'HEALTH':<11}{'REPUTATION':<12}{'ACTIVE':>7}{'DELIVERED':>11}"
        f"{'DEFERRED':>10}{'BOUNCED':>9}{'FAILURES':>10}  TARGET"
    )
    for m in data["members"]:
        reputation = m.get("reputation", {}).get("state", "ok")
        click.echo(
            f"{m['name']:<16}{m['pool']:<12}{m['health']:<11}{reputation:<12}{m['active']:>7}"
            f"{m['delivered']:>11}{m['deferred']:>10}{m['bounced']:>9}"
            f"{m['failures']:>10}  {m['target']}"
        )
        for provider, p in m.get("reputation", {}).get("providers", {}).items():
            click.echo(
                f"  {provider:<14}{p['state']:<12}{p['attempts']:>6} attempts  "
                f"hard {p['hard_bounce_rate']:.1%}  policy {p['policy_block_rate']:.1%}  "
                f"complaints {p['complaint_rate']:.2%}  {p.get('reason', '')}"
            )


@members.command("pause")
@click.argument("name")
@api_options
def members_pause(
    name: str, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Stop new traffic to NAME (survives restarts)."""
    _api(api_url, api_key, config_path).call("POST", f"/api/v1/members/{name}/pause")
    click.echo(f"{name} paused")


@members.command("resume")
@click.argument("name")
@api_options
def members_resume(
    name: str, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Let NAME take traffic again."""
    _api(api_url, api_key, config_path).call("POST", f"/api/v1/members/{name}/resume")
    click.echo(f"{name} resumed")


@members.command("quarantine")
@click.argument("name")
@api_options
def members_quarantine(
    name: str, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Quarantine NAME: no traffic for [reputation] quarantine, then probation."""
    _api(api_url, api_key, config_path).call("POST", f"/api/v1/members/{name}/quarantine")
    click.echo(f"{name} quarantined")


@members.command("release")
@click.argument("name")
@api_options
def members_release(
    name: str, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Release NAME from quarantine, throttling or probation."""
    _api(api_url, api_key, config_path).call("POST", f"/api/v1/members/{name}/release")
    click.echo(f"{name} released")


@main.group()
def suppress() -> None:
    """The suppression list: add, remove, list (import with add --file, export with list --csv)."""


def _addresses_from(file: IO[str]) -> list[str]:
    """One address a line, or CSV whose first column is the address (a header is skipped)."""
    out = []
    for row in csv.reader(file):
        if row and row[0].strip() and "@" in row[0] and not row[0].lstrip().startswith("#"):
            out.append(row[0].strip())
    return out


@suppress.command("add")
@click.argument("addresses", nargs=-1)
@click.option("--reason", default="", help="Why (kept with each entry).")
@click.option("--file", "file", type=click.File("r"), default=None, help="Import: - for stdin.")
@api_options
def suppress_add(
    addresses: tuple[str, ...],
    reason: str,
    file: IO[str] | None,
    api_url: str | None,
    api_key: str | None,
    config_path: Path | None,
) -> None:
    """Suppress ADDRESS… (and/or every address in --file)."""
    wanted = list(addresses) + (_addresses_from(file) if file is not None else [])
    if not wanted:
        raise click.UsageError("give addresses, or --file with one address a line")
    api = _api(api_url, api_key, config_path)
    added = 0
    for i in range(0, len(wanted), 5000):
        body = {"addresses": wanted[i : i + 5000], "reason": reason}
        added += api.call("POST", "/api/v1/suppressions", body)["added"]
    click.echo(f"{added} added, {len(wanted) - added} already suppressed")


@suppress.command("remove")
@click.argument("addresses", nargs=-1, required=True)
@api_options
def suppress_remove(
    addresses: tuple[str, ...], api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Take ADDRESS… off the suppression list."""
    api = _api(api_url, api_key, config_path)
    for address in addresses:
        quoted = urllib.parse.quote(address, safe="@")
        click.echo(f"{api.call('DELETE', f'/api/v1/suppressions/{quoted}')['removed']} removed")


@suppress.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="address,reason,source,created_at (export).")
@api_options
def suppress_list(
    as_json: bool, as_csv: bool, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Every suppressed address, by address."""
    api = _api(api_url, api_key, config_path)
    entries: list[dict[str, Any]] = []
    while True:
        page = api.call("GET", f"/api/v1/suppressions?limit=10000&offset={len(entries)}")
        entries += page["suppressions"]
        if len(page["suppressions"]) < 10000:
            break
    if as_json:
        click.echo(json.dumps({"total": len(entries), "suppressions": entries}, indent=2))
    elif as_csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["address", "reason", "source", "created_at"])
        for e in entries:
            out.writerow([e["address"], e["reason"], e["source"], e["created_at"]])
    else:
        for e in entries:
            click.echo(f"{e['address']:<40}{e['source']:<10}{e['reason']}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@api_options
def providers(
    as_json: bool, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Per mailbox provider and member: limits, connections, rate, suspensions."""
    data = _api(api_url, api_key, config_path).call("GET", "/api/v1/providers")
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


@main.command()
@click.option("--off", is_flag=True, help="Undo a drain: take mail again.")
@api_options
def drain(off: bool, api_url: str | None, api_key: str | None, config_path: Path | None) -> None:
    """Stop intake (SMTP 421, /readyz 503) while queued mail keeps going; --off undoes it."""
    _api(api_url, api_key, config_path).call("DELETE" if off else "POST", "/api/v1/drain")
    click.echo("taking mail again" if off else "draining: intake refused, queued mail delivered")


@main.group()
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
def demo(duration: float, rate: float, http_port: int, smtp_port: int) -> None:
    """Run smtplb with sandbox upstreams and traffic: balancing, failover, dashboard."""
    from smtplb.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _install_uvloop()
    sys.exit(asyncio.run(run_demo(duration, rate, http_port, smtp_port)))


if __name__ == "__main__":
    main()
