"""The HTTP guard: what every request passes before a route sees it, and what
every answer tells the browser.

Browsers are the threat here, not API clients: with the default config (no
``api_keys``, bound to loopback) any page open on the operator's machine can
send requests to the API, and a page whose name is re-pointed at 127.0.0.1
(DNS rebinding) can even read the answers. So:

* **Host allow-list** (421): a rebinding page sends ``Host: evil.test``.
  Allowed are IP literals (a rebinding page cannot have one as its origin:
  a page at ``http://127.0.0.1`` *is* this node), ``localhost`` and
  ``*.localhost`` (browsers resolve those to loopback themselves), the
  node's ``hostname``, the host of ``http.listen``, and the names in
  ``http.allowed_hosts`` (``"*"``: any name).
* **No cross-site changes** (403): POST, PUT, PATCH and DELETE are refused
  when the browser says ``Sec-Fetch-Site: cross-site`` or ``same-site``,
  or, without that header, sends an ``Origin`` that is not this node (nor a
  name in ``http.allowed_hosts``, e.g. a reverse proxy's). A request with
  neither header comes from a program (curl, the CLI), not from a page.
* **JSON bodies only** on those methods (415): a page can send ``text/plain``
  or a form without a CORS preflight, never ``application/json``. A request
  without a body and without a type (``smtplb members pause``) is fine.
* **Bounded bodies** (413): refused from ``Content-Length`` before a byte of
  the body is read, and counted during the read when chunked, so memory is
  bounded by :func:`body_limit`, not by the sender. A refusal closes the
  connection, so an unread body is not parsed either.
* **Headers on every answer**: a Content-Security-Policy without inline
  script or style, no framing, no MIME sniffing, no referrer.

The decisions are plain functions; :class:`HttpGuard` is the ASGI shell.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smtplb.api.problem import problem
from smtplb.config import Config
from smtplb.units import parse_hostport

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_OVERHEAD = 64 * 1024  # the envelope fields around the message

# The dashboard loads its script, style and data from this node only; the
# favicon is a data: URL. No inline script or style, no framing, no forms.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer given instead of the route's: status, title and detail of the problem."""

    status: int
    title: str
    detail: str


def body_limit(max_message_size: int) -> int:
    """The largest request body read: a message of ``smtp.max_message_size`` as a
    JSON string, where escaping (each CR LF written ``\\r\\n``, each quote ``\\"``)
    at most doubles ordinary text, plus room for the envelope fields."""
    return 2 * max_message_size + JSON_OVERHEAD


def host_name(value: str) -> str:
    """``name``, ``name:port``, ``[v6]:port`` → the lower-case name without port or final dot."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    host, colon, port = value.rpartition(":")
    if colon and port.isdigit() and ":" not in host:
        value = host
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which ``Host`` names this node answers to (see the module docstring)."""

    names: frozenset[str]  # the node's own names, lower case, no port
    trusted: frozenset[str]  # http.allowed_hosts: also trusted as a page's Origin
    any_host: bool = False

    @classmethod
    def from_config(cls, config: Config) -> HostPolicy:
        allowed = [host_name(h) for h in config.http.allowed_hosts]
        try:
            listen_host = host_name(parse_hostport(config.http.listen)[0])
        except ValueError:
            listen_host = ""
        own = {host_name(config.hostname), listen_host, *allowed} - {"", "*"}
        return cls(frozenset(own), frozenset(allowed) - {"*"}, "*" in allowed)

    def allows(self, host: str) -> bool:
        name = host_name(host)
        return (
            self.any_host
            or name in self.names
            or name == "localhost"
            or name.endswith(".localhost")
            or _is_ip(name)
        )


def host_refusal(headers: Mapping[str, str], policy: HostPolicy) -> Refusal | None:
    """421 for a ``Host`` that is not one of this node's names (DNS rebinding)."""
    host = headers.get("host")
    if host is None or policy.allows(host):  # no Host: HTTP/1.0, never a browser
        return None
    return Refusal(
        421,
        "Misdirected request",
        f"Host {host!r} is not a name of this node; if it is, add it to http.allowed_hosts",
    )


def _origin_is(origin: str, host: str) -> bool:
    """True when the page origin ``scheme://name[:port]`` is the origin ``host`` serves."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if default is None or not parts.hostname:
        return False
    want_host, _, want_port = host.lower().rpartition(":")
    if not want_port.isdigit() or want_host.endswith(":"):
        want_host, want_port = host.lower(), str(default)
    return host_name(parts.netloc) == host_name(want_host) and (port or default) == int(want_port)


def cross_site_refusal(
    method: str, headers: Mapping[str, str], policy: HostPolicy
) -> Refusal | None:
    """403 for a state-changing request that a page of another site made a browser send."""
    if method not in STATE_CHANGING:
        return None
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return Refusal(
            403, "Cross-site request", f"refused: the browser marks it Sec-Fetch-Site: {site}"
        )
    if site in ("same-origin", "none"):  # the browser vouches for it
        return None
    origin = headers.get("origin")
    if origin is None:  # not sent by a page: curl, the CLI, a script
        return None
    host = headers.get("host", "")
    try:
        trusted = host_name(urlsplit(origin).netloc) in policy.trusted
    except ValueError:
        trusted = False
    if trusted or (host and _origin_is(origin, host)):
        return None
    return Refusal(
        403,
        "Cross-site request",
        f"refused: sent by a page of {origin!r}, not of this node; a page of another name "
        "must be listed in http.allowed_hosts",
    )


# Types a page cannot send without a CORS preflight, like JSON: ARF reports
# (RFC 5965) are posted as they are to /api/v1/feedback.
_REPORT_TYPES = ("multipart/report", "message/rfc822")


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return (
        media == "application/json"
        or (media.startswith("application/") and media.endswith("+json"))
        or media in _REPORT_TYPES
    )


def body_refusal(method: str, headers: Mapping[str, str], limit: int) -> Refusal | None:
    """413 for a declared body over ``limit``; 415 for a body on a state-changing
    request that is not JSON (form posts and ``text/plain`` are what pages can send)."""
    length_text = headers.get("content-length")
    length = 0
    if length_text is not None:
        if not (length_text.isascii() and length_text.isdigit()):
            return Refusal(400, "Malformed request", "Content-Length must be a number of bytes")
        length = int(length_text)
        if length > limit:
            return _too_large(limit, length)
    if method not in STATE_CHANGING:
        return None
    content_type = headers.get("content-type")
    if content_type is None:
        if length or "transfer-encoding" in headers:
            return Refusal(415, "Unsupported media type", "send the body as application/json")
        return None
    if not _is_json(content_type):
        return Refusal(
            415,
            "Unsupported media type",
            f"{content_type.split(';', 1)[0].strip()!r}: send application/json",
        )
    return None


def guard_answers(method: str) -> tuple[int, ...]:
    """The statuses the guard may answer instead of a route (for the OpenAPI document)."""
    return (403, 413, 415, 421) if method in STATE_CHANGING else (413, 421)


def _too_large(limit: int, length: int | None = None) -> Refusal:
    size = f"the body is {length} bytes; " if length is not None else ""
    return Refusal(
        413,
        "Request body too large",
        f"{size}at most {limit} bytes are read (twice smtp.max_message_size, for JSON escaping)",
    )


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a body grows past the limit during the read."""


class HttpGuard:
    """ASGI middleware: the checks above, the body count and the security headers."""

    def __init__(self, app: ASGIApp, *, config: Callable[[], Config]) -> None:
        self.app = app
        self._config = config
        self._seen: Config | None = None
        self._hosts = HostPolicy(frozenset(), frozenset())
        self._limit = 0

    def _policy(self) -> tuple[HostPolicy, int]:
        config = self._config()
        if config is not self._seen:  # first request, or a reload (SIGHUP)
            self._hosts = HostPolicy.from_config(config)
            self._limit = body_limit(config.smtp.max_message_size)
            self._seen = config
        return self._hosts, self._limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts, limit = self._policy()
        headers = Headers(scope=scope)
        method = scope["method"]
        refusal = (
            host_refusal(headers, hosts)
            or cross_site_refusal(method, headers, hosts)
            or body_refusal(method, headers, limit)
        )
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                response_headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    if name not in response_headers:
                        response_headers[name] = value
            await send(message)

        if refusal is not None:
            await _refuse(refusal, scope, receive, send_with_headers)
            return

        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, counted_receive, send_with_headers)
        except BodyTooLarge:
            if started:
                raise
            await _refuse(_too_large(limit), scope, receive, send_with_headers)

    def __repr__(self) -> str:
        return f"HttpGuard(hosts={sorted(self._hosts.names)}, body_limit={self._limit})"


async def _refuse(refusal: Refusal, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem(refusal.status, refusal.title, refusal.detail)
    response.headers["connection"] = "close"  # what is left of the body is never read
    await response(scope, receive, send)


def guard(config: Callable[[], Config]) -> Middleware:
    """The guard as Starlette middleware; ``config`` returns the current config."""
    return Middleware(HttpGuard, config=config)
