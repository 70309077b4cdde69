"""The HTTP API against a small stand-in for the node's Operations (no sockets,
no service): every route is in /openapi.json, with the status codes it really
answers, and the auth decorators keep what they wrap."""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from smtplb.api import Operations, create_app
from smtplb.api.access import protected, public
from smtplb.config import Config, parse_config
from smtplb.model import Envelope, RecipientState
from smtplb.reputation.embedded import SqliteState
from smtplb.reputation.feedback import Feedback
from smtplb.reputation.state import State
from smtplb.spool.base import MessageView, RecipientView, SpoolError

MEMBER = {"name": "m1", "pool": "main", "health": "up", "paused": False, "max_connections": 5}


class StandIn:
    """Answers like a node with one member ``m1`` and one message ``Q1``."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.drained = False
        self.spool_fails = False
        self.injected: list[tuple[Envelope, bytes]] = []
        self.state = SqliteState(Path(tempfile.mkdtemp()) / "spool.db")

    @property
    def reputation_state(self) -> State:
        return self.state

    @property
    def config(self) -> Config:
        return self._config

    @property
    def draining(self) -> bool:
        return self.drained

    def drain(self) -> None:
        self.drained = True

    def undrain(self) -> None:
        self.drained = False

    async def inject(self, envelope: Envelope, content: bytes) -> str:
        if self.spool_fails:
            raise SpoolError("disk full")
        self.injected.append((envelope, content))
        return "Q2"

    async def metrics_text(self) -> bytes:
        return b"# HELP x y\n"

    async def overview(self) -> dict[str, Any]:
        return {"hostname": "h", "draining": self.drained, "pools": [], "queue": {}}

    async def cluster(self) -> dict[str, Any]:
        return {"node": "h", "redis": "off", "nodes": []}

    def member_views(self) -> list[dict[str, Any]]:
        return [MEMBER]

    def pool_views(self) -> list[dict[str, Any]]:
        return [{"name": "main", "strategy": "round_robin", "waiting": 0, "members": ["m1"]}]

    def provider_views(self) -> list[dict[str, Any]]:
        lane = {"member": "m1", "active": 0, "concurrency": 3, "suspended": None}
        return [{"name": "gmail", "suspended": None, "members": [lane]}]

    def compliance_view(self) -> dict[str, Any]:
        shop = {"domain": "m1", "state": "stopped", "delivered": 1000, "complaints": 3}
        budget = {"enabled": True, "throttle": 0.001, "stop": 0.0025, "window": 86400.0}
        domains = [{**shop, "rate": 0.003, "lifted_until": None}]
        return {
            "complaint_budget": {**budget, "min_volume": 50, "domains": domains},
            "list_unsubscribe": "warn",
        }

    def lift_complaint_budget(self, domain: str) -> dict[str, Any] | None:
        return {"domain": domain, "lifted_until": 1e9} if domain == "m1" else None

    def pause(self, member: str) -> dict[str, Any] | None:
        return {**MEMBER, "paused": True} if member == "m1" else None

    def resume(self, member: str) -> dict[str, Any] | None:
        return MEMBER if member == "m1" else None

    async def feedback(self, report: Feedback) -> dict[str, Any]:
        return {"recipient": report.recipient, "matched": False, "suppressed": True}

    def quarantine(self, member: str) -> dict[str, Any] | None:
        return MEMBER if member == "m1" else None

    def release(self, member: str) -> dict[str, Any] | None:
        return MEMBER if member == "m1" else None

    async def queue_stats(self) -> tuple[dict[str, int], dict[str, float]]:
        return {"deferred": 1}, {"deferred": 3.0}

    async def list_messages(
        self, state: RecipientState | None, limit: int, offset: int
    ) -> list[MessageView]:
        return [_view()]

    async def message(self, queue_id: str) -> MessageView | None:
        return _view() if queue_id == "Q1" else None

    async def trace(self, queue_id: str) -> list[dict[str, Any]]:
        return [{"step": "routed"}]

    async def retry(self, queue_id: str | None) -> int | None:
        return 1 if queue_id in (None, "Q1") else None

    async def delete(self, queue_id: str) -> bool:
        return queue_id == "Q1"

    def experiment_views(self) -> list[dict[str, Any]]:
        return [{"name": "m1", "pool": "main", "state": "running", "variants": []}]

    async def experiment_report(self, name: str) -> dict[str, Any] | None:
        return {"name": name, "state": "running"} if name == "m1" else None

    async def set_experiment_running(self, name: str, running: bool) -> dict[str, Any] | None:
        state = "running" if running else "stopped"
        return {"name": name, "state": state} if name == "m1" else None


def _view() -> MessageView:
    rcpt = RecipientView(
        1, "b@example.org", RecipientState.DEFERRED, "main", 1, 1, 0.0, 451, "4.7.1", "", "m1", 0.0
    )
    return MessageView(
        1, "Q1", "a@shop.test", "<id@x>", 10, 0.0, 1.0, "transactional", False, [rcpt]
    )


class Client:
    """Requests straight into the ASGI app (httpx's ASGI transport: no socket)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            # localhost: a Host the API answers to (others get 421, see api/security.py)
            base = "http://localhost"
            async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(go())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)


def _client(**http: Any) -> tuple[Client, StandIn]:
    ops = StandIn(parse_config({"http": http, "smtp": {"max_message_size": "1MB"}}))
    _: Operations = ops  # the stand-in keeps to the protocol (mypy checks this line)
    return Client(create_app(ops)), ops


def _routes(client: Client) -> list[tuple[str, str]]:
    return [
        (route.path, method.lower())
        for route in client.app.routes
        if isinstance(route, Route)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"})
    ]


def test_every_route_is_in_openapi_with_failure_responses() -> None:
    client, _ = _client()
    doc = client.get("/openapi.json").json()
    routes = _routes(client)
    assert len(routes) >= 17
    for path, method in routes:
        assert method in doc["paths"].get(path, {}), f"{method.upper()} {path} undocumented"
        op = doc["paths"][path][method]
        codes = set(op["responses"])
        success = [c for c in codes if c.startswith("2")]
        assert len(success) == 1, (path, method, codes)
        if path != "/openapi.json":  # the one answer that cannot fail
            assert codes - set(success), f"{method} {path}: no failure documented"
        if "{" in path:
            assert "404" in codes, f"{method} {path} takes an id: 404 expected"
            assert {p["name"] for p in op["parameters"] if p["in"] == "path"} == set(
                re.findall(r"{(\w+)}", path)
            )
        if "requestBody" in op:
            assert {"400", "413", "422"} <= codes
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_openapi_schemas_resolve() -> None:
    client, _ = _client()
    doc = client.get("/openapi.json").json()
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', msgspec.json.encode(doc).decode()))
    assert refs and refs <= set(doc["components"]["schemas"])
    inject = doc["paths"]["/api/v1/messages"]["post"]
    assert inject["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Queued"
    }
    assert inject["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InjectRequest"
    }


GOOD = {"from": "a@shop.test", "to": ["b@example.org"], "text": "hi"}

# (method, path, body, expected status): each answer the document promises is real.
CASES = [
    ("get", "/healthz", None, 200),
    ("get", "/readyz", None, 200),
    ("get", "/metrics", None, 200),
    ("get", "/api/v1/overview", None, 200),
    ("get", "/api/v1/cluster", None, 200),
    ("get", "/openapi.json", None, 200),
    ("get", "/", None, 200),
    ("post", "/api/v1/messages", GOOD, 202),
    ("post", "/api/v1/messages", {**GOOD, "to": ["not an address"]}, 422),
    ("post", "/api/v1/messages", {**GOOD, "text": "x" * 2_000_000}, 413),
    ("get", "/api/v1/queue", None, 200),
    ("get", "/api/v1/queue?state=nonsense", None, 400),
    ("get", "/api/v1/queue/Q1", None, 200),
    ("get", "/api/v1/queue/nope", None, 404),
    ("delete", "/api/v1/queue/Q1", None, 200),
    ("delete", "/api/v1/queue/nope", None, 404),
    ("post", "/api/v1/queue/retry", None, 200),
    ("post", "/api/v1/queue/Q1/retry", None, 200),
    ("post", "/api/v1/queue/nope/retry", None, 404),
    ("get", "/api/v1/pools", None, 200),
    ("get", "/api/v1/providers", None, 200),
    ("get", "/api/v1/compliance", None, 200),
    ("post", "/api/v1/compliance/domains/m1/lift", None, 200),
    ("post", "/api/v1/compliance/domains/nope/lift", None, 404),
    ("get", "/api/v1/members", None, 200),
    ("post", "/api/v1/members/m1/pause", None, 200),
    ("post", "/api/v1/members/nope/pause", None, 404),
    ("post", "/api/v1/members/m1/resume", None, 200),
    ("post", "/api/v1/members/nope/resume", None, 404),
    ("post", "/api/v1/members/m1/quarantine", None, 200),
    ("post", "/api/v1/members/nope/quarantine", None, 404),
    ("post", "/api/v1/members/m1/release", None, 200),
    ("post", "/api/v1/members/nope/release", None, 404),
    ("post", "/api/v1/drain", None, 200),
    ("delete", "/api/v1/drain", None, 200),
    ("post", "/api/v1/feedback", {"type": "complaint", "recipient": "b@example.org"}, 200),
    ("post", "/api/v1/feedback", {"type": "complaint"}, 422),
    ("post", "/api/v1/feedback", [1], 400),
    ("get", "/api/v1/suppressions", None, 200),
    ("get", "/api/v1/suppressions?limit=x", None, 400),
    ("post", "/api/v1/suppressions", {"addresses": ["b@example.org"], "reason": "r"}, 200),
    ("post", "/api/v1/suppressions", {"addresses": ["not an address"]}, 422),
    ("post", "/api/v1/suppressions", [1], 400),
    ("delete", "/api/v1/suppressions/nope", None, 404),
    ("get", "/api/v1/suppressions?domain=shop.test", None, 200),
    ("get", "/api/v1/suppressions?domain=not%20a%20domain", None, 400),
    ("post", "/api/v1/suppressions", {"addresses": ["c@example.org"], "domain": "shop.test"}, 200),
    ("post", "/api/v1/suppressions", {"entries": [{"address": "d@example.org"}]}, 200),
    ("post", "/api/v1/suppressions", {"addresses": ["c@example.org"], "domain": "a b"}, 422),
    ("post", "/api/v1/suppressions", {"entries": []}, 422),
    ("delete", "/api/v1/suppressions/nope?domain=a%20b", None, 400),
    ("get", "/api/v1/experiments", None, 200),
    ("get", "/api/v1/experiments/m1", None, 200),
    ("get", "/api/v1/experiments/nope", None, 404),
    ("post", "/api/v1/experiments/m1/start", None, 200),
    ("post", "/api/v1/experiments/nope/start", None, 404),
    ("post", "/api/v1/experiments/m1/stop", None, 200),
    ("post", "/api/v1/experiments/nope/stop", None, 404),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), CASES)
def test_answers_are_documented(method: str, path: str, body: Any, status: int) -> None:
    client, _ = _client()
    doc = client.get("/openapi.json").json()
    response = client.request(method, path, json=body)
    assert response.status_code == status, response.text
    template = next(
        p for p in doc["paths"] if re.fullmatch(re.sub(r"{\w+}", "[^/]+", p), path.split("?")[0])
    )
    assert str(status) in doc["paths"][template][method]["responses"]


def test_every_case_route_is_exercised() -> None:
    client, _ = _client()
    covered = {
        (method, re.sub(r"/(Q1|nope|m1)(?=/|$)", "/{x}", path.split("?")[0]))
        for method, path, _, _ in CASES
    }
    for path, method in _routes(client):
        if path.startswith("/static"):
            continue
        assert (method, re.sub(r"{\w+}", "{x}", path)) in covered, (method, path)


def test_draining_and_spool_failure_are_503_and_drain_is_undone() -> None:
    client, ops = _client()
    assert client.post("/api/v1/drain").json() == {"draining": True}
    assert client.get("/readyz").status_code == 503
    assert client.post("/api/v1/messages", json=GOOD).status_code == 503
    assert client.delete("/api/v1/drain").json() == {"draining": False}
    assert client.get("/readyz").status_code == 200
    ops.spool_fails = True
    assert client.post("/api/v1/messages", json=GOOD).status_code == 503
    ops.spool_fails = False
    assert client.post("/api/v1/messages", json=GOOD).status_code == 202
    assert ops.injected[0][0].rcpt_to == ["b@example.org"]


def test_with_keys_a_route_answers_401_exactly_when_its_document_says() -> None:
    client, _ = _client(api_keys=["k"], public_read=False)
    doc = client.get("/openapi.json").json()
    for path, method in _routes(client):
        concrete = re.sub(r"{\w+}", "Q1", path)
        status = client.request(method, concrete).status_code
        documented = "401" in doc["paths"][path][method]["responses"]
        assert (status == 401) == documented, (method, path, status)
        assert bool(doc["paths"][path][method]["security"]) == documented  # [] = no auth
    assert client.get("/api/v1/queue", headers={"Authorization": "Bearer k"}).status_code == 200
    public = client.get("/openapi.json").json()["paths"]["/healthz"]["get"]["security"]
    assert {} in public  # without keys (or with public_read) anyone may ask


def test_auth_decorators_keep_the_wrapped_handler() -> None:
    async def handler(request: Any) -> Any:
        """Doc."""

    handler.marker = "kept"  # type: ignore[attr-defined]
    for decorator in (protected, public):
        wrapped = decorator(handler)
        assert wrapped.__wrapped__ is handler  # type: ignore[attr-defined]
        assert wrapped.__name__ == "handler" and wrapped.__doc__ == "Doc."
        assert wrapped.marker == "kept"  # type: ignore[attr-defined]


def test_suppressions_carry_their_domain_scope() -> None:
    client, _ = _client()
    body = {"entries": [{"address": "A@example.org", "reason": "fbl", "domain": "Shop.Test"}]}
    assert client.post("/api/v1/suppressions", json=body).json() == {"added": 1, "requested": 1}
    body = {"addresses": ["a@example.org"], "reason": "everyone"}
    assert client.post("/api/v1/suppressions", json=body).json()["added"] == 1
    scoped = client.get("/api/v1/suppressions?domain=shop.test").json()
    assert scoped["total"] == 1
    assert [(e["address"], e["domain"], e["reason"]) for e in scoped["suppressions"]] == [
        ("a@example.org", "shop.test", "fbl")
    ]
    assert client.get("/api/v1/suppressions").json()["total"] == 2
    assert client.get("/api/v1/suppressions?domain=").json()["total"] == 1
    removed = client.delete("/api/v1/suppressions/a@example.org?domain=shop.test")
    assert removed.json() == {"removed": "a@example.org", "domain": "shop.test"}
    gone = client.delete("/api/v1/suppressions/a@example.org?domain=shop.test")
    assert gone.status_code == 404 and "for shop.test" in gone.json()["detail"]
    assert client.get("/api/v1/suppressions").json()["total"] == 1
