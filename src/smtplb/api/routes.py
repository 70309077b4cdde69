"""The HTTP API (SPEC §3.3): injection, queue and member administration, health.

JSON in and out; errors are RFC 9457 problem documents. Whenever
``[http] api_keys`` is set, everything under ``/api/`` needs
``Authorization: Bearer KEY``; ``/healthz``, ``/readyz`` (and later
``/metrics`` and the dashboard) stay public while ``public_read`` is true.

The handlers talk to the node only through :class:`~smtplb.api.operations.Operations`;
each declares its answers for ``/openapi.json`` with :func:`~smtplb.api.openapi.documented`.
"""

from __future__ import annotations

import functools
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from smtplb import __version__
from smtplb.api.compose import build_message, check_envelope_headers, raw_content
from smtplb.api.openapi import document, documented, mark_access
from smtplb.api.operations import Operations
from smtplb.api.problem import problem
from smtplb.api.security import guard
from smtplb.intake.address import valid_address
from smtplb.intake.compliance import MessageRefused
from smtplb.model import Envelope, RecipientState
from smtplb.observability.live import redacted
from smtplb.reputation.feedback import FeedbackError, parse_arf, parse_event
from smtplb.reputation.state import Suppression, normalize, normalize_domain
from smtplb.spool.base import MessageView, SpoolError

Handler = Callable[[Request], Awaitable[Response]]


def _ops(request: Request) -> Operations:
    ops: Operations = request.app.state.ops
    return ops


def _authorized(request: Request) -> bool:
    keys = _ops(request).config.http.api_keys
    if not keys:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return any(hmac.compare_digest(token.encode(), k.encode()) for k in keys)


def _public_json(request: Request, view: dict[str, Any]) -> JSONResponse:
    """A view served without a key: addresses redacted unless a valid key came with it
    (not merely: none is configured)."""
    if _ops(request).config.http.api_keys and _authorized(request):
        return JSONResponse(view)
    return JSONResponse(redacted(view))


def protected(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        if not _authorized(request):
            response = problem(401, "Unauthorized", "send Authorization: Bearer <api key>")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    return mark_access(wrapper, "protected")


def public(handler: Handler) -> Handler:
    """Public while ``[http] public_read`` is true, else like :func:`protected`."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        if not _ops(request).config.http.public_read and not _authorized(request):
            return problem(401, "Unauthorized", "send Authorization: Bearer <api key>")
        return await handler(request)

    return mark_access(wrapper, "public")


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
@documented((200, "Status", "The process answers"))
async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


@public
@documented((200, "Status", "Taking mail"), fails=[503])
async def readyz(request: Request) -> Response:
    """Readiness: 503 while draining, so a front load balancer stops sending."""
    if _ops(request).draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    return JSONResponse({"status": "ready"})


@public
@documented((200, None, "Prometheus text exposition"), content_type=CONTENT_TYPE_LATEST)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(await _ops(request).metrics_text(), media_type=CONTENT_TYPE_LATEST)


@public
@documented((200, "Overview", "Dashboard aggregates"))
async def overview(request: Request) -> Response:
    """Aggregates for the dashboard: pools, members, queue, charts, recent errors.

    Public while ``public_read`` is true: without a valid key, anything address-like
    (upstream replies name recipients) is redacted."""
    return _public_json(request, await _ops(request).overview())


@public
@documented((200, "Cluster", "The nodes and their heartbeats"))
async def cluster(request: Request) -> Response:
    """The nodes of the cluster: queue depth, rate, health summary, version, age of
    the heartbeat; this node is marked ``self`` (and alone without ``[cluster] redis``)."""
    return JSONResponse(await _ops(request).cluster())


# -- queue ---------------------------------------------------------------------------


@protected
@documented(
    (200, "QueueList", "Statistics and messages"),
    fails=[400],
    query=[("state", "string"), ("limit", "integer"), ("offset", "integer")],
)
async def queue_list(request: Request) -> Response:
    """Queue statistics and messages, newest first (``?state=deferred&limit=100``)."""
    ops = _ops(request)
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
    messages = await ops.list_messages(state, limit, offset)
    stats, oldest_age = await ops.queue_stats()
    return JSONResponse(
        {
            "stats": stats,
            "oldest_age": oldest_age,
            "messages": [message_json(m) for m in messages],
        }
    )


@protected
@documented((200, "MessageDetail", "The message and its trace"), fails=[404])
async def queue_show(request: Request) -> Response:
    """One message: each recipient's state and last reply, and the trace of decisions."""
    ops = _ops(request)
    queue_id = request.path_params["queue_id"]
    view = await ops.message(queue_id)
    if view is None:
        return problem(404, "No such message", queue_id)
    return JSONResponse({**message_json(view), "trace": await ops.trace(queue_id)})


@protected
@documented((200, "Retried", "How many recipients are due now"), fails=[404])
async def queue_retry(request: Request) -> Response:
    """Make one message's deferred recipients due now."""
    queue_id = request.path_params["queue_id"]
    count = await _ops(request).retry(queue_id)
    if count is None:
        return problem(404, "No such message", queue_id)
    return JSONResponse({"retried": count})


@protected
@documented((200, "Retried", "How many recipients are due now"))
async def queue_retry_all(request: Request) -> Response:
    """Make every deferred recipient due now."""
    return JSONResponse({"retried": await _ops(request).retry(None) or 0})


@protected
@documented((200, "Deleted", "Removed"), fails=[404])
async def queue_delete(request: Request) -> Response:
    """Remove a message from the queue."""
    queue_id = request.path_params["queue_id"]
    if not await _ops(request).delete(queue_id):
        return problem(404, "No such message", queue_id)
    return JSONResponse({"deleted": queue_id})


# -- pools and members -------------------------------------------------------------


@protected
@documented((200, "MemberList", "Every member"))
async def members_list(request: Request) -> Response:
    """Every member with its health, load and counters."""
    return JSONResponse({"members": _ops(request).member_views()})


@protected
@documented((200, "PoolList", "Every pool"))
async def pools_list(request: Request) -> Response:
    """Every pool with its strategy, members and waiting jobs."""
    return JSONResponse({"pools": _ops(request).pool_views()})


@protected
@documented((200, "ProviderList", "Every mailbox provider"))
async def providers_list(request: Request) -> Response:
    """Mailbox providers: limits, rules, and per member connections, rate and suspensions."""
    return JSONResponse({"providers": _ops(request).provider_views()})


@protected
@documented((200, "Compliance", "The complaint budget of every sender domain in the window"))
async def compliance(request: Request) -> Response:
    """Per sender domain: delivered marketing and bulk mail, complaints, rate and state
    (ok, throttled, stopped) over ``[reputation] window``; the dashboard's panel."""
    return JSONResponse(_ops(request).compliance_view())


@protected
@documented((200, "BudgetLift", "The domain's mail goes again for one window"), fails=[404, 409])
async def compliance_lift(request: Request) -> Response:
    """Lift a sender domain's complaint budget for one ``[reputation] window``: its held
    mail goes at its next retry (``POST /api/v1/queue/retry`` sends it now)."""
    domain = request.path_params["domain"]
    ops = _ops(request)
    if not ops.compliance_view()["complaint_budget"]["enabled"]:
        return problem(409, "Complaint budget off", "[compliance] complaint_budget is false")
    lifted = ops.lift_complaint_budget(domain)
    if lifted is None:
        return problem(404, "No such sender domain in the complaint budget's window", domain)
    return JSONResponse(lifted)


def _member_or_404(name: str, member: dict[str, Any] | None) -> JSONResponse:
    """A member action's answer: the member's view, or 404 when there is no such member."""
    return problem(404, "No such member", name) if member is None else JSONResponse(member)


@protected
@documented((200, "Member", "The member, now paused"), fails=[404])
async def member_pause(request: Request) -> Response:
    """Stop new traffic to a member; what it has in progress finishes. Survives restarts."""
    name = request.path_params["name"]
    return _member_or_404(name, _ops(request).pause(name))


@protected
@documented((200, "Member", "The member, taking traffic again"), fails=[404])
async def member_resume(request: Request) -> Response:
    """Let a paused member take traffic again."""
    name = request.path_params["name"]
    return _member_or_404(name, _ops(request).resume(name))


# -- experiments -----------------------------------------------------------------


@public
@documented((200, "ExperimentList", "Every configured experiment"))
async def experiments_list(request: Request) -> Response:
    """The configured experiments and their state (aggregates: no addresses)."""
    return JSONResponse({"experiments": _ops(request).experiment_views()})


def _no_experiment(request: Request, name: str) -> JSONResponse:
    names = ", ".join(e["name"] for e in _ops(request).experiment_views()) or "none configured"
    return problem(404, "No such experiment", f"{name!r} (experiments: {names})")


@public
@documented((200, "ExperimentReport", "The report"), fails=[404])
async def experiment_report(request: Request) -> Response:
    """An experiment's report: per variant and metric, intervals, p-values, verdicts."""
    name = request.path_params["name"]
    report = await _ops(request).experiment_report(name)
    return _no_experiment(request, name) if report is None else JSONResponse(report)


@protected
@documented((200, "ExperimentReport", "The report, now running"), fails=[404])
async def experiment_start(request: Request) -> Response:
    """Start (or restart) an experiment; stopped variants get their traffic back."""
    name = request.path_params["name"]
    report = await _ops(request).set_experiment_running(name, True)
    return _no_experiment(request, name) if report is None else JSONResponse(report)


@protected
@documented((200, "ExperimentReport", "The report, now stopped"), fails=[404])
async def experiment_stop(request: Request) -> Response:
    """Stop an experiment: its pool's traffic goes the pool's own way; counts are kept."""
    name = request.path_params["name"]
    report = await _ops(request).set_experiment_running(name, False)
    return _no_experiment(request, name) if report is None else JSONResponse(report)


@protected
@documented((200, "Member", "The member, now quarantined"), fails=[404])
async def member_quarantine(request: Request) -> Response:
    """Quarantine a member: no traffic for ``[reputation] quarantine``, then probation."""
    name = request.path_params["name"]
    return _member_or_404(name, _ops(request).quarantine(name))


@protected
@documented((200, "Member", "The member, its reputation ok again"), fails=[404])
async def member_release(request: Request) -> Response:
    """Release a member from quarantine, throttling or probation (its counts start again)."""
    name = request.path_params["name"]
    return _member_or_404(name, _ops(request).release(name))


@protected
@documented(
    (200, "FeedbackResult", "The complaint, matched, counted and suppressed"),
    fails=[400, 422],
    request="FeedbackEvent",
)
async def feedback(request: Request) -> Response:
    """A complaint: an ARF report (RFC 5965, posted as ``multipart/report``) or a JSON
    event ``{"type": "complaint", "recipient", "queue_id"?, "message_id"?}``."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    try:
        if media in ("multipart/report", "message/rfc822"):
            report = parse_arf(await request.body())
        else:
            body = await _json_body(request)
            if isinstance(body, JSONResponse):
                return body
            report = parse_event(body)
    except FeedbackError as exc:
        return problem(422, "Unusable feedback", str(exc))
    return JSONResponse(await _ops(request).feedback(report))


# -- suppression list --------------------------------------------------------------


def _valid_domain(domain: object) -> bool:
    """ "" (every sender) or a domain name, as a sender's address would carry it."""
    return isinstance(domain, str) and (
        not domain or valid_address("x@" + normalize_domain(domain))
    )


def suppression_entries(body: dict[str, Any], now: float) -> list[Suppression] | str:
    """A POST body as entries, or what is wrong with it: ``{"addresses": [...],
    "reason"?, "domain"?}`` (or ``"address"``), or ``{"entries": [{"address",
    "reason"?, "domain"?}, ...]}`` (an import that keeps each entry's own fields)."""
    if "entries" in body:
        rows = body["entries"]
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            return "entries: a non-empty list of {address, reason, domain} objects"
    else:
        addresses = body.get("addresses", [body["address"]] if "address" in body else None)
        if not isinstance(addresses, list) or not addresses:
            return "addresses: a non-empty list of mail addresses"
        rows = [
            {"address": a, "reason": body.get("reason", ""), "domain": body.get("domain", "")}
            for a in addresses
        ]
    entries = []
    for row in rows:
        address, reason, domain = row.get("address"), row.get("reason", ""), row.get("domain", "")
        if not isinstance(address, str) or not valid_address(normalize(address)):
            return f"addresses: not a mail address: {address!r}"
        if not isinstance(reason, str):
            return "reason: must be a string"
        if not _valid_domain(domain):
            return (
                f'domain: a sender domain like shop.example, or "" for every sender; got {domain!r}'
            )
        entries.append(Suppression(address, reason, "operator", now, normalize_domain(domain)))
    return entries


@protected
@documented(
    (200, "SuppressionList", "Suppressed addresses, by address and scope"),
    fails=[400],
    query=[
        ("address", "string"),
        ("domain", "string"),
        ("limit", "integer"),
        ("offset", "integer"),
    ],
)
async def suppressions_list(request: Request) -> Response:
    """The suppression list (``?limit=100&offset=0``, ``?address=`` for one address,
    ``?domain=`` for one scope: a sender domain, or empty for the global entries)."""
    state = _ops(request).reputation_state
    query = request.query_params
    try:
        limit = min(10_000, int(query.get("limit", "100")))
        offset = int(query.get("offset", "0"))
    except ValueError:
        return problem(400, "Malformed request", "limit and offset must be integers")
    domain = query.get("domain")
    if domain is not None and not _valid_domain(domain):
        return problem(400, "Malformed request", f"domain: not a domain name: {domain!r}")
    entries = await state.suppressions(
        limit=limit, offset=offset, address=query.get("address"), domain=domain
    )
    return JSONResponse(
        {
            "total": await state.suppression_count(domain),
            "suppressions": [msgspec.to_builtins(e) for e in entries],
        }
    )


@protected
@documented(
    (200, "Suppressed", "How many entries were added"),
    fails=[400, 422],
    request="SuppressRequest",
)
async def suppressions_add(request: Request) -> Response:
    """Suppress addresses: ``{"addresses": [...], "reason": "...", "domain": "..."}``
    (``domain`` "" or absent: for every sender), or ``{"entries": [...]}``."""
    body = await _json_body(request)
    if isinstance(body, JSONResponse):
        return body
    entries = suppression_entries(body, time.time())
    if isinstance(entries, str):
        return problem(422, "Invalid field", entries)
    added = await _ops(request).reputation_state.suppress(entries)
    return JSONResponse({"added": added, "requested": len(entries)})


@protected
@documented(
    (200, "Unsuppressed", "The address is no longer suppressed in that scope"),
    fails=[400, 404],
    query=[("domain", "string")],
)
async def suppressions_remove(request: Request) -> Response:
    """Take an address off the suppression list: its global entry, or with
    ``?domain=`` its entry for that sender domain."""
    address = request.path_params["address"]
    domain = request.query_params.get("domain", "")
    if not _valid_domain(domain):
        return problem(400, "Malformed request", f"domain: not a domain name: {domain!r}")
    if not await _ops(request).reputation_state.unsuppress([address], domain):
        scope = f" for {normalize_domain(domain)}" if domain else ""
        return problem(404, "Not suppressed", f"{normalize(address)}{scope}")
    return JSONResponse({"removed": normalize(address), "domain": normalize_domain(domain)})


@protected
@documented((200, "Draining", "The node is draining"))
async def drain(request: Request) -> Response:
    """Stop intake (421, /readyz 503); queued mail keeps being delivered."""
    _ops(request).drain()
    return JSONResponse({"draining": True})


@protected
@documented((200, "Draining", "The node takes mail again"))
async def undrain(request: Request) -> Response:
    """Undo a drain: intake answers 250 again and /readyz 200."""
    _ops(request).undrain()
    return JSONResponse({"draining": False})


# -- injection -----------------------------------------------------------------------


@protected
@documented(
    (202, "Queued", "Accepted and stored"),
    fails=[400, 413, 422, 503],
    request="InjectRequest",
)
async def inject(request: Request) -> Response:
    """Submit a message: ``{from, to, raw}`` or ``{from, to, subject, text, html, headers}``."""
    ops = _ops(request)
    if ops.draining:
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
    refused = check_envelope_headers(sender, rcpts)
    if refused is not None:
        return refused
    limit = ops.config.smtp.max_recipients
    if len(rcpts) > limit:
        return problem(422, "Too many recipients", f"at most {limit} per message")
    raw = body.get("raw")
    built = raw_content(raw) if raw is not None else build_message(sender, rcpts, body)
    if isinstance(built, JSONResponse):
        return built
    content = built
    if len(content) > ops.config.smtp.max_message_size:
        return problem(413, "Message too large", "over smtp.max_message_size")
    envelope = Envelope(
        mail_from=sender,
        rcpt_to=list(rcpts),
        helo="http-api",
        client_ip=request.client.host if request.client else "",
        smtputf8=not (sender.isascii() and all(r.isascii() for r in rcpts)),
    )
    try:
        queue_id = await ops.inject(envelope, content)
    except SpoolError:
        return problem(503, "Spool unavailable", "the message was not accepted; retry later")
    except MessageRefused as exc:  # a compliance check: the same text as SMTP's 5.7.1
        return problem(422, "Message refused", f"{exc.reply.enhanced_code} {exc.reply.text}")
    return JSONResponse({"queue_id": queue_id}, status_code=202)


# -- the app ---------------------------------------------------------------------------

ROUTES = [
    Route("/healthz", healthz),
    Route("/metrics", metrics),
    Route("/api/v1/overview", overview),
    Route("/api/v1/cluster", cluster),
    Route("/readyz", readyz),
    Route("/api/v1/messages", inject, methods=["POST"]),
    Route("/api/v1/queue", queue_list),
    Route("/api/v1/queue/retry", queue_retry_all, methods=["POST"]),
    Route("/api/v1/queue/{queue_id}", queue_show),
    Route("/api/v1/queue/{queue_id}", queue_delete, methods=["DELETE"]),
    Route("/api/v1/queue/{queue_id}/retry", queue_retry, methods=["POST"]),
    Route("/api/v1/pools", pools_list),
    Route("/api/v1/members", members_list),
    Route("/api/v1/providers", providers_list),
    Route("/api/v1/compliance", compliance),
    Route("/api/v1/compliance/domains/{domain}/lift", compliance_lift, methods=["POST"]),
    Route("/api/v1/members/{name}/pause", member_pause, methods=["POST"]),
    Route("/api/v1/members/{name}/resume", member_resume, methods=["POST"]),
    Route("/api/v1/members/{name}/quarantine", member_quarantine, methods=["POST"]),
    Route("/api/v1/members/{name}/release", member_release, methods=["POST"]),
    Route("/api/v1/feedback", feedback, methods=["POST"]),
    Route("/api/v1/suppressions", suppressions_list),
    Route("/api/v1/suppressions", suppressions_add, methods=["POST"]),
    Route("/api/v1/suppressions/{address}", suppressions_remove, methods=["DELETE"]),
    Route("/api/v1/drain", drain, methods=["POST"]),
    Route("/api/v1/drain", undrain, methods=["DELETE"]),
    Route("/api/v1/experiments", experiments_list),
    Route("/api/v1/experiments/{name}", experiment_report),
    Route("/api/v1/experiments/{name}/start", experiment_start, methods=["POST"]),
    Route("/api/v1/experiments/{name}/stop", experiment_stop, methods=["POST"]),
]


@documented((200, None, "This document"))
async def openapi(request: Request) -> Response:
    """The OpenAPI document for this API."""
    return JSONResponse(document(request.app.routes, __version__))


STATIC = Path(__file__).parent.parent / "observability" / "static"


@public
@documented((200, None, "The dashboard page"), content_type="text/html")
async def dashboard(request: Request) -> Response:
    """The live dashboard (HTML; its data comes from /api/v1/overview)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def create_app(ops: Operations) -> Starlette:
    app = Starlette(
        routes=[
            Route("/", dashboard),
            *ROUTES,
            Route("/openapi.json", openapi),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[guard(lambda: ops.config)],
    )
    app.state.ops = ops
    return app
