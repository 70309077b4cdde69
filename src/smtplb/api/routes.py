"""The HTTP API (SPEC §3.3): injection, queue and member administration, health.

JSON in and out; errors are RFC 9457 problem documents. Whenever
``[http] api_keys`` is set, everything under ``/api/`` needs
``Authorization: Bearer KEY``; ``/healthz``, ``/readyz`` (and later
``/metrics`` and the dashboard) stay public while ``public_read`` is true.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from smtplb import __version__
from smtplb.intake.address import valid_address
from smtplb.model import Envelope, RecipientState
from smtplb.spool.base import MessageView, SpoolError
from smtplb.workers import merge_metrics, read_snapshots

if TYPE_CHECKING:
    from smtplb.service import Service

Handler = Callable[[Request], Awaitable[Response]]


def problem(status: int, title: str, detail: str = "") -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _authorized(request: Request) -> bool:
    keys = _service(request).config.http.api_keys
    if not keys:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return any(hmac.compare_digest(token.encode(), k.encode()) for k in keys)


def protected(handler: Handler) -> Handler:
    async def wrapper(request: Request) -> Response:
        if not _authorized(request):
            response = problem(401, "Unauthorized", "send Authorization: Bearer <api key>")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


def public(handler: Handler) -> Handler:
    """Public while ``[http] public_read`` is true, else like :func:`protected`."""

    async def wrapper(request: Request) -> Response:
        if not _service(request).config.http.public_read and not _authorized(request):
            return problem(401, "Unauthorized", "send Authorization: Bearer <api key>")
        return await handler(request)

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


def message_json(view: MessageView) -> dict[str, Any]:
    data = asdict(view)
    data.pop("msg_pk", None)
    for rcpt in data["recipients"]:
        rcpt["state"] = RecipientState(rcpt["state"]).label
        rcpt.pop("rid", None)
    return data


async def _json_body(request: Request) -> dict[str, Any] | JSONResponse:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return problem(400, "Malformed JSON", str(exc))
    if not isinstance(body, dict):
        return problem(400, "Malformed request", "the body must be a JSON object")
    return body


# -- health ------------------------------------------------------------------------


@public
async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


@public
async def readyz(request: Request) -> Response:
    """Readiness: 503 while draining, so a front load balancer stops sending."""
    if _service(request).draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    return JSONResponse({"status": "ready"})


@public
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    service = _service(request)
    await service.refresh_gauges()
    body = service.metrics.render()
    if service.workers > 1:
        peers = read_snapshots(service.data_dir, service.workers)
        body = merge_metrics([body.decode(), *(p["metrics"] for p in peers)]).encode()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@public
async def overview(request: Request) -> Response:
    """Aggregates for the dashboard: pools, members, queue, charts, recent errors.

    No addresses or content: public while ``public_read`` is true."""
    service = _service(request)
    live = service.live
    members = _members(service)
    peers = read_snapshots(service.data_dir, service.workers) if service.workers > 1 else []
    totals = dict(live.totals)
    series = live.series()
    errors = list(live.errors)
    waiting = {p.name: p.waiting() for p in service.pools.values()}
    for snap in peers:
        for key, value in snap["totals"].items():
            totals[key] = totals.get(key, 0) + value
        for key, values in snap["series"].items():
            if isinstance(values, list) and len(values) == len(series.get(key, [])):
                series[key] = [a + b for a, b in zip(series[key], values, strict=True)]
        errors += snap["errors"]
        for pool, count in snap["waiting"].items():
            waiting[pool] = waiting.get(pool, 0) + count
    errors.sort(key=lambda e: -e["ts"])
    return JSONResponse(
        {
            "hostname": service.config.hostname,
            "version": __version__,
            "uptime": time.time() - service.started_at,
            "draining": service.draining,
            "workers": service.workers,
            "pools": [
                {
                    "name": p.name,
                    "strategy": p.config.strategy,
                    "waiting": waiting.get(p.name, 0),
                    "members": [m for m in members if m["pool"] == p.name],
                }
                for p in service.pools.values()
            ],
            "queue": await service.queue.stats(),
            "queue_oldest_age": await service.queue.oldest_age(time.time()),
            "totals": totals,
            "series": series,
            "errors": errors[:50],
        }
    )


# -- queue ---------------------------------------------------------------------------


@protected
async def queue_list(request: Request) -> Response:
    """Queue statistics and messages, newest first (``?state=deferred&limit=100``)."""
    spool = _service(request).queue
    state_name = request.query_params.get("state")
    state = None
    if state_name:
        labels = {s.label: s for s in RecipientState}
        if state_name not in labels:
            return problem(400, "Unknown state", f"expected one of {', '.join(labels)}")
        state = labels[state_name]
    try:
        limit = min(1000, int(request.query_params.get("limit", "100")))
        offset = int(request.query_params.get("offset", "0"))
    except ValueError:
        return problem(400, "Malformed request", "limit and offset must be integers")
    messages = await spool.list_messages(state=state, limit=limit, offset=offset)
    return JSONResponse(
        {
            "stats": await spool.stats(),
            "oldest_age": await spool.oldest_age(time.time()),
            "messages": [message_json(m) for m in messages],
        }
    )


@protected
async def queue_show(request: Request) -> Response:
    """One message: each recipient's state and last reply, and the trace of decisions."""
    service = _service(request)
    queue_id = request.path_params["queue_id"]
    view = await service.queue.get(queue_id)
    if view is None:
        return problem(404, "No such message", queue_id)
    return JSONResponse({**message_json(view), "trace": service.traces.get(queue_id)})


@protected
async def queue_retry(request: Request) -> Response:
    """Make deferred recipients due now (one message, or all with ``/queue/retry``)."""
    service = _service(request)
    queue_id = request.path_params.get("queue_id")
    count = await service.queue.retry(queue_id)
    if queue_id is not None and count == 0 and await service.queue.get(queue_id) is None:
        return problem(404, "No such message", queue_id)
    service.dispatcher.wake()
    return JSONResponse({"retried": count})


@protected
async def queue_delete(request: Request) -> Response:
    """Remove a message from the queue."""
    queue_id = request.path_params["queue_id"]
    if not await _service(request).queue.delete(queue_id):
        return problem(404, "No such message", queue_id)
    return JSONResponse({"deleted": queue_id})


# -- pools and members -------------------------------------------------------------


_ADDITIVE = (
    "active",
    "idle_connections",
    "delivered",
    "deferred",
    "bounced",
    "failures",
    "per_minute",
)


def _members(service: Service) -> list[dict[str, Any]]:
    """Every member as the node sees it: this worker's view, plus the counters of
    the other workers when there are several (health is this worker's checks)."""
    members = [{**m.snapshot(), **service.live.member_rates(m.name)} for m in service.members()]
    if service.workers > 1:
        by_name = {m["name"]: m for m in members}
        for snap in read_snapshots(service.data_dir, service.workers):
            for peer in snap["members"]:
                mine = by_name.get(peer["name"])
                if mine is not None:
                    for key in _ADDITIVE:
                        mine[key] = (mine.get(key) or 0) + (peer.get(key) or 0)
                    mine["max_connections"] += peer["max_connections"]
    return members


def _member_json(service: Service, name: str) -> dict[str, Any]:
    return next(m for m in _members(service) if m["name"] == name)


@protected
async def members_list(request: Request) -> Response:
    """Every member with its health, load and counters."""
    return JSONResponse({"members": _members(_service(request))})


@protected
async def pools_list(request: Request) -> Response:
    """Every pool with its strategy, members and waiting jobs."""
    service = _service(request)
    return JSONResponse(
        {
            "pools": [
                {
                    "name": p.name,
                    "strategy": p.config.strategy,
                    "waiting": p.waiting(),
                    "members": [m.name for m in p.members],
                }
                for p in service.pools.values()
            ]
        }
    )


async def _set_paused(request: Request, paused: bool) -> Response:
    service = _service(request)
    name = request.path_params["name"]
    member = service.member(name)
    if member is None:
        return problem(404, "No such member", name)
    member.paused = paused
    names = service.paused.load()
    (names.add if paused else names.discard)(name)
    service.paused.save(names)
    service.delivery_log.write(
        "member_paused" if paused else "member_resumed",
        pool=member.pool,
        member=name,
        response="operator",
    )
    service.dispatcher.wake()
    return JSONResponse(_member_json(service, name))


@protected
async def member_pause(request: Request) -> Response:
    """Stop new traffic to a member; what it has in progress finishes. Survives restarts."""
    return await _set_paused(request, True)


@protected
async def member_resume(request: Request) -> Response:
    """Let a paused member take traffic again."""
    return await _set_paused(request, False)


@protected
async def drain(request: Request) -> Response:
    """Stop intake (421, /readyz 503); queued mail keeps being delivered."""
    _service(request).drain()
    return JSONResponse({"draining": True})


# -- injection -----------------------------------------------------------------------


@protected
async def inject(request: Request) -> Response:
    """Submit a message: ``{from, to, raw}`` or ``{from, to, subject, text, html, headers}``."""
    service = _service(request)
    if service.draining:
        return problem(503, "Draining", "this node takes no new mail; use another")
    body = await _json_body(request)
    if isinstance(body, JSONResponse):
        return body
    sender = body.get("from")
    rcpts = body.get("to")
    if isinstance(rcpts, str):
        rcpts = [rcpts]
    if not isinstance(sender, str) or (sender and not valid_address(sender)):
        return problem(422, "Invalid sender", "'from' must be an address or \"\"")
    if not isinstance(rcpts, list) or not rcpts:
        return problem(422, "Invalid recipients", "'to' must be a non-empty list of addresses")
    bad = [r for r in rcpts if not isinstance(r, str) or not valid_address(r)]
    if bad:
        return problem(422, "Invalid recipients", f"not addresses: {bad!r}")
    limit = service.config.smtp.max_recipients
    if len(rcpts) > limit:
        return problem(422, "Too many recipients", f"at most {limit} per message")
    raw = body.get("raw")
    if raw is not None:
        if not isinstance(raw, str):
            return problem(422, "Invalid raw", "'raw' must be the message as a string")
        content = raw.encode("utf-8")
        content = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    else:
        built = _build_message(sender, rcpts, body)
        if isinstance(built, JSONResponse):
            return built
        content = built
    if len(content) > service.config.smtp.max_message_size:
        return problem(413, "Message too large", "over smtp.max_message_size")
    envelope = Envelope(
        mail_from=sender,
        rcpt_to=list(rcpts),
        helo="http-api",
        client_ip=request.client.host if request.client else "",
        smtputf8=not (sender.isascii() and all(r.isascii() for r in rcpts)),
    )
    try:
        queue_id = await service.submit(envelope, content)
    except SpoolError:
        service.metrics.intake.labels("http", "5xx").inc()
        return problem(503, "Spool unavailable", "the message was not accepted; retry later")
    service.metrics.intake.labels("http", "2xx").inc()
    return JSONResponse({"queue_id": queue_id}, status_code=202)


def _build_message(sender: str, rcpts: list[str], body: dict[str, Any]) -> bytes | JSONResponse:
    text, html, subject = body.get("text"), body.get("html"), body.get("subject", "")
    headers = body.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        return problem(422, "Invalid headers", "'headers' must map names to strings")
    if text is None and html is None:
        return problem(422, "No content", "give 'raw', or 'text' and/or 'html'")
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender or "<>"
    msg["To"] = ", ".join(rcpts)
    msg["Subject"] = str(subject)
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or ":" in name:
            return problem(422, "Invalid headers", f"header {name!r} has a line break")
        msg[name] = value
    if text is not None:
        msg.set_content(str(text))
    if html is not None:
        if text is None:
            msg.set_content(str(html), subtype="html")
        else:
            msg.add_alternative(str(html), subtype="html")
    return msg.as_bytes()


# -- the app ---------------------------------------------------------------------------

ROUTES = [
    Route("/healthz", healthz),
    Route("/metrics", metrics),
    Route("/api/v1/overview", overview),
    Route("/readyz", readyz),
    Route("/api/v1/messages", inject, methods=["POST"]),
    Route("/api/v1/queue", queue_list),
    Route("/api/v1/queue/retry", queue_retry, methods=["POST"]),
    Route("/api/v1/queue/{queue_id}", queue_show),
    Route("/api/v1/queue/{queue_id}", queue_delete, methods=["DELETE"]),
    Route("/api/v1/queue/{queue_id}/retry", queue_retry, methods=["POST"]),
    Route("/api/v1/pools", pools_list),
    Route("/api/v1/members", members_list),
    Route("/api/v1/members/{name}/pause", member_pause, methods=["POST"]),
    Route("/api/v1/members/{name}/resume", member_resume, methods=["POST"]),
    Route("/api/v1/drain", drain, methods=["POST"]),
]


async def openapi(request: Request) -> Response:
    """The OpenAPI document for this API."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            paths.setdefault(route.path, {})[method.lower()] = {
                "summary": (route.endpoint.__doc__ or "").strip().splitlines()[0],
                "responses": {"200": {"description": "OK"}},
            }
    return JSONResponse(
        {
            "openapi": "3.1.0",
            "info": {"title": "smtplb API", "version": "1"},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}],
            "paths": paths,
        }
    )


STATIC = Path(__file__).parent.parent / "observability" / "static"


@public
async def dashboard(request: Request) -> Response:
    """The live dashboard (HTML; its data comes from /api/v1/overview)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def create_app(service: Service) -> Starlette:
    app = Starlette(
        routes=[
            Route("/", dashboard),
            *ROUTES,
            Route("/openapi.json", openapi),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ]
    )
    app.state.service = service
    return app
