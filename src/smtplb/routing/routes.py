"""Routes: which pool, priority lane and content class a recipient gets.

Pure functions over a :class:`RoutingInput`; the first route whose every
``match`` key matches wins, else the first pool with the class's default lane.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from smtplb.config import PRIORITIES, RouteConfig
from smtplb.model import domain_of

CLASS_HEADER = "x-smtplb-class"
DEFAULT_PRIORITY = {"transactional": 0, "marketing": 1, "bulk": 2}
BULK_RECIPIENTS = 50


@dataclass(frozen=True, slots=True)
class RoutingInput:
    sender: str
    recipient: str
    headers: Sequence[tuple[str, str]]  # (lower-cased name, value)
    content_class: str
    auth_user: str | None = None
    client_ip: str = ""


@dataclass(frozen=True, slots=True)
class RouteDecision:
    pool: str
    priority: int
    content_class: str
    route_index: int | None  # None: no route matched, default pool


_CAMPAIGN_HEADERS = ("x-campaign", "x-mailgun-campaign", "x-mc-", "feedback-id")


def classify_content(headers: Sequence[tuple[str, str]], recipient_count: int) -> str:
    """The content class from an explicit header, else the built-in heuristics (SPEC §1)."""
    names: dict[str, str] = {}
    for name, value in headers:
        names.setdefault(name, value)
    explicit = names.get(CLASS_HEADER, "").strip().lower()
    if explicit in DEFAULT_PRIORITY:
        return explicit
    precedence = names.get("precedence", "").strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return "bulk"
    if recipient_count > BULK_RECIPIENTS:
        return "bulk"
    if "list-unsubscribe" in names or "list-id" in names:
        return "marketing"
    for n in names:  # (a loop, not any() over a generator: this runs for every message)
        if n.startswith(_CAMPAIGN_HEADERS):
            return "marketing"
    return "transactional"


def _matches_value(pattern: str | list[str], value: str) -> bool:
    patterns = [pattern] if isinstance(pattern, str) else pattern
    value = value.lower()
    return any(fnmatch.fnmatchcase(value, p.lower()) for p in patterns)


def _matches_ip(networks: str | list[str], ip: str) -> bool:
    nets = [networks] if isinstance(networks, str) else networks
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(n, strict=False) for n in nets)


def _matches_header(spec: str | list[str], headers: Sequence[tuple[str, str]]) -> bool:
    """``header = "Name: pattern"`` (or a list of them, all of which must match)."""
    specs = [spec] if isinstance(spec, str) else spec
    for item in specs:
        name, _, pattern = item.partition(":")
        name, pattern = name.strip().lower(), pattern.strip() or "*"
        if not any(n == name and _matches_value(pattern, v.strip()) for n, v in headers):
            return False
    return True


def route_matches(route: RouteConfig, msg: RoutingInput) -> bool:
    for key, want in route.match.items():
        if key == "sender":
            ok = _matches_value(want, msg.sender)
        elif key == "sender_domain":
            ok = _matches_value(want, domain_of(msg.sender))
        elif key == "recipient":
            ok = _matches_value(want, msg.recipient)
        elif key == "recipient_domain":
            ok = _matches_value(want, domain_of(msg.recipient))
        elif key == "auth_user":
            ok = msg.auth_user is not None and _matches_value(want, msg.auth_user)
        elif key == "client_ip":
            ok = _matches_ip(want, msg.client_ip)
        elif key == "header":
            ok = _matches_header(want, msg.headers)
        elif key == "class":
            ok = _matches_value(want, msg.content_class)
        else:  # validated away by config; an unknown key never matches
            ok = False
        if not ok:
            return False
    return True


def decide_route(
    routes: Sequence[RouteConfig], default_pool: str, msg: RoutingInput
) -> RouteDecision:
    for index, route in enumerate(routes):
        if route_matches(route, msg):
            cls = route.content_class or msg.content_class
            priority = PRIORITIES[route.priority] if route.priority else DEFAULT_PRIORITY[cls]
            return RouteDecision(route.pool, priority, cls, index)
    return RouteDecision(default_pool, DEFAULT_PRIORITY[msg.content_class], msg.content_class, None)
