"""The HTTP API (SPEC §3.3): injection, queue and member administration, health.

JSON in and out; errors are RFC 9457 problem documents. Whenever
``[http] api_keys`` is set, everything under ``/api/`` needs
``Authorization: Bearer KEY``; ``/healthz``, ``/readyz`` (and later
``/metrics`` and the dashboard) stay public while ``public_read`` is true.

The handlers talk to the node only through :class:`~smtplb.api.operations.Operations`;
each declares its answers for ``/openapi.json`` with :func:`~smtplb.api.openapi.documented`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from smtplb import __version__
from smtplb.api.access import (
    json_body,
    message_json,
    ops_of,
    protected,
    public,
    public_json,
)
from smtplb.api.compose import build_message, check_envelope_headers, raw_content
from smtplb.api.openapi import document, documented
from smtplb.api.operations import Operations
from smtplb.api.problem import problem
from smtplb.api.reputation_routes import (
    compliance,
    compliance_lift,
    feedback,
    suppressions_add,
    suppressions_list,
    suppressions_remove,
)
from smtplb.api.security import guard
from smtplb.intake.address import valid_address
from smtplb.intake.compliance import MessageRefused
from smtplb.model import Envelope, RecipientState
from smtplb.spool.base import SpoolError

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
    if ops_of(request).draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    return JSONResponse({"status": "ready"})


@public
@documented((200, None, "Prometheus text exposition"), content_type=CONTENT_TYPE_LATEST)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(await ops_of(request).metrics_text(), media_type=CONTENT_TYPE_LATEST)


@public
@documented((200, "Overview", "Dashboard aggregates"))
async def overview(request: Request) -> Response:
    """Aggregates for the dashboard: pools, members, queue, charts, recent errors.

    Public while ``public_read`` is true: without a valid key, anything address-like
    (upstream replies name recipients) is redacted."""
    return public_json(request, await ops_of(request).overview())


@public
@documented((200, "Cluster", "The nodes and their heartbeats"))
async def cluster(request: Request) -> Response:
    """The nodes of the cluster: queue depth, rate, health summary, version, age of
    the heartbeat; this node is marked ``self`` (and alone without ``[cluster] redis``)."""
    return JSONResponse(await ops_of(request).cluster())


# -- queue ---------------------------------------------------------------------------


@protected
@documented(
    (200, "QueueList", "Statistics and messages"),
    fails=[400],
    query=[("state", "string"), ("limit", "integer"), ("offset", "integer")],
)
async def queue_list(request: Request) -> Response:
    """Queue statistics and messages, newest first (``?state=deferred&limit=100``)."""
    ops = ops_of(request)
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
    ops = ops_of(request)
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
    count = await ops_of(request).retry(queue_id)
    if count is None:
        return problem(404, "No such message", queue_id)
    return JSONResponse({"retried": count})


@protected
@documented((200, "Retried", "How many recipients are due now"))
async def queue_retry_all(request: Request) -> Response:
    """Make every deferred recipient due now."""
    return JSONResponse({"retried": await ops_of(request).retry(None) or 0})


@protected
@documented((200, "Deleted", "Removed"), fails=[404])
async def queue_delete(request: Request) -> Response:
    """Remove a message from the queue."""
    queue_id = request.path_params["queue_id"]
    if not await ops_of(request).delete(queue_id):
        return problem(404, "No such message", queue_id)
    return JSONResponse({"deleted": queue_id})


# -- pools and members -------------------------------------------------------------


@protected
@documented((200, "MemberList", "Every member"))
async def members_list(request: Request) -> Response:
    """Every member with its health, load and counters."""
    return JSONResponse({"members": ops_of(request).member_views()})


@protected
@documented((200, "PoolList", "Every pool"))
async def pools_list(request: Request) -> Response:
    """Every pool with its strategy, members and waiting jobs."""
    return JSONResponse({"pools": ops_of(request).pool_views()})


@protected
@documented((200, "ProviderList", "Every mailbox provider"))
async def providers_list(request: Request) -> Response:
    """Mailbox providers: limits, rules, and per member connections, rate and suspensions."""
    return JSONResponse({"providers": ops_of(request).provider_views()})


def _member_or_404(name: str, member: dict[str, Any] | None) -> JSONResponse:
    """A member action's answer: the member's view, or 404 when there is no such member."""
    return problem(404, "No such member", name) if member is None else JSONResponse(member)


@protected
@documented((200, "Member", "The member, now paused"), fails=[404])
async def member_pause(request: Request) -> Response:
    """Stop new traffic to a member; what it has in progress finishes. Survives restarts."""
    name = request.path_params["name"]
    return _member_or_404(name, ops_of(request).pause(name))


@protected
@documented((200, "Member", "The member, taking traffic again"), fails=[404])
async def member_resume(request: Request) -> Response:
    """Let a paused member take traffic again."""
    name = request.path_params["name"]
    return _member_or_404(name, ops_of(request).resume(name))


# -- experiments -----------------------------------------------------------------


@public
@documented((200, "ExperimentList", "Every configured experiment"))
async def experiments_list(request: Request) -> Response:
    """The configured experiments and their state (aggregates: no addresses)."""
    return JSONResponse({"experiments": ops_of(request).experiment_views()})


def _no_experiment(request: Request, name: str) -> JSONResponse:
    names = ", ".join(e["name"] for e in ops_of(request).experiment_views()) or "none configured"
    return problem(404, "No such experiment", f"{name!r} (experiments: {names})")


@public
@documented((200, "ExperimentReport", "The report"), fails=[404])
async def experiment_report(request: Request) -> Response:
    """An experiment's report: per variant and metric, intervals, p-values, verdicts."""
    name = request.path_params["name"]
    report = await ops_of(request).experiment_report(name)
    return _no_experiment(request, name) if report is None else JSONResponse(report)


@protected
@documented((200, "ExperimentReport", "The report, now running"), fails=[404])
async def experiment_start(request: Request) -> Response:
    """Start (or restart) an experiment; stopped variants get their traffic back."""
    name = request.path_params["name"]
    report = await ops_of(request).set_experiment_running(name, True)
    return _no_experiment(request, name) if report is None else JSONResponse(report)


@protected
@documented((200, "ExperimentReport", "The report, now stopped"), fails=[404])
async def experiment_stop(request: Request) -> Response:
    """Stop an experiment: its pool's traffic goes the pool's own way; counts are kept."""
    name = request.path_params["name"]
    report = await ops_of(request).set_experiment_running(name, False)
    return _no_experiment(request, name) if report is None else JSONResponse(report)


@protected
@documented((200, "Member", "The member, now quarantined"), fails=[404])
async def member_quarantine(request: Request) -> Response:
    """Quarantine a member: no traffic for ``[reputation] quarantine``, then probation."""
    name = request.path_params["name"]
    return _member_or_404(name, ops_of(request).quarantine(name))


@protected
@documented((200, "Member", "The member, its reputation ok again"), fails=[404])
async def member_release(request: Request) -> Response:
    """Release a member from quarantine, throttling or probation (its counts start again)."""
    name = request.path_params["name"]
    return _member_or_404(name, ops_of(request).release(name))


@protected
@documented((200, "Draining", "The node is draining"))
async def drain(request: Request) -> Response:
    """Stop intake (421, /readyz 503); queued mail keeps being delivered."""
    ops_of(request).drain()
    return JSONResponse({"draining": True})


@protected
@documented((200, "Draining", "The node takes mail again"))
async def undrain(request: Request) -> Response:
    """Undo a drain: intake answers 250 again and /readyz 200."""
    ops_of(request).undrain()
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
    ops = ops_of(request)
    if ops.draining:
        return problem(503, "Draining", "this node takes no new mail; use another")
    body = await json_body(request)
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
