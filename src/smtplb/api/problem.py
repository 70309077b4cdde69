"""RFC 9457 problem documents: the one shape every HTTP error of smtplb takes."""

from __future__ import annotations

from starlette.responses import JSONResponse


def problem(status: int, title: str, detail: str = "") -> JSONResponse:
    body: dict[str, str | int] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, media_type="application/problem+json")
