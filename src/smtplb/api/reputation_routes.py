"""The HTTP API's reputation routes: complaints in, the suppression list, and the
complaint budget per sender domain (SPEC §3.4). Registered in
:data:`smtplb.api.routes.ROUTES`."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from smtplb.api.access import json_body, ops_of, protected
from smtplb.api.openapi import documented
from smtplb.api.problem import problem
from smtplb.intake.address import valid_address
from smtplb.reputation.feedback import FeedbackError, parse_arf, parse_event
from smtplb.reputation.state import Suppression, normalize, normalize_domain


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
            body = await json_body(request)
            if isinstance(body, JSONResponse):
                return body
            report = parse_event(body)
    except FeedbackError as exc:
        return problem(422, "Unusable feedback", str(exc))
    return JSONResponse(await ops_of(request).feedback(report))


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
    state = ops_of(request).reputation_state
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
    body = await json_body(request)
    if isinstance(body, JSONResponse):
        return body
    entries = suppression_entries(body, time.time())
    if isinstance(entries, str):
        return problem(422, "Invalid field", entries)
    added = await ops_of(request).reputation_state.suppress(entries)
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
    if not await ops_of(request).reputation_state.unsuppress([address], domain):
        scope = f" for {normalize_domain(domain)}" if domain else ""
        return problem(404, "Not suppressed", f"{normalize(address)}{scope}")
    return JSONResponse({"removed": normalize(address), "domain": normalize_domain(domain)})


@protected
@documented((200, "Compliance", "The complaint budget of every sender domain in the window"))
async def compliance(request: Request) -> Response:
    """Per sender domain: delivered marketing and bulk mail, complaints, rate and state
    (ok, throttled, stopped) over ``[reputation] window``; the dashboard's panel."""
    return JSONResponse(ops_of(request).compliance_view())


@protected
@documented((200, "BudgetLift", "The domain's mail goes again for one window"), fails=[404, 409])
async def compliance_lift(request: Request) -> Response:
    """Lift a sender domain's complaint budget for one ``[reputation] window``: its held
    mail goes at its next retry (``POST /api/v1/queue/retry`` sends it now)."""
    domain = request.path_params["domain"]
    ops = ops_of(request)
    if not ops.compliance_view()["complaint_budget"]["enabled"]:
        return problem(409, "Complaint budget off", "[compliance] complaint_budget is false")
    lifted = ops.lift_complaint_budget(domain)
    if lifted is None:
        return problem(404, "No such sender domain in the complaint budget's window", domain)
    return JSONResponse(lifted)
