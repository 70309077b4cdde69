"""The HTTP API against what a web page, a big body and a crafted field can do,
over real sockets against a running smtplb (issue 10, items 1, 2, 3, 8, 11)."""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import smtplib
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smtplb.sink.profile import DomainRule, SinkProfile, parse_reply
from smtplb.sink.server import ThreadedSink
from tests.integration.conftest import Smtplb, relay_config, wait_until

pytestmark = pytest.mark.integration

EVIL = "http://evil.test"
MESSAGE = {"from": "app@shop.test", "to": ["user@example.org"], "subject": "hi", "text": "hi"}


def request(
    node: Smtplb, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], Any]:
    """One request with exactly the given headers (urllib would add its own)."""
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10)
    try:
        conn.request(
            method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )
        resp = conn.getresponse()
        data = resp.read()
        head = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        parsed = json.loads(data) if data else None
    except ValueError:
        parsed = data.decode("utf-8", "replace")
    return resp.status, head, parsed


def status_of(
    node: Smtplb, method: str, path: str, body: bytes | None = None, **headers: str
) -> int:
    return request(node, method, path, body, **headers)[0]


def queued(node: Smtplb) -> int:
    stats = node.api("/api/v1/queue")[1]["stats"]
    return sum(v for v in stats.values() if isinstance(v, int))


def test_pages_of_other_sites_cannot_change_anything_and_programs_still_can(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    sink = sinks()
    node = smtplb(*relay_config(tmp_path / "var", [sink.port])).start()  # default: no api_keys
    text_plain = json.dumps(MESSAGE).encode()
    own = f"127.0.0.1:{node.http_port}"

    # What a page on evil.test can send without a CORS preflight: all refused.
    assert (
        status_of(
            node, "POST", "/api/v1/messages", text_plain, content_type="text/plain", origin=EVIL
        )
        == 403
    )
    assert (
        status_of(
            node,
            "POST",
            "/api/v1/drain",
            b"x=1",
            content_type="application/x-www-form-urlencoded",
            origin=EVIL,
        )
        == 403
    )
    assert (
        status_of(
            node,
            "POST",
            "/api/v1/members/relay-1/pause",
            b"",
            content_type="text/plain",
            origin=EVIL,
            sec_fetch_site="cross-site",
        )
        == 403
    )
    # Even JSON (which needs a preflight we never grant) from another origin.
    assert (
        status_of(
            node,
            "POST",
            "/api/v1/messages",
            text_plain,
            content_type="application/json",
            origin=EVIL,
        )
        == 403
    )
    # A form or text body without any Origin (an old browser, a script): not JSON.
    assert status_of(node, "POST", "/api/v1/messages", text_plain, content_type="text/plain") == 415
    assert (
        status_of(
            node, "POST", "/api/v1/drain", b"x=1", content_type="application/x-www-form-urlencoded"
        )
        == 415
    )
    # DNS rebinding: evil.test re-pointed at 127.0.0.1 can neither read nor write.
    assert status_of(node, "GET", "/api/v1/queue", host="rebind.evil.test") == 421
    assert status_of(node, "GET", "/api/v1/overview", host=f"evil.test:{node.http_port}") == 421
    assert (
        status_of(
            node, "POST", "/api/v1/drain", host="rebind.evil.test", sec_fetch_site="same-origin"
        )
        == 421
    )

    assert node.api("/readyz") == (200, {"status": "ready"})
    members = node.api("/api/v1/members")[1]["members"]
    assert [m["paused"] for m in members] == [False]
    assert sink.received == [] and queued(node) == 0

    # The node's own pages and programs: served as before.
    assert status_of(node, "GET", "/api/v1/overview", host=f"localhost:{node.http_port}") == 200
    assert (
        status_of(
            node,
            "POST",
            "/api/v1/messages",
            text_plain,
            content_type="application/json",
            origin=f"http://{own}",
            host=own,
        )
        == 202
    )
    assert (
        status_of(
            node,
            "POST",
            "/api/v1/messages",
            text_plain,
            content_type="application/json; charset=utf-8",
            sec_fetch_site="same-origin",
        )
        == 202
    )
    assert node.api("/api/v1/messages", "POST", MESSAGE)[0] == 202  # urllib, like the CLI
    assert status_of(node, "POST", "/api/v1/members/relay-1/pause") == 200  # no body, no type
    assert (
        status_of(
            node, "POST", "/api/v1/members/relay-1/resume", b"{}", content_type="application/json"
        )
        == 200
    )
    assert sink.wait_for(3, 20)


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read until the server closes; (status, whole response). The close may come as
    a reset (it closed with our unread body in its buffer): what arrived before counts."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    assert data, "the connection closed without an answer"
    return int(data.split(b" ", 2)[1]), data


def test_big_bodies_are_refused_without_being_read(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    sink = sinks()
    node = smtplb(*relay_config(tmp_path / "var", [sink.port])).start()
    limit = 2 * 25_000_000 + 64 * 1024

    # 200 MB announced: the 413 comes before a byte of the body is sent, then the close.
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 209715200\r\n\r\n"
        )
        status, response = read_response(sock)
    assert status == 413
    assert b"connection: close" in response.lower()
    assert b"smtp.max_message_size" in response

    # Chunked: counted as it arrives, refused once past the limit.
    sent = 0
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=30) as sock:
        sock.sendall(
            b"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        block = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 200 << 20 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(block)  # until the server answers (and closes)
                sent += 1 << 20
        status, response = read_response(sock)
    assert status == 413
    assert limit < sent < limit + (16 << 20)  # stopped at the limit, not at 200 MB

    # A big body within the limit still goes through.
    raw = "Subject: big\r\n\r\n" + ("y" * 998 + "\r\n") * 5000
    assert node.api("/api/v1/messages", "POST", {**MESSAGE, "raw": raw})[0] == 202
    assert sink.wait_for(1, 20)


def test_a_200_mb_announced_body_leaves_memory_flat(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    node = smtplb(*relay_config(tmp_path / "var", [sinks().port])).start()
    assert node.proc is not None
    rss, peak = vm_kib(node.proc.pid, "VmRSS"), vm_kib(node.proc.pid, "VmHWM")
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    conn.putrequest("POST", "/api/v1/messages")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(200 << 20))
    conn.endheaders()
    block = b"x" * (1 << 20)
    try:
        for _ in range(200):
            conn.send(block)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused and closed before the body was sent
    assert conn.getresponse().status == 413
    conn.close()
    grew_rss = vm_kib(node.proc.pid, "VmRSS") - rss
    grew_peak = vm_kib(node.proc.pid, "VmHWM") - peak
    print(f"200 MB body: VmRSS +{grew_rss} KiB, VmHWM +{grew_peak} KiB")
    assert grew_rss < 10 * 1024 and grew_peak < 10 * 1024


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"subject": "hi\r\nBcc: victim@x.test"}, "'subject'"),
        ({"subject": "hi\u2028Bcc: victim@x.test"}, "'subject'"),
        ({"subject": "hi\x00"}, "'subject'"),
        ({"headers": {"X-Tag": "a\nBcc: victim@x.test"}}, "'X-Tag'"),
        ({"headers": {"Bcc: victim@x.test\r\nX-Tag": "a"}}, "header name"),
        ({"headers": {"From": "Other <other@shop.test>"}}, "'From'"),
        ({"headers": {"Reply-To": "a@"}}, "'Reply-To'"),
        ({"from": "app\u2028x@shop.test"}, "'from'"),
        ({"to": ["user\x85x@example.org"]}, "'to'"),
    ],
)
def test_fields_that_would_break_headers_are_422_naming_the_field(
    tmp_path: Path,
    sinks: Callable[..., ThreadedSink],
    smtplb: Callable[..., Smtplb],
    fields: dict[str, Any],
    field: str,
) -> None:
    sink = sinks()
    node = smtplb(*relay_config(tmp_path / "var", [sink.port])).start()
    status, doc = node.api("/api/v1/messages", "POST", {**MESSAGE, **fields})
    assert status == 422, doc
    assert doc["type"] == "about:blank" and field in doc["detail"]
    assert queued(node) == 0
    assert "Traceback" not in "".join(node.output)


LEAK_REPLY = "550 5.1.1 <victim@leak.test>: Recipient address rejected: User unknown"


def leaky_sink(sinks: Callable[..., ThreadedSink]) -> ThreadedSink:
    rule = DomainRule(accept=0, reject=1, stage="rcpt", reject_reply=parse_reply(LEAK_REPLY))
    return sinks(SinkProfile(rules={"leak.test": rule}))


@pytest.mark.parametrize("keys", [[], ["s3cret"]])
def test_views_served_without_a_key_show_no_addresses(
    tmp_path: Path,
    sinks: Callable[..., ThreadedSink],
    smtplb: Callable[..., Smtplb],
    keys: list[str],
) -> None:
    sink = leaky_sink(sinks)
    http_cfg = {"api_keys": keys} if keys else None
    node = smtplb(*relay_config(tmp_path / "var", [sink.port], http=http_cfg)).start()
    with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
        client.sendmail("app@shop.test", ["victim@leak.test"], b"Subject: x\r\n\r\nx\r\n")

    def overview(**headers: str) -> str:
        status, _, doc = request(node, "GET", "/api/v1/overview", **headers)
        assert status == 200
        return json.dumps(doc)

    wait_until(lambda: "Recipient address rejected" in overview(), 20, "the bounce in the overview")
    keyless = overview()
    assert "victim" not in keyless and "leak.test" not in keyless
    assert "<[address]>: Recipient address rejected" in keyless
    assert "victim" not in overview(authorization="Bearer wrong")
    if keys:
        assert "<victim@leak.test>: Recipient address rejected" in overview(
            authorization="Bearer s3cret"
        )


def test_every_answer_carries_the_security_headers(
    tmp_path: Path, sinks: Callable[..., ThreadedSink], smtplb: Callable[..., Smtplb]
) -> None:
    node = smtplb(*relay_config(tmp_path / "var", [sinks().port])).start()
    for method, path, extra in [
        ("GET", "/", {}),
        ("GET", "/static/dashboard.js", {}),
        ("GET", "/api/v1/overview", {}),
        ("GET", "/api/v1/queue/NOPE", {}),
        ("GET", "/metrics", {}),
        ("POST", "/api/v1/drain", {"origin": EVIL}),
        ("GET", "/", {"host": "evil.test"}),
    ]:
        _, head, _ = request(node, method, path, **extra)
        csp = head.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, (path, head)
        assert "unsafe-inline" not in csp
        assert head.get("x-frame-options") == "DENY"
        assert head.get("x-content-type-options") == "nosniff"
        assert head.get("referrer-policy") == "no-referrer"
    page = request(node, "GET", "/")[2]
    assert "<script>" not in page and "style=" not in page  # nothing inline for the CSP to block
