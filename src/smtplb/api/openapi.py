"""The OpenAPI 3.1 document: each handler declares what it takes and answers.

:func:`documented` puts the request schema and the responses (with their
real status codes) on a handler; :func:`document` walks the route table and
builds ``/openapi.json`` from them. A route without a declaration has no
place in the document, and a unit test checks that every route has one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from starlette.routing import BaseRoute, Route

from smtplb.api.security import guard_answers

F = TypeVar("F", bound=Callable[..., Any])

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_COUNTS = {"type": "object", "additionalProperties": _INT}
_AGES = {"type": "object", "additionalProperties": _NUM}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: Iterable[str] = (), **properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required)}


SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": _obj(["type", "title", "status"], type=_STR, title=_STR, status=_INT, detail=_STR),
    "Status": _obj(["status"], status={"enum": ["ok", "ready", "draining"]}),
    "InjectRequest": {
        **_obj(
            ["from", "to"],
            **{
                "from": {**_STR, "description": 'envelope sender; "" for <>'},
                "to": {"oneOf": [_STR, {"type": "array", "items": _STR, "minItems": 1}]},
                "raw": {**_STR, "description": "the whole RFC 5322 message"},
                "subject": _STR,
                "text": _STR,
                "html": _STR,
                "headers": {"type": "object", "additionalProperties": _STR},
            },
        ),
        "description": "either raw, or text and/or html (with subject and headers)",
    },
    "Queued": _obj(["queue_id"], queue_id=_STR),
    "Recipient": _obj(
        ["address", "state", "pool", "attempts"],
        address=_STR,
        state={"enum": ["queued", "in_flight", "deferred", "delivered", "bounced", "expired"]},
        pool=_STR,
        priority=_INT,
        attempts=_INT,
        next_attempt=_NUM,
        last_code={"type": ["integer", "null"]},
        last_enhanced_code={"type": ["string", "null"]},
        last_response=_STR,
        member=_STR,
        updated_at=_NUM,
    ),
    "Message": _obj(
        ["queue_id", "sender", "recipients"],
        queue_id=_STR,
        sender=_STR,
        message_id=_STR,
        size=_INT,
        received_at=_NUM,
        expires_at=_NUM,
        content_class=_STR,
        is_dsn={"type": "boolean"},
        recipients={"type": "array", "items": _ref("Recipient")},
    ),
    "MessageDetail": {
        "allOf": [
            _ref("Message"),
            _obj(["trace"], trace={"type": "array", "items": {"type": "object"}}),
        ]
    },
    "QueueList": _obj(
        ["stats", "oldest_age", "messages"],
        stats=_COUNTS,
        oldest_age=_AGES,
        messages={"type": "array", "items": _ref("Message")},
    ),
    "Retried": _obj(["retried"], retried=_INT),
    "Deleted": _obj(["deleted"], deleted=_STR),
    "Member": _obj(
        ["name", "pool", "health", "paused"],
        name=_STR,
        pool=_STR,
        kind={"enum": ["relay", "egress"]},
        target=_STR,
        weight=_NUM,
        health={"enum": ["up", "down", "ejected", "half_open", "paused"]},
        paused={"type": "boolean"},
        active=_INT,
        idle_connections=_INT,
        max_connections=_INT,
        delivered=_INT,
        deferred=_INT,
        bounced=_INT,
        failures=_INT,
        per_minute=_NUM,
        latency_p50_ms=_NUM_OR_NULL,
        latency_p95_ms=_NUM_OR_NULL,
        reputation=_ref("Reputation"),
        warmup={
            "type": "object",
            "description": "Warm-up per provider (empty: not in warm-up); cap null: warm",
            "additionalProperties": _obj(
                ["day", "cap", "sent"], day=_INT, cap={"type": ["integer", "null"]}, sent=_INT
            ),
        },
    ),
    "Reputation": {
        **_obj(
            ["state", "providers"],
            state={"enum": ["ok", "throttled", "quarantined", "probation"]},
            reason=_STR,
            since=_NUM,
            until=_NUM,
            probation_left=_INT,
            providers={"type": "object", "additionalProperties": {"type": "object"}},
        ),
        "description": "the member's worst state; per provider: state, attempts and rates",
    },
    "MemberList": _obj(["members"], members={"type": "array", "items": _ref("Member")}),
    "Pool": _obj(
        ["name", "strategy", "waiting", "members"],
        name=_STR,
        strategy=_STR,
        waiting=_INT,
        members={"type": "array", "items": _STR},
    ),
    "PoolList": _obj(["pools"], pools={"type": "array", "items": _ref("Pool")}),
    "Suspension": _obj(["rule", "until"], rule=_STR, until=_NUM, seconds_left=_NUM),
    "ProviderMember": _obj(
        ["member", "active", "concurrency"],
        member=_STR,
        active=_INT,
        concurrency=_INT,
        window=_NUM,
        rate_per_minute=_NUM_OR_NULL,
        throttled={"type": "boolean"},
        rate_limited=_INT,
        suspensions=_INT,
        suspended={"oneOf": [_ref("Suspension"), {"type": "null"}]},
    ),
    "Provider": _obj(
        ["name", "members"],
        name=_STR,
        domains={"type": "array", "items": _STR},
        mx_suffixes={"type": "array", "items": _STR},
        max_connections={"type": ["integer", "null"]},
        max_messages_per_connection={"type": ["integer", "null"]},
        rate={"type": ["string", "null"]},
        rules={"type": "array", "items": _STR},
        suspended={"oneOf": [_ref("Suspension"), {"type": "null"}]},
        members={"type": "array", "items": _ref("ProviderMember")},
    ),
    "ProviderList": _obj(["providers"], providers={"type": "array", "items": _ref("Provider")}),
    "Draining": _obj(["draining"], draining={"type": "boolean"}),
    "DomainBudget": _obj(
        ["domain", "state", "delivered", "complaints", "rate"],
        domain=_STR,
        state={"enum": ["ok", "throttled", "stopped"]},
        delivered=_INT,
        complaints=_INT,
        rate=_NUM,
        lifted_until=_NUM_OR_NULL,
    ),
    "Compliance": _obj(
        ["complaint_budget", "list_unsubscribe"],
        complaint_budget=_obj(
            ["enabled", "throttle", "stop", "window", "min_volume", "domains"],
            enabled={"type": "boolean"},
            throttle=_NUM,
            stop=_NUM,
            window=_NUM,
            min_volume=_INT,
            domains={"type": "array", "items": _ref("DomainBudget")},
        ),
        list_unsubscribe={"enum": ["off", "warn", "reject"]},
    ),
    "BudgetLift": _obj(["domain", "lifted_until"], domain=_STR, lifted_until=_NUM),
    "Suppression": _obj(
        ["address", "reason", "source", "created_at", "domain"],
        address=_STR,
        reason=_STR,
        source={"enum": ["operator", "bounce", "complaint", "import"]},
        created_at=_NUM,
        domain={
            "type": "string",
            "description": '"" for every sender, or the sender domain the entry applies to',
        },
    ),
    "SuppressionEntry": _obj(["address"], address=_STR, reason=_STR, domain=_STR),
    "SuppressionList": _obj(
        ["total", "suppressions"],
        total=_INT,
        suppressions={"type": "array", "items": _ref("Suppression")},
    ),
    "SuppressRequest": {
        **_obj(
            [],
            addresses={"type": "array", "items": _STR, "minItems": 1},
            address=_STR,
            reason=_STR,
            domain=_STR,
            entries={"type": "array", "items": _ref("SuppressionEntry"), "minItems": 1},
        ),
        "description": "addresses (or one address) to suppress, with a reason, for every"
        ' sender (domain "" or absent) or for one sender domain; or entries, each with its'
        " own reason and domain (an import)",
    },
    "FeedbackEvent": {
        **_obj(
            ["recipient"],
            type={"enum": ["complaint"]},
            recipient=_STR,
            queue_id=_STR,
            message_id=_STR,
            sender=_STR,
            feedback_type=_STR,
        ),
        "description": "a JSON complaint; an ARF report is posted as multipart/report instead",
    },
    "FeedbackResult": _obj(
        ["recipient", "matched", "suppressed"],
        recipient=_STR,
        matched={"type": "boolean"},
        queue_id={"type": ["string", "null"]},
        member={"type": ["string", "null"]},
        provider=_STR,
        suppressed={"type": "boolean"},
        domain=_STR,
    ),
    "Suppressed": _obj(["added", "requested"], added=_INT, requested=_INT),
    "Unsuppressed": _obj(["removed", "domain"], removed=_STR, domain=_STR),
    "ExperimentList": _obj(
        ["experiments"],
        experiments={
            "type": "array",
            "items": _obj(
                ["name", "pool", "split", "state", "variants"],
                name=_STR,
                pool=_STR,
                split={"enum": ["recipient", "message"]},
                state={"enum": ["running", "stopped"]},
                variants={"type": "array", "items": {"type": "object"}},
            ),
        },
    ),
    "ExperimentReport": {
        **_obj(
            ["name", "pool", "state", "control", "variants", "srm", "metrics", "providers"],
            name=_STR,
            pool=_STR,
            split=_STR,
            state={"enum": ["running", "stopped"]},
            control=_STR,
            messages=_INT,
            variants={"type": "array", "items": {"type": "object"}},
            srm=_obj(
                ["counts", "chi2", "p_value", "mismatch"],
                counts={"type": "array", "items": _INT},
                expected={"type": "array", "items": _NUM},
                chi2=_NUM,
                p_value=_NUM,
                mismatch={"type": "boolean"},
            ),
            metrics={"type": "array", "items": {"type": "object"}},
            providers={"type": "array", "items": {"type": "object"}},
            events={"type": "array", "items": {"type": "object"}},
        ),
        "description": "per variant and metric: value, interval, difference against "
        "control, p-value, always-valid p-value, Holm-adjusted p-value, verdict",
    },
    "Overview": _obj(
        ["hostname", "draining", "pools", "queue"],
        hostname=_STR,
        version=_STR,
        uptime=_NUM,
        draining={"type": "boolean"},
        workers=_INT,
        pools={"type": "array", "items": {"type": "object"}},
        queue=_COUNTS,
        queue_oldest_age=_AGES,
        totals=_COUNTS,
        series={"type": "object"},
        errors={"type": "array", "items": {"type": "object"}},
    ),
    "Cluster": _obj(
        ["node", "redis", "nodes"],
        node={**_STR, "description": "this node's name ([cluster] node)"},
        redis={"enum": ["off", "unknown", "up", "down"]},
        nodes={
            "type": "array",
            "items": _obj(
                ["node", "self", "queue_depth", "rate_per_minute", "health", "version", "ts"],
                node=_STR,
                self={"type": "boolean"},
                smtp={"type": "array", "items": _STR},
                http=_STR,
                queue_depth=_INT,
                rate_per_minute=_INT,
                health={**_COUNTS, "description": "members by health: up, down, ejected…"},
                members=_INT,
                draining={"type": "boolean"},
                version=_STR,
                ts=_NUM,
                age={**_NUM, "description": "seconds since the node made this record"},
            ),
        },
    ),
}

# Why each failure happens, said once.
FAILURES = {
    400: "Malformed request (bad JSON, an unknown state, a non-integer limit)",
    401: "No or wrong API key (send Authorization: Bearer KEY)",
    403: "Sent by a page of another site (Sec-Fetch-Site or Origin)",
    404: "No such message, member, experiment or sender domain, or the address is not suppressed",
    413: "Message larger than smtp.max_message_size, or a body over twice that",
    409: "The feature is off in the config ([compliance] complaint_budget = false)",
    415: "A body that is not application/json",
    421: "A Host that is not a name of this node (see http.allowed_hosts)",
    422: "Invalid field (sender, recipients, headers, content), or refused by compliance",
    503: "Not now: draining, or the spool is unavailable; retry later or elsewhere",
}


def documented(
    ok: tuple[int, str | None, str],
    *,
    fails: Iterable[int] = (),
    request: str | None = None,
    query: Iterable[tuple[str, str]] = (),
    content_type: str = "application/json",
) -> Callable[[F], F]:
    """Declare a handler's answers: ``ok`` is (status, schema name or None,
    description); ``fails`` the error statuses it can return (problem documents);
    ``query`` the (name, JSON type) of its query parameters. 401 comes from the
    auth decorator around the handler (see :func:`mark_access`), not from here."""

    def mark(handler: F) -> F:
        status, schema, description = ok
        body = {"schema": _ref(schema)} if schema else {"schema": _STR}
        responses: dict[str, Any] = {
            str(status): {"description": description, "content": {content_type: body}}
        }
        for code in sorted(fails):
            responses[str(code)] = _failure(code)
        spec: dict[str, Any] = {"responses": responses}
        if query:
            spec["parameters"] = [
                {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
                for name, kind in query
            ]
        if request is not None:
            spec["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(request)}},
            }
        setattr(handler, "__openapi__", spec)  # noqa: B010  (a function attribute)
        return handler

    return mark


def mark_access(handler: F, access: str) -> F:
    """Record how a handler is guarded: ``protected`` (always needs the key when
    keys are set) or ``public`` (needs it only when ``public_read`` is false)."""
    setattr(handler, "__access__", access)  # noqa: B010
    return handler


def _failure(code: int) -> dict[str, Any]:
    return {
        "description": FAILURES[code],
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


# Who may call: bearer always; bearer or nobody (public_read); nobody.
_SECURITY: dict[str | None, list[dict[str, list[str]]]] = {
    "protected": [{"bearer": []}],
    "public": [{}, {"bearer": []}],
    None: [],
}


def _parameters(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    return [{"name": n, "in": "path", "required": True, "schema": _STR} for n in names]


def document(routes: Iterable[BaseRoute], version: str) -> dict[str, Any]:
    """The OpenAPI document for the documented routes among ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        spec = getattr(route.endpoint, "__openapi__", None)
        if spec is None:
            continue
        access = getattr(route.endpoint, "__access__", None)
        responses = dict(spec["responses"])
        if access is not None:
            responses["401"] = _failure(401)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            answers = {**responses, **{str(c): _failure(c) for c in guard_answers(method)}}
            doc = (route.endpoint.__doc__ or "").strip()
            operation: dict[str, Any] = {
                "operationId": re.sub(r"[^a-z0-9]+", "_", f"{method} {route.path}".lower()),
                "summary": doc.splitlines()[0] if doc else route.endpoint.__name__,
                **spec,
                "responses": dict(sorted(answers.items())),
                "security": _SECURITY[access],
            }
            parameters = _parameters(route.path) + spec.get("parameters", [])
            if parameters:
                operation["parameters"] = parameters
            paths.setdefault(route.path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "smtplb API", "version": version},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
