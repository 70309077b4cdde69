"""Durations ("30s", "5m", "2h", "1d"), sizes ("25MB"), rates and ``host:port``
addresses as config values."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
# Beyond these a value is a typo, not a setting (and would overflow SQLite's integers).
MAX_DURATION = 100 * 365 * 86400.0  # 100 years
MAX_SIZE = 2**50  # 1 PiB


class Duration(float):
    """Seconds, written in config as a number or "30s", "5m", "2h", "1d"."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError(f'expected a duration like "30s", got {value!r}')
        if isinstance(value, int | float):
            return cls._checked(float(value), value)
        if isinstance(value, str):
            m = _DURATION.match(value)
            if m:
                seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
                return cls._checked(seconds, value)
        raise ValueError(f'expected a duration like "30s", "5m", "2h" or "1d", got {value!r}')

    @classmethod
    def _checked(cls, seconds: float, value: object) -> Duration:
        if math.isnan(seconds) or seconds < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        if seconds > MAX_DURATION:
            raise ValueError(f"a duration must be at most 100 years, got {value!r}")
        return cls(seconds)


class Size(int):
    """Bytes, written in config as a number or "25MB", "512KB", "1GiB"."""

    @classmethod
    def parse(cls, value: object) -> Size:
        if isinstance(value, bool):
            raise ValueError(f'expected a size like "25MB", got {value!r}')
        if isinstance(value, int):
            return cls._checked(value, value)
        if isinstance(value, str):
            m = _SIZE.match(value)
            if m:
                unit = m.group(2).lower()
                binary = "i" in unit
                prefix = unit[:1] if unit[:1] in "kmgt" else ""
                factor = 1024 ** "kmgt".index(prefix) * 1024 if binary and prefix else 0
                if not factor:
                    factor = _SIZE_UNITS[prefix]
                return cls._checked(float(m.group(1)) * factor, value)
        raise ValueError(f'expected a size like "25MB" or a number of bytes, got {value!r}')

    @classmethod
    def _checked(cls, size: float, value: object) -> Size:
        if size < 0:
            raise ValueError(f"a size cannot be negative, got {value!r}")
        if size > MAX_SIZE:
            raise ValueError(f"a size must be at most 1PiB, got {value!r}")
        return cls(int(size))


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h|d)\s*$")
_RATE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(value: str) -> float:
    """Messages per second from ``"N/s"``, ``"N/m"``, ``"N/h"`` or ``"N/d"``."""
    m = _RATE.match(value) if isinstance(value, str) else None
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(
            f'expected a rate like "120/m" (N/s, N/m, N/h or N/d, N > 0), got {value!r}'
        )
    return float(m.group(1)) / _RATE_UNITS[m.group(2)]


def format_duration(seconds: float) -> str:
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return f"{seconds:g}s"


def parse_hostport(value: str, *, default_host: str | None = None) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` → (host, port); ValueError when malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        if default_host is None:
            raise ValueError(f"expected host:port, got {value!r}")
        host, port_text = default_host, value
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"expected host:port with a port from 1 to 65535, got {value!r}")
    return host, int(port_text)
