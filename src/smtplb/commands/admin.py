"""Commands that manage a running node over its API: queue, members, suppressions, drain."""

from __future__ import annotations

import csv
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

import click

from smtplb.commands.common import age, api_client, api_options


@click.group()
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
    data = api_client(api_url, api_key, config_path).call("GET", path)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    now = time.time()
    click.echo(f"{'QUEUE ID':<22}{'AGE':>6}  {'SENDER':<30} RECIPIENTS")
    for m in data["messages"]:
        rcpts = ", ".join(f"{r['address']} ({r['state']})" for r in m["recipients"])
        sender = m["sender"] or "<>"
        click.echo(f"{m['queue_id']:<22}{age(now - m['received_at']):>6}  {sender:<30} {rcpts}")


@queue.command("show")
@click.argument("queue_id")
@click.option("--json", "as_json", is_flag=True)
@api_options
def queue_show(
    queue_id: str, as_json: bool, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Show one message: each recipient's state, member and last reply."""
    m = api_client(api_url, api_key, config_path).call("GET", f"/api/v1/queue/{queue_id}")
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
    data = api_client(api_url, api_key, config_path).call("GET", "/api/v1/queue?limit=0")
    if as_json:
        click.echo(json.dumps({"stats": data["stats"], "oldest_age": data["oldest_age"]}))
        return
    for state, count in data["stats"].items():
        age = data["oldest_age"].get(state)
        click.echo(f"{state:<12}{count:>10}" + (f"   oldest {age(age)}" if age else ""))


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
    data = api_client(api_url, api_key, config_path).call("POST", path)
    click.echo(f"{data['retried']} recipients due now")


@queue.command("delete")
@click.argument("queue_id")
@api_options
def queue_delete(
    queue_id: str, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Remove a message from the queue."""
    api_client(api_url, api_key, config_path).call("DELETE", f"/api/v1/queue/{queue_id}")
    click.echo(f"deleted {queue_id}")


@click.group(invoke_without_command=True)
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
    data = api_client(api_url, api_key, config_path).call("GET", "/api/v1/members")
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
        warmup = m.get("warmup") or {}
        if warmup:
            click.echo(
                f"{'':<16}warm-up: " + "; ".join(_warmup_cell(p, w) for p, w in warmup.items())
            )


def _warmup_cell(provider: str, w: dict[str, Any]) -> str:
    if w["cap"] is None:
        return f"{provider} warm"
    return f"{provider} day {w['day']} {w['sent']}/{w['cap']}"


@members.command("pause")
@click.argument("name")
@api_options
def members_pause(
    name: str, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Stop new traffic to NAME (survives restarts)."""
    api_client(api_url, api_key, config_path).call("POST", f"/api/v1/members/{name}/pause")
    click.echo(f"{name} paused")


@members.command("resume")
@click.argument("name")
@api_options
def members_resume(
    name: str, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Let NAME take traffic again."""
    api_client(api_url, api_key, config_path).call("POST", f"/api/v1/members/{name}/resume")
    click.echo(f"{name} resumed")


@members.command("quarantine")
@click.argument("name")
@api_options
def members_quarantine(
    name: str, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Quarantine NAME: no traffic for [reputation] quarantine, then probation."""
    api_client(api_url, api_key, config_path).call("POST", f"/api/v1/members/{name}/quarantine")
    click.echo(f"{name} quarantined")


@members.command("release")
@click.argument("name")
@api_options
def members_release(
    name: str, api_url: str | None, api_key: str | None, config_path: Path | None
) -> None:
    """Release NAME from quarantine, throttling or probation."""
    api_client(api_url, api_key, config_path).call("POST", f"/api/v1/members/{name}/release")
    click.echo(f"{name} released")


@click.group()
def suppress() -> None:
    """The suppression list: add, remove, list (import with add --file, export with list --csv)."""


EXPORT_COLUMNS = ("address", "reason", "source", "created_at", "domain")


def import_entries(file: IO[str], reason: str = "", domain: str = "") -> list[dict[str, str]]:
    """The entries of an import file: one address a line, or CSV. A CSV whose first
    row names an ``address`` column (as ``suppress list --csv`` writes) keeps each
    row's ``reason`` and ``domain``; otherwise the address is the first column and
    ``reason``/``domain`` (the options) apply. ``#`` starts a comment line."""
    rows = [r for r in csv.reader(file) if r and r[0].strip() and not r[0].lstrip().startswith("#")]
    header = [c.strip().lower() for c in rows[0]] if rows and "@" not in rows[0][0] else []
    columns = {name: i for i, name in enumerate(header)}
    at = columns.get("address", 0)
    out = []
    for row in rows[1:] if header else rows:
        cell = dict(zip(header, (c.strip() for c in row), strict=False))
        if at >= len(row) or "@" not in row[at]:
            continue
        out.append(
            {
                "address": row[at].strip(),
                "reason": cell.get("reason") or reason,
                "domain": cell["domain"] if "domain" in columns else domain,
            }
        )
    return out


@suppress.command("add")
@click.argument("addresses", nargs=-1)
@click.option("--reason", default="", help="Why (kept with each entry).")
@click.option(
    "--domain",
    default="",
    help="Only for mail from this sender domain (default: every sender).",
)
@click.option("--file", "file", type=click.File("r"), default=None, help="Import: - for stdin.")
@api_options
def suppress_add(
    addresses: tuple[str, ...],
    reason: str,
    domain: str,
    file: IO[str] | None,
    api_url: str | None,
    api_key: str | None,
    config_path: Path | None,
) -> None:
    """Suppress ADDRESS… (and/or every entry of --file: one address a line, or CSV)."""
    wanted = [{"address": a, "reason": reason, "domain": domain} for a in addresses]
    wanted += import_entries(file, reason, domain) if file is not None else []
    if not wanted:
        raise click.UsageError("give addresses, or --file with one address a line")
    api = api_client(api_url, api_key, config_path)
    added = 0
    for i in range(0, len(wanted), 5000):
        body = {"entries": wanted[i : i + 5000]}
        added += api.call("POST", "/api/v1/suppressions", body)["added"]
    click.echo(f"{added} added, {len(wanted) - added} already suppressed")


@suppress.command("remove")
@click.argument("addresses", nargs=-1, required=True)
@click.option("--domain", default="", help="The entry for this sender domain (default: global).")
@api_options
def suppress_remove(
    addresses: tuple[str, ...],
    domain: str,
    api_url: str | None,
    api_key: str | None,
    config_path: Path | None,
) -> None:
    """Take ADDRESS… off the suppression list (the global entry, or --domain's)."""
    api = api_client(api_url, api_key, config_path)
    query = f"?domain={urllib.parse.quote(domain)}" if domain else ""
    for address in addresses:
        quoted = urllib.parse.quote(address, safe="@")
        done = api.call("DELETE", f"/api/v1/suppressions/{quoted}{query}")
        click.echo(f"{done['removed']}{' for ' + done['domain'] if done['domain'] else ''} removed")


@suppress.command("list")
@click.option("--domain", default=None, help='Only this scope (a sender domain; "" global).')
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--csv", "as_csv", is_flag=True, help=f"{','.join(EXPORT_COLUMNS)} (export).")
@api_options
def suppress_list(
    domain: str | None,
    as_json: bool,
    as_csv: bool,
    api_url: str | None,
    api_key: str | None,
    config_path: Path | None,
) -> None:
    """Every suppressed address, by address (and sender domain, for scoped entries)."""
    api = api_client(api_url, api_key, config_path)
    scope = "" if domain is None else f"&domain={urllib.parse.quote(domain)}"
    entries: list[dict[str, Any]] = []
    while True:
        page = api.call("GET", f"/api/v1/suppressions?limit=10000&offset={len(entries)}{scope}")
        entries += page["suppressions"]
        if len(page["suppressions"]) < 10000:
            break
    if as_json:
        click.echo(json.dumps({"total": len(entries), "suppressions": entries}, indent=2))
    elif as_csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(EXPORT_COLUMNS)
        for e in entries:
            out.writerow([e[c] for c in EXPORT_COLUMNS])
    else:
        for e in entries:
            scope_text = e["domain"] or "*"
            click.echo(f"{e['address']:<40}{scope_text:<20}{e['source']:<10}{e['reason']}")


@click.command()
@click.option("--off", is_flag=True, help="Undo a drain: take mail again.")
@api_options
def drain(off: bool, api_url: str | None, api_key: str | None, config_path: Path | None) -> None:
    """Stop intake (SMTP 421, /readyz 503) while queued mail keeps going; --off undoes it."""
    api_client(api_url, api_key, config_path).call("DELETE" if off else "POST", "/api/v1/drain")
    click.echo("taking mail again" if off else "draining: intake refused, queued mail delivered")
