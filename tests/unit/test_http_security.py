"""The HTTP guard's decisions, redaction and the message builder's field checks (no I/O)."""

from __future__ import annotations

import json
from email import message_from_bytes
from email.policy import SMTP
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from smtplb.api.compose import build_message, check_envelope_headers, raw_content
from smtplb.api.security import (
    HostPolicy,
    body_limit,
    body_refusal,
    cross_site_refusal,
    host_name,
    host_refusal,
)
from smtplb.config import ConfigError, parse_config
from smtplb.observability.live import REDACTED, redact_addresses, redacted

POLICY = HostPolicy.from_config(
    parse_config(
        {
            "hostname": "relay.example.test",
            "http": {"listen": "mgmt.internal:8025", "allowed_hosts": ["proxy.example.com"]},
        }
    )
)
LIMIT = body_limit(25_000_000)


# -- Host allow-list -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("Example.TEST", "example.test"),
        ("example.test.:8025", "example.test"),
        ("127.0.0.1:8025", "127.0.0.1"),
        ("[::1]:8025", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
    ],
)
def test_host_name_drops_port_case_and_final_dot(value: str, name: str) -> None:
    assert host_name(value) == name


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:8025",
        "[::1]:8025",
        "10.1.2.3",  # any IP literal: a rebinding page's origin is a name, never an IP
        "localhost:8025",
        "LOCALHOST",
        "dash.localhost:8025",
        "relay.example.test:8025",  # hostname
        "mgmt.internal:8025",  # http.listen's host
        "proxy.example.com",  # http.allowed_hosts
    ],
)
def test_own_names_and_ip_literals_are_allowed(host: str) -> None:
    assert host_refusal({"host": host}, POLICY) is None


@pytest.mark.parametrize(
    "host", ["evil.test", "evil.test:8025", "127.0.0.1.evil.test", "localhost.evil.test", ""]
)
def test_other_names_are_misdirected(host: str) -> None:
    refusal = host_refusal({"host": host}, POLICY)
    assert refusal is not None and refusal.status == 421
    assert "http.allowed_hosts" in refusal.detail


def test_no_host_header_is_not_a_browser_and_star_allows_any() -> None:
    assert host_refusal({}, POLICY) is None
    anything = HostPolicy.from_config(parse_config({"http": {"allowed_hosts": ["*"]}}))
    assert host_refusal({"host": "evil.test"}, anything) is None


def test_allowed_hosts_are_checked_in_the_config() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"http": {"allowed_hosts": ["ok.example", "http://x.test/", "a b"]}})
    assert [p.split(":")[0] for p in info.value.problems] == [
        "http.allowed_hosts[1]",
        "http.allowed_hosts[2]",
    ]


# -- cross-site requests ---------------------------------------------------------------


def cross(method: str = "POST", **headers: str) -> int | None:
    refusal = cross_site_refusal(
        method, {k.replace("_", "-"): v for k, v in headers.items()}, POLICY
    )
    return refusal.status if refusal else None


def test_reads_are_never_cross_site_refused() -> None:
    assert cross("GET", origin="http://evil.test", sec_fetch_site="cross-site") is None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_a_browser_marking_a_change_cross_or_same_site_is_refused(method: str) -> None:
    assert cross(method, sec_fetch_site="cross-site", host="127.0.0.1:8025") == 403
    # Same site, other origin: e.g. a dev server on localhost:3000.
    assert cross(method, sec_fetch_site="same-site", host="localhost:8025") == 403
    assert cross(method, sec_fetch_site="same-origin", host="127.0.0.1:8025") is None


@pytest.mark.parametrize(
    ("origin", "host", "status"),
    [
        ("http://evil.test", "127.0.0.1:8025", 403),
        ("null", "127.0.0.1:8025", 403),  # sandboxed frames, file: pages
        ("http://localhost:3000", "127.0.0.1:8025", 403),
        ("http://127.0.0.1:9999", "127.0.0.1:8025", 403),
        ("http://127.0.0.1:8025", "127.0.0.1:8025", None),
        ("http://[::1]:8025", "[::1]:8025", None),
        ("https://relay.example.test", "relay.example.test", None),
        ("https://relay.example.test", "relay.example.test:443", None),
        ("http://relay.example.test", "relay.example.test:443", 403),
        ("https://proxy.example.com", "127.0.0.1:8025", None),  # allowed_hosts: a proxy
        ("http://evil.test:bad", "127.0.0.1:8025", 403),
    ],
)
def test_origin_must_be_this_node_without_fetch_metadata(
    origin: str, host: str, status: int | None
) -> None:
    assert cross(origin=origin, host=host) == status


def test_programs_send_neither_origin_nor_fetch_metadata() -> None:
    assert cross(host="127.0.0.1:8025") is None


# -- bodies ------------------------------------------------------------------------------


def body(method: str = "POST", **headers: str) -> int | None:
    refusal = body_refusal(method, {k.replace("_", "-"): v for k, v in headers.items()}, LIMIT)
    return refusal.status if refusal else None


def test_the_limit_follows_max_message_size() -> None:
    assert body_limit(25_000_000) == 50_000_000 + 64 * 1024
    assert body(content_type="application/json", content_length=str(LIMIT)) is None


@pytest.mark.parametrize("method", ["POST", "GET", "PUT"])
def test_a_declared_body_over_the_limit_is_refused_before_reading(method: str) -> None:
    refusal = body_refusal(
        method, {"content-type": "application/json", "content-length": "209715200"}, LIMIT
    )
    assert refusal is not None and refusal.status == 413
    assert "209715200" in refusal.detail and "smtp.max_message_size" in refusal.detail


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"content_type": "text/plain", "content_length": "10"}, 415),
        ({"content_type": "application/x-www-form-urlencoded", "content_length": "0"}, 415),
        ({"content_type": "multipart/form-data; boundary=x", "content_length": "9"}, 415),
        ({"content_length": "10"}, 415),  # a body of no declared type
        ({"transfer_encoding": "chunked"}, 415),
        ({}, None),  # no body: `smtplb members pause`
        ({"content_length": "0"}, None),
        ({"content_type": "application/json", "content_length": "2"}, None),
        ({"content_type": "Application/JSON; charset=utf-8", "content_length": "2"}, None),
        ({"content_type": "application/merge-patch+json", "content_length": "2"}, None),
        ({"content_length": "12x"}, 400),
    ],
)
def test_changes_take_json_bodies_only(headers: dict[str, str], status: int | None) -> None:
    assert body("POST", **headers) == status
    assert body("DELETE", **headers) == status


def test_reads_may_carry_any_small_body() -> None:
    assert body("GET", content_type="text/plain", content_length="10") is None


# -- redaction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "<victim@leak.test>: Recipient address rejected",
            "<[address]>: Recipient address rejected",
        ),
        ("RESOLVER.ADR.RecipientNotFound; victim@leak.test not found", None),
        ('"john doe"@example.test: no such user', "[address]: no such user"),
        ("user@[192.0.2.1] unknown", "[address] unknown"),
        ("victim%40leak.test", "[address]"),
        ("café@exämple.test", "[address]"),
        ("452 4.2.2 Mailbox full; quota 100% used", "452 4.2.2 Mailbox full; quota 100% used"),
        ("relay-1", "relay-1"),
    ],
)
def test_addresses_are_redacted(text: str, shown: str | None) -> None:
    out = redact_addresses(text)
    assert "leak.test" not in out and "example.test" not in out
    if shown is not None:
        assert out == shown


@given(st.emails(), st.text(max_size=20), st.text(max_size=20))
@settings(max_examples=300)
def test_no_address_survives_redaction(address: str, before: str, after: str) -> None:
    out = redact_addresses(f"{before} <{address}> {after}")
    assert address not in out
    assert REDACTED in out


def test_redaction_walks_a_view_and_leaves_keys_and_numbers() -> None:
    view = {
        "errors": [{"response": "<a@b.test> rejected", "code": 550}],
        "x@y.test": ["c@d.test", 1.5, None, True],
    }
    assert redacted(view) == {
        "errors": [{"response": "<[address]> rejected", "code": 550}],
        "x@y.test": [REDACTED, 1.5, None, True],
    }


# -- messages built from fields ----------------------------------------------------------

SEPARATORS = ["\r", "\n", "\r\n", "\x00", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]


def refused(result: bytes | JSONResponse) -> dict[str, Any]:
    assert isinstance(result, JSONResponse), result
    doc: dict[str, Any] = json.loads(result.body)
    assert doc["status"] == 422
    return doc


@pytest.mark.parametrize("sep", SEPARATORS)
def test_line_breaks_in_any_header_field_are_422_naming_the_field(sep: str) -> None:
    injected = f"hi{sep}Bcc: victim@x.test"
    doc = refused(
        build_message("a@shop.test", ["b@example.org"], {"subject": injected, "text": "x"})
    )
    assert doc["title"] == "Invalid subject" and "'subject'" in doc["detail"]
    doc = refused(
        build_message("a@shop.test", ["b@example.org"], {"text": "x", "headers": {"X-A": injected}})
    )
    assert "'X-A'" in doc["detail"]
    doc = refused(
        build_message("a@shop.test", ["b@example.org"], {"text": "x", "headers": {injected: "v"}})
    )
    assert doc["title"] == "Invalid headers"
    env = check_envelope_headers(f"a{sep}b@shop.test", ["b@example.org"])
    assert env is not None and "'from'" in refused(env)["detail"]
    env = check_envelope_headers("a@shop.test", [f"b{sep}c@example.org"])
    assert env is not None and "'to'" in refused(env)["detail"]


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({"From": "Shop <a@shop.test>"}, "set from 'from'"),
        ({"subject": "again"}, "set from 'subject'"),
        ({"Content-Type": "text/html"}, "send 'raw'"),
        ({"X A": "v"}, "printable ASCII"),
        ({"": "v"}, "printable ASCII"),
        ({"X-" + "a" * 120: "v"}, "1 to 100"),
        ({"Date": "garbage"}, "'Date' is not valid"),
        ({"Reply-To": "a@"}, "'Reply-To' is not valid"),
        ({"Reply-To": "a@b.test", "reply-to": "c@d.test"}, "at most 1"),
        ({"Message-ID": "no brackets"}, "'Message-ID' is not valid"),
    ],
)
def test_bad_headers_are_422(headers: dict[str, str], words: str) -> None:
    doc = refused(
        build_message("a@shop.test", ["b@example.org"], {"text": "x", "headers": headers})
    )
    assert words in doc["detail"]


@pytest.mark.parametrize(
    ("fields", "title"),
    [
        ({"subject": 5, "text": "x"}, "Invalid subject"),
        ({"text": ["x"]}, "Invalid text"),
        ({"text": "\ud800"}, "Invalid text"),
        ({"html": "<p>\x00</p>"}, "Invalid html"),
    ],
)
def test_content_fields_are_strings_without_nul_or_surrogates(
    fields: dict[str, Any], title: str
) -> None:
    assert refused(build_message("a@shop.test", ["b@example.org"], fields))["title"] == title


def test_raw_keeps_its_lines_and_refuses_nul_and_surrogates() -> None:
    assert raw_content("Subject: x\n\nline\r\n") == b"Subject: x\r\n\r\nline\r\n"
    assert refused(raw_content("Subject: x\r\n\r\n\x00"))["title"] == "Invalid raw"
    assert refused(raw_content("Subject: \ud800\r\n\r\nx"))["title"] == "Invalid raw"
    assert refused(raw_content(b"x"))["title"] == "Invalid raw"


def test_good_fields_build_the_message() -> None:
    built = build_message(
        "a@shop.test",
        ["b@example.org"],
        {
            "subject": "Grüße\tund mehr",
            "text": "hello\r\nworld",
            "html": "<p>hello</p>",
            "headers": {"Reply-To": "Shop <help@shop.test>", "X-Campaign": "nov"},
        },
    )
    assert isinstance(built, bytes)
    msg = message_from_bytes(built, policy=SMTP)
    assert msg["Subject"] == "Grüße\tund mehr"
    assert msg["Reply-To"] == "Shop <help@shop.test>"
    assert msg["X-Campaign"] == "nov"
    assert msg.get_content_type() == "multipart/alternative"


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)


@given(
    subject=JSONISH,
    text=JSONISH,
    html=JSONISH,
    headers=st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=4) | JSONISH,
)
@settings(max_examples=400, deadline=None)
def test_any_fields_give_a_message_or_a_422_and_never_an_injected_header(
    subject: Any, text: Any, html: Any, headers: Any
) -> None:
    fields = {"subject": subject, "text": text, "html": html, "headers": headers}
    result = build_message("a@shop.test", ["b@example.org"], fields)
    if isinstance(result, JSONResponse):
        assert json.loads(result.body)["status"] == 422
        return
    names = {k.lower() for k in msg_names(result)}
    given_names = {k.lower() for k in headers} if isinstance(headers, dict) else set()
    own = {"from", "to", "subject", "mime-version", "content-type", "content-transfer-encoding"}
    assert names <= own | given_names


def msg_names(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    return [line.split(":", 1)[0] for line in head.split("\r\n") if line and line[0] not in " \t"]


def test_the_guard_answers_are_in_the_openapi_document() -> None:
    from smtplb.api.openapi import document
    from smtplb.api.routes import ROUTES

    paths = document(ROUTES, "test")["paths"]
    inject = set(paths["/api/v1/messages"]["post"]["responses"])
    assert {"403", "413", "415", "421"} <= inject
    queue = set(paths["/api/v1/queue"]["get"]["responses"])
    assert {"413", "421"} <= queue and not {"403", "415"} & queue
