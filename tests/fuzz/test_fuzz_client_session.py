"""Fuzz the SMTP client session (delivery): its reply parser and its state machine,
through the public sans-IO surface (commands, ``receive_data``, ``next_event``).

The upstream's replies are what is fuzzed: well-formed replies of any code,
multi-line, with or without enhanced codes, mixed with broken lines (no code,
wrong separator, a code that changes mid-reply, bare LF, overlong lines, raw
bytes), cut into random chunks, while the client runs a random plan of
commands. A reply the client cannot use must raise ``ProtocolError`` (and
leave the session broken for good); nothing else may be raised, every event
must carry a reply with a 2xx-5xx code, a transaction must report one reply
per recipient, and the client must only ever write CRLF-terminated lines.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from smtplb.delivery.client import (
    ClientSession,
    ExtensionNotOffered,
    IllegalCommand,
    ProtocolError,
)
from smtplb.delivery.client_events import QuitDone, StartTlsReady, TransactionDone
from smtplb.delivery.client_state import State
from smtplb.smtp.framing import NEED_DATA
from smtplb.smtp.reply import Reply
from tests.fuzz.harness import fuzz_settings, target

CODES = [220, 221, 235, 250, 251, 252, 334, 354, 421, 450, 451, 452, 500, 501, 502, 503, 530]
CODES += [535, 550, 551, 552, 553, 554, 555]
TEXT = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n", exclude_categories=["Cs"]),
    max_size=40,
)
EXTENSIONS = [
    "PIPELINING",
    "SIZE 1000",
    "SIZE",
    "SIZE x",
    "8BITMIME",
    "SMTPUTF8",
    "STARTTLS",
    "AUTH PLAIN LOGIN",
    "AUTH=LOGIN",
    "ENHANCEDSTATUSCODES",
    "CHUNKING",
    "",
]


@st.composite
def replies(draw: st.DrawFn) -> bytes:
    """One reply on the wire: well-formed mostly, sometimes subtly or badly broken."""
    code = draw(st.sampled_from(CODES) | st.integers(min_value=0, max_value=999))
    enhanced = draw(
        st.none()
        | st.builds(
            lambda a, b, c: f"{a}.{b}.{c} ",
            st.sampled_from([str(code)[:1], "2", "4", "5", "9"]),
            st.integers(0, 1000),
            st.integers(0, 1000),
        )
    )
    lines = draw(st.lists(TEXT | st.sampled_from(EXTENSIONS), min_size=1, max_size=6))
    end = draw(st.sampled_from(["\r\n", "\r\n", "\r\n", "\n", "\r"]))
    out = []
    for i, text in enumerate(lines):
        sep = " " if i == len(lines) - 1 else draw(st.sampled_from(["-", "-", "-", " ", "", "+"]))
        out.append(f"{code:03d}{sep}{enhanced or ''}{text}{end}")
    return "".join(out).encode("utf-8", "surrogateescape")


server_bytes = st.lists(
    replies() | st.binary(max_size=16) | st.just(b"x" * 5000 + b"\r\n"), min_size=1, max_size=20
).map(b"".join)

STEPS = ["ehlo", "helo", "starttls", "auth_plain", "auth_login", "mail", "mail_utf8"]
plan_steps = st.sampled_from([*STEPS, "rset", "noop", "quit"])


def issue(session: ClientSession, step: str, rcpts: int) -> int | None:
    """Start ``step``; the number of recipients for a transaction, else None."""
    try:
        if step == "ehlo":
            session.ehlo("client.fuzz.test")
        elif step == "helo":
            session.helo("client.fuzz.test")
        elif step == "starttls":
            session.starttls()
        elif step == "auth_plain":
            session.auth("PLAIN", "user", "secret")
        elif step == "auth_login":
            session.auth("LOGIN", "user", "secret")
        elif step in ("mail", "mail_utf8"):
            to = [f"r{i}@example.net" for i in range(rcpts)]
            data = b"Subject: x\r\n\r\n.leading dot\r\nbody\r\n"
            session.send_transaction("s@example.com", to, data, smtputf8=step == "mail_utf8")
            return rcpts
        elif step == "rset":
            session.rset()
        elif step == "noop":
            session.noop()
        else:
            session.quit()
    except (IllegalCommand, ExtensionNotOffered):
        pass  # the caller's mistake, by the API's contract: not what is fuzzed here
    return None


def converse(server: bytes, cuts: list[int], plan: list[str], rcpts: int) -> None:
    session = ClientSession()
    points = sorted({c % (len(server) + 1) for c in cuts})
    bounds = zip([0, *points], [*points, len(server)], strict=True)
    chunks = [server[a:b] for a, b in bounds if b > a]
    steps = iter(plan)
    pending: int | None = None
    written = bytearray()
    try:
        for chunk in chunks:
            session.receive_data(chunk)
            while (event := session.next_event()) is not NEED_DATA:
                reply: Reply | None = getattr(event, "reply", None)
                if isinstance(event, TransactionDone):
                    assert pending is not None, "a transaction nobody started"
                    assert len(event.rcpts) == pending, "one reply per recipient"
                    assert all(200 <= r.code <= 599 for r in event.rcpts)
                    reply = event.mail
                    pending = None
                assert reply is not None and 200 <= reply.code <= 599, event
                if isinstance(event, QuitDone):
                    assert session.state is State.CLOSED
                if isinstance(event, StartTlsReady):
                    session.tls_established()  # as if the handshake happened
                if session.state is State.IDLE and (step := next(steps, None)) is not None:
                    started = issue(session, step, rcpts)
                    pending = started if started is not None else pending
                written += session.data_to_send()
    except ProtocolError:
        assert session.state is State.ERROR
        try:
            session.next_event()
        except ProtocolError:
            pass
        else:
            raise AssertionError("a broken session must stay broken") from None
    written += session.data_to_send()
    assert written.count(b"\n") == written.count(b"\r\n"), "the client wrote a bare LF"
    assert not written or written.endswith(b"\r\n") or written.endswith(b".")


@fuzz_settings(bounded=150)
@given(
    server=server_bytes,
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=10),
    plan=st.lists(plan_steps, max_size=10),
    rcpts=st.integers(min_value=1, max_value=4),
)
def test_fuzz_client_session(server: bytes, cuts: list[int], plan: list[str], rcpts: int) -> None:
    target("delivery: SMTP client session").run(converse, server, cuts, plan, rcpts)


def round_trip(reply: Reply) -> None:
    """A reply smtplb writes (``Reply.to_bytes``) reads back as the same reply."""
    session = ClientSession()
    session.receive_data(reply.to_bytes())
    event = session.next_event()
    assert getattr(event, "reply", None) == reply, (event, reply.to_bytes())


words = st.text(st.sampled_from("abcdefghij XYZ:;<>@.-"), min_size=1, max_size=20).map(
    lambda t: "w" + t.strip() if t.strip() else "w"
)


@fuzz_settings(bounded=300)
@given(
    code=st.integers(min_value=200, max_value=599),
    detail=st.tuples(st.integers(0, 999), st.integers(0, 999)),
    with_enhanced=st.booleans(),
    lines=st.lists(words, min_size=1, max_size=5),
)
def test_fuzz_reply_round_trip(
    code: int, detail: tuple[int, int], with_enhanced: bool, lines: list[str]
) -> None:
    # RFC 3463: enhanced codes exist for classes 2, 4 and 5 only (none for 3xx).
    has_class = code // 100 in (2, 4, 5)
    enhanced = f"{code // 100}.{detail[0]}.{detail[1]}" if with_enhanced and has_class else None
    reply = Reply(code, enhanced, "\n".join(lines))
    target("delivery: reply parser round trip").run(round_trip, reply)
