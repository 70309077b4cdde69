"""The shape of a config: every wrong type, unknown key and missing key in one pass.

msgspec stops at the first error, so five mistakes took five runs of ``smtplb
check``. :func:`check_shape` walks the TOML data along the ``msgspec.Struct``
types instead, converts each value on its own, and returns the data with every
bad value taken out (its default applies) together with one ``key: problem``
line per mistake. The cleaned data then converts without error, so the
semantic checks of :mod:`smtplb.config` can run in the same pass; their
findings about a key whose value was already refused are left out (see
:func:`related`).

Keys are written the way the problems name them: ``smtp.listen[0]``,
``pools[1].members[0].relay``. A *pattern* is a key with its indexes dropped
(``pools[].members[].warmup``): :data:`Rules` use patterns to name keys that
are known but not built yet.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

import msgspec

DecHook = Callable[[type, Any], Any]
_INDEX = re.compile(r"\[\d+\]")
_AT = re.compile(r"^(?P<msg>.*) - at `\$(?P<sub>[^`]*)`$", re.DOTALL)


@dataclass(frozen=True)
class Rules:
    """Keys the walk treats specially, by pattern.

    ``planned``: not known yet (a later feature will add them): accepted with a
    warning instead of ``unknown key``. ``inert``: known and parsed, but the
    feature behind them does nothing yet: a warning when they are set to a true
    value. Each maps a pattern to what the warning says.
    """

    planned: Mapping[str, str] = field(default_factory=dict)
    inert: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Shape:
    """What the walk found: ``data`` to convert, ``problems`` and ``warnings`` as
    ``key: text`` lines, and the keys whose values were refused (``bad``)."""

    data: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)

    def problem(self, key: str, text: str, *, refused: bool = True) -> None:
        """Note a problem; ``refused``: the key's value was taken out (so the
        semantic checks saw its default, not what the file says)."""
        self.problems.append(f"{key or '(top level)'}: {text}")
        if refused:
            self.bad.append(key)


def pattern(key: str) -> str:
    """``pools[1].members[0].warmup`` → ``pools[].members[].warmup``."""
    return _INDEX.sub("[]", key)


def related(key: str, bad: list[str]) -> bool:
    """Is ``key`` one of ``bad``, inside one, or around one? A semantic problem
    about such a key comes from a value that was already refused (and replaced
    by its default), so it would only repeat or mislead."""
    return any(_within(key, b) or _within(b, key) for b in bad)


def _within(inner: str, outer: str) -> bool:
    return (
        not outer
        or inner == outer
        or inner.startswith(outer + ".")
        or inner.startswith(outer + "[")
    )


def key_name(name: str) -> str:
    """A table key as problems show it: as is, or quoted TOML-style when it has
    spaces, quotes, colons or control characters (a problem stays one line)."""
    if name and name.isprintable() and not any(c.isspace() or c in '":' for c in name):
        return name
    return json.dumps(name, ensure_ascii=False)


def _join(path: str, name: str) -> str:
    return f"{path}.{key_name(name)}" if path else key_name(name)


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _struct_list_item(tp: Any) -> type[msgspec.Struct] | None:
    if get_origin(tp) is list:
        (item,) = get_args(tp)
        if _is_struct(item):
            return item  # type: ignore[no-any-return]
    return None


def check_shape(
    data: Mapping[str, Any], tp: type[msgspec.Struct], dec_hook: DecHook, rules: Rules
) -> Shape:
    shape = Shape(data={})
    shape.data = _table(data, tp, "", shape, dec_hook, rules)
    return shape


def _table(
    data: Mapping[str, Any],
    tp: type[msgspec.Struct],
    path: str,
    shape: Shape,
    dec_hook: DecHook,
    rules: Rules,
) -> dict[str, Any]:
    fields = {f.encode_name: f for f in msgspec.structs.fields(tp)}
    out: dict[str, Any] = {}
    for name, required in fields.items():
        if required.required and name not in data:
            key = _join(path, name)
            if required.type is str:  # a stand-in, so the table still builds; never a real name
                shape.problem(key, "required key is missing", refused=False)
                out[name] = f"<missing {key}>"
            else:
                shape.problem(key, "required key is missing")
    for name, value in data.items():
        key = _join(path, str(name))
        info = fields.get(name)
        if info is None:
            note = rules.planned.get(pattern(key))
            if note is not None:
                shape.warnings.append(f"{key}: not implemented yet, ignored ({note})")
            else:
                shape.problem(key, "unknown key")
            continue
        ok, converted = _value(value, info.type, key, shape, dec_hook, rules)
        if ok:
            out[name] = converted
            note = rules.inert.get(pattern(key))
            if note is not None and value:
                shape.warnings.append(f"{key}: not implemented yet, has no effect ({note})")
    for name, required in fields.items():
        if required.required and name in data and name not in out and required.type is str:
            out[name] = f"<invalid {_join(path, name)}>"  # refused above: a stand-in
    return out


def _value(
    value: Any, tp: Any, key: str, shape: Shape, dec_hook: DecHook, rules: Rules
) -> tuple[bool, Any]:
    """(True, value to keep) or (False, None) after noting the problem."""
    if _is_struct(tp):
        if not isinstance(value, Mapping):
            shape.problem(key, f"expected a table, got {_kind(value)}")
            return False, None
        return True, _table(value, tp, key, shape, dec_hook, rules)
    item = _struct_list_item(tp)
    if item is not None:
        if not isinstance(value, list):
            shape.problem(key, f"expected an array of tables ([[{key}]]), got {_kind(value)}")
            return False, None
        items = []
        for i, entry in enumerate(value):
            if not isinstance(entry, Mapping):
                shape.problem(f"{key}[{i}]", f"expected a table, got {_kind(entry)}")
                return False, None  # the whole array falls back: indexes stay true
            items.append(_table(entry, item, f"{key}[{i}]", shape, dec_hook, rules))
        return True, items
    if get_origin(tp) is dict and isinstance(value, Mapping):
        _, value_type = get_args(tp)
        kept = {}
        for name, entry in value.items():  # one problem per bad entry, named by its key
            ok, converted = _value(entry, value_type, _join(key, str(name)), shape, dec_hook, rules)
            if ok:
                kept[name] = converted
        return True, kept
    try:
        msgspec.convert(value, tp, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        where, text = _split(str(exc))
        shape.problem(key + where, text)
        return False, None
    return True, value


def _split(message: str) -> tuple[str, str]:
    """msgspec's "Expected `str`, got `int` - at `$[1]`" → ("[1]", "expected `str`, …")."""
    sub = ""
    m = _AT.match(message)
    if m:
        message, sub = m.group("msg"), m.group("sub")
        if sub.startswith("[...]"):  # a dict value: msgspec does not say which key
            sub = sub[len("[...]") :]
    return sub, message[:1].lower() + message[1:]


def _kind(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return names.get(type(value), type(value).__name__)
