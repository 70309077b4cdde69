"""Who may call the HTTP API, and the small pieces every handler shares.

``protected`` handlers need ``Authorization: Bearer KEY`` whenever ``[http] api_keys``
is set; ``public`` ones are open while ``[http] public_read`` is true, and the views
they serve without a valid key have their addresses redacted (:func:`public_json`).
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from smtplb.api.openapi import mark_access
from smtplb.api.operations import Operations
from smtplb.api.problem import problem
from smtplb.model import RecipientState
from smtplb.observability.live import redacted
from smtplb.spool.base import MessageView

Handler = Callable[[Request], Awaitable[Response]]


def ops_of(request: Request) -> Operations:
    ops: Operations = request.app.state.ops
    return ops


def authorized(request: Request) -> bool:
    keys = ops_of(request).config.http.api_keys
    if not keys:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return any(hmac.compare_digest(token.encode(), k.encode()) for k in keys)


def public_json(request: Request, view: dict[str, Any]) -> JSONResponse:
    """A view served without a key: addresses redacted unless a valid key came with it
    (not merely: none is configured)."""
    if ops_of(request).config.http.api_keys and authorized(request):
        return JSONResponse(view)
    return JSONResponse(redacted(view))


def protected(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        if not authorized(request):
            response = problem(401, "Unauthorized", "send Authorization: Bearer <api key>")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    return mark_access(wrapper, "protected")


def public(handler: Handler) -> Handler:
    """Public while ``[http] public_read`` is true, else like :func:`protected`."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        if not ops_of(request).config.http.public_read and not authorized(request):
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


async def json_body(request: Request) -> dict[str, Any] | JSONResponse:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return problem(400, "Malformed JSON", str(exc))
    if not isinstance(body, dict):
        return problem(400, "Malformed request", "the body must be a JSON object")
    return body
