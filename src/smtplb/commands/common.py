"""What the ``smtplb`` commands share: the config option and loading, and the client of
the HTTP API that commands talking to a running service use."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import click

from smtplb.config import Config, ConfigError, load_config
from smtplb.mailauth.keys import load_keyring
from smtplb.units import parse_hostport

CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (TOML). Default: ./smtplb.toml if present, else built-in defaults.",
)


def config_or_exit(config_path: Path | None, *, warn: bool = True, keys: bool = False) -> Config:
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


def api_client(api_url: str | None, api_key: str | None, config_path: Path | None) -> Api:
    if api_url is None or api_key is None:
        config = config_or_exit(config_path)
        if api_url is None:
            host, port = parse_hostport(config.http.listen)
            api_url = f"http://{host}:{port}"
        if api_key is None and config.http.api_keys:
            api_key = config.http.api_keys[0]
    return Api(api_url, api_key)


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
