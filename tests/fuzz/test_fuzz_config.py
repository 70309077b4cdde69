"""Fuzz the config loader: TOML data shaped like smtplb's config (every key of
the schema, with right and wrong types, absurd values, unknown and planned
keys), and raw TOML text. Whatever the input, loading must either give a
``Config`` or raise ``ConfigError`` whose problems are one line each, shaped
``key: problem``; nothing else may be raised (issue 10: "never a traceback")."""

from __future__ import annotations

import tempfile
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from smtplb.config import Config, ConfigError, load_config, parse_config
from smtplb.units import Duration, Size
from tests.fuzz.harness import fuzz_settings, target

WORDS = [
    "",
    "default",
    "round_robin",
    "weighted",
    "hash",
    "failover",
    "latency",
    "recipient_domain",
    "client_ip",
    "opportunistic",
    "required",
    "none",
    "info",
    "debug",
    "high",
    "marketing",
    "127.0.0.1:2525",
    "[::1]:25",
    "0.0.0.0:25",
    "localhost:8025",
    "127.0.0.1",
    "::1",
    "10.0.0.0/8",
    "300.1.1.1/8",
    "garbage",
    "host:99999",
    ":25",
    "5m",
    "1.5h",
    "250ms",
    "-1s",
    "1e400s",
    "99999999999d",
    "25MB",
    "1GiB",
    "999999999999999999999999TB",
    "http://127.0.0.1:9/hook",
    "redis://127.0.0.1:6379/0",
    "example.test",
    "a@b.test",
    "x\ny",
    "é",
    "\x00",
]
NUMBERS = st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from(
    [0, 1, -1, 64, 65, 2**63, 10**30]
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0, 1.25, 1e308])
SCALARS = (
    st.sampled_from(WORDS)
    | st.text(max_size=12)
    | NUMBERS
    | FLOATS
    | st.booleans()
    | st.dates()
    | st.datetimes()
    | st.times()
)
ANY = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
EXTRA_KEYS = ["dkim", "dns", "warmup", "providers", "node", "redis", "colour", "warmup_start"]


def for_type(tp: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values for a field of type ``tp``: mostly plausible, sometimes any TOML value."""
    return st.one_of(_right(tp, depth), _right(tp, depth), ANY)


def _right(tp: Any, depth: int) -> st.SearchStrategy[Any]:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return st.one_of(*(_right(a, depth) for a in args if a is not type(None)))
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tables(tp, depth + 1)
    if origin is list:
        return st.lists(for_type(args[0], depth), max_size=3 if depth < 2 else 1)
    if origin is dict:
        return st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=8), for_type(args[1]))
    if tp is Duration:
        return st.sampled_from(["30s", "5m", "2h", "1d", "0s", "250ms"]) | NUMBERS | FLOATS
    if tp is Size:
        return st.sampled_from(["25MB", "1KB", "2GiB", "3GB", "0"]) | NUMBERS
    if tp is bool:
        return st.booleans()
    if tp is int:
        return NUMBERS
    if tp is float:
        return FLOATS
    return st.sampled_from(WORDS) | st.text(max_size=16)


def tables(tp: type[msgspec.Struct], depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    fields = msgspec.structs.fields(tp)
    if depth > 3:
        return st.just({})
    optional = {f.encode_name: for_type(f.type, depth) for f in fields}
    extra = st.dictionaries(st.sampled_from(EXTRA_KEYS), ANY, max_size=1)
    return st.builds(
        lambda known, more: {**more, **known},
        st.fixed_dictionaries({}, optional=optional),  # type: ignore[arg-type]
        extra,
    )


def load(data: dict[str, Any]) -> None:
    warnings: list[str] = []
    try:
        cfg = parse_config(data, warnings)
    except ConfigError as exc:
        check_lines(exc.problems)
        assert exc.problems, "a ConfigError with no problem"
    else:
        assert isinstance(cfg, Config)
        assert cfg.pools and all(p.members for p in cfg.pools)
    check_lines(warnings)


def check_lines(lines: list[str]) -> None:
    for line in lines:
        key, sep, text = line.partition(": ")
        assert sep and key and text, f"not 'key: problem': {line!r}"
        assert "\n" not in line, f"a problem must be one line: {line!r}"


@fuzz_settings(bounded=100)
@given(data=tables(Config))
def test_fuzz_config_data(data: dict[str, Any]) -> None:
    target("config: TOML data").run(load, data)


_DIR = Path(tempfile.mkdtemp(prefix="smtplb-fuzz-config-"))
TOML_PIECES = [
    "[smtp]\n",
    "[http]\n",
    "[[pools]]\n",
    "[[pools.members]]\n",
    "[health]\n",
    "[cluster]\n",
    "[[dkim]]\n",
    'name = "p"\n',
    'relay = "127.0.0.1:25"\n',
    'listen = ["garbage"]\n',
    "auth_without_tls = true\n",
    'max_message_size = "999999999999999999999999TB"\n',
    "max_recipients = 18446744073709551616\n",
    "interval = inf\n",
    "interval = nan\n",
    "weight = 1979-05-27T07:32:00Z\n",
    'x = """\nmulti\nline"""\n',
    '"key\\nwith newline" = 1\n',
    "a.b.c = 1\n",
    "= 1\n",
    "\x00",
    "\ufeff",
]


def load_text(text: bytes) -> None:
    path = _DIR / "smtplb.toml"
    path.write_bytes(text)
    try:
        load_config(path)
    except ConfigError as exc:
        check_lines(exc.problems)


@fuzz_settings(bounded=100)
@given(
    text=st.lists(
        st.sampled_from(TOML_PIECES).map(str.encode) | st.binary(max_size=10), max_size=14
    ).map(b"".join)
)
def test_fuzz_config_text(text: bytes) -> None:
    target("config: TOML text").run(load_text, text)
