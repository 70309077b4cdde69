"""The ``smtplb dkim`` and ``smtplb auth`` commands (SPEC §3.4), added to the CLI by
:mod:`smtplb.cli`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from smtplb.config import Config, ConfigError, load_config
from smtplb.mailauth.check import Resolver, auth_report
from smtplb.mailauth.keys import (
    ADVISED_RSA_BITS,
    ALGORITHMS,
    MIN_RSA_BITS,
    generate_key,
    load_keyring,
    txt_strings,
    txt_value,
    write_private_key,
    zone_record,
)
from smtplb.mailauth.sign import KeyRing

CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (TOML). Default: ./smtplb.toml if present, else built-in defaults.",
)


def _load(config_path: Path | None) -> tuple[Config, KeyRing]:
    if config_path is None and Path("smtplb.toml").is_file():
        config_path = Path("smtplb.toml")
    try:
        config = load_config(config_path)
        return config, load_keyring(config.dkim)
    except ConfigError as exc:
        for line in exc.problems:
            click.echo(f"config error: {line}", err=True)
        sys.exit(1)


@click.group()
def dkim() -> None:
    """DKIM keys: generate a key and its DNS record."""


@dkim.command("keygen")
@click.argument("domain")
@click.argument("selector")
@click.option("-a", "--algorithm", type=click.Choice(ALGORITHMS), default="rsa", show_default=True)
@click.option("--bits", type=int, default=ADVISED_RSA_BITS, show_default=True, help="RSA key size.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Key file (default: keys/DOMAIN.SELECTOR.pem). Never overwritten.",
)
def keygen(domain: str, selector: str, algorithm: str, bits: int, out: Path | None) -> None:
    """Write a new private key (mode 0600) and print the TXT record to publish."""
    domain = domain.lower().rstrip(".")
    if algorithm == "rsa" and bits < MIN_RSA_BITS:
        raise click.BadParameter(
            f"at least {MIN_RSA_BITS} ({ADVISED_RSA_BITS} advised)", param_hint="--bits"
        )
    path = out or Path("keys") / f"{domain}.{selector}.pem"
    key = generate_key(algorithm, bits)
    try:
        write_private_key(key, path)
    except FileExistsError:
        click.echo(f"smtplb: {path} exists; remove it or give --out", err=True)
        sys.exit(1)
    value = txt_value(key)
    click.echo(f"wrote {path} ({algorithm}{f'-{bits}' if algorithm == 'rsa' else ''}, mode 0600)")
    click.echo(f"\npublish this TXT record at {selector}._domainkey.{domain}:\n")
    click.echo(zone_record(domain, selector, key))
    if len(txt_strings(value)) > 1:
        click.echo("\n(one record of several strings: DNS joins them; or as one value:)")
        click.echo(value)
    click.echo("\nthen add to the config:\n")
    click.echo(f'[[dkim]]\ndomain = "{domain}"\nselector = "{selector}"\nkey = "{path}"')


@click.group()
def auth() -> None:
    """Sender authentication checks (DKIM, SPF, DMARC)."""


@auth.command("check")
@click.argument("domains", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@CONFIG_OPTION
def check(domains: tuple[str, ...], as_json: bool, config_path: Path | None) -> None:
    """Check the published DKIM, SPF and DMARC records of each DOMAIN (a From domain;
    default: every [[dkim]] domain) against this config; exit 1 when anything is wrong."""
    config, keyring = _load(config_path)
    if not domains:
        domains = tuple(dict.fromkeys(k.domain for k in keyring.keys))
        if not domains:
            raise click.UsageError("give a DOMAIN: the config has no [[dkim]] entry")
    resolver = Resolver(config.dns.nameservers)
    reports = [auth_report(config, keyring, d, resolver) for d in domains]
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "domain": r.domain,
                        "ok": not r.problems,
                        "findings": [
                            {"area": f.area, "ok": f.ok, "text": f.text} for f in r.findings
                        ],
                    }
                    for r in reports
                ],
                indent=2,
            )
        )
    else:
        for r in reports:
            click.echo("\n".join(r.lines()))
    sys.exit(1 if any(r.problems for r in reports) else 0)
