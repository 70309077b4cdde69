"""Fuzz the SMTP server session (intake) through its public sans-IO surface:
``receive_data`` / ``next_event`` / ``data_to_send`` and the three answers.

Inputs are byte streams built mostly from SMTP's own grammar (verbs in any case,
parameters, addresses, line ends and DATA terminators, AUTH exchanges), with raw
bytes mixed in, cut into random chunks, under a random policy. Whatever comes
in, the session must not raise, must answer only in well-formed reply lines,
must hand over messages with CRLF line ends within the size and recipient
limits, must keep its buffer bounded, and must end closed after EOF.
"""

from __future__ import annotations

import base64
import re
import zlib

from hypothesis import given
from hypothesis import strategies as st

from smtplb.intake.session import ServerSession, SessionPolicy
from smtplb.intake.session_events import AuthRequest, Close, MessageReceived, StartTLS
from smtplb.intake.session_state import State
from smtplb.smtp.framing import NEED_DATA
from smtplb.smtp.reply import Reply
from tests.fuzz.harness import fuzz_settings, target

REPLY_LINE = re.compile(rb"[2-5][0-9][0-9]([ -][^\r\n]*)?")
ANSWERS = [
    Reply(250, "2.0.0", "Ok: queued"),
    Reply(451, "4.3.0", "Try again later"),
    Reply(554, "5.6.0", "Refused"),
]


def _b64(text: bytes) -> bytes:
    return base64.b64encode(text)


VERBS = [
    b"EHLO",
    b"HELO",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"DATA",
    b"BDAT",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"VRFY",
    b"EXPN",
    b"HELP",
    b"STARTTLS",
    b"AUTH",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
]
ADDRESSES = [
    b"<a@example.com>",
    b"<>",
    b"<b@example.net>",
    b"<c@[192.0.2.1]>",
    b"<@relay.test:d@example.org>",
    "<ü@exämple.test>".encode(),
    b"<a@b@c>",
    b"<" + b"x" * 300 + b"@example.com>",
    b"a@example.com",
    b'<"quoted local"@example.com>',
    b"<a@example.com",
]
PARAMS = [
    b"",
    b" SIZE=10",
    b" SIZE=99999999999999999999",
    b" SIZE=-1",
    b" BODY=8BITMIME",
    b" BODY=BINARYMIME",
    b" SMTPUTF8",
    b" NOTIFY=SUCCESS",
    b" X=\x00",
    b" =",
]
ENDS = [b"\r\n", b"\n", b"\r", b"\r\r\n", b""]
DATA_PIECES = [
    b"Subject: x\r\n\r\nbody\r\n",
    b"..dot\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\n.\n",
    b"\x00",
    b"\xff\xfe",
    b"x" * 120,
    b"\r\nQUIT\r\n",
]

commands = st.builds(
    lambda verb, arg, param, end: verb + arg + param + end,
    st.sampled_from(VERBS + [v.lower() for v in VERBS]),
    st.sampled_from([b"", b" ", b" client.test", *ADDRESSES]) | st.binary(max_size=10),
    st.sampled_from(PARAMS),
    st.sampled_from(ENDS),
)
auth_responses = st.sampled_from(
    [_b64(b"\0u\0secret"), _b64(b"u"), _b64(b"secret"), b"*", b"not base64", _b64(b"\0\0")]
).map(lambda r: r + b"\r\n")
transactions = st.lists(st.sampled_from(DATA_PIECES) | st.binary(max_size=16), max_size=10).map(
    lambda parts: (
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
        + b"".join(parts)
        + b"\r\n.\r\n"
    )
)
streams = st.lists(
    commands | auth_responses | transactions | st.binary(max_size=24), max_size=25
).map(lambda parts: b"".join(parts))


def _check_recipient(address: str, sender: str) -> Reply | None:
    """A deterministic upstream opinion per address: mostly fine."""
    pick = zlib.crc32(address.encode("utf-8", "surrogateescape")) % 5
    return {0: Reply(550, "5.1.1", "User unknown"), 1: Reply(450, "4.2.1", "Busy")}.get(pick)


policies = st.builds(
    SessionPolicy,
    hostname=st.just("mx.fuzz.test"),
    max_message_size=st.integers(min_value=64, max_value=2000),
    max_recipients=st.integers(min_value=1, max_value=3),
    max_line_length=st.integers(min_value=64, max_value=1000),
    max_errors=st.integers(min_value=1, max_value=20),
    starttls_available=st.booleans(),
    auth_enabled=st.booleans(),
    auth_without_tls=st.booleans(),
    require_auth=st.booleans(),
    relay_allowed=st.booleans(),
    check_recipient=st.sampled_from([None, _check_recipient]),
)


def converse(
    policy: SessionPolicy, stream: bytes, cuts: list[int], tls: bool, answers: list[int]
) -> None:
    session = ServerSession(policy, "192.0.2.7", tls=tls)
    session.greeting()
    points = sorted({c % (len(stream) + 1) for c in cuts})
    bounds = zip([0, *points], [*points, len(stream)], strict=True)
    chunks = [stream[a:b] for a, b in bounds if b > a] + [b""]  # b"": EOF
    wire = bytearray()
    answered = 0
    steps = 0
    closed = False
    for chunk in chunks:
        session.receive_data(chunk)
        while not closed:
            steps += 1
            assert steps < 10 * len(stream) + 100, "next_event keeps returning events"
            event = session.next_event()
            if event is NEED_DATA:
                if not session.awaiting_answer:
                    # Unanswered input is at most one unfinished line (or DATA's tail).
                    limit = max(policy.max_line_length, 1000) + 8
                    assert session.buffered <= limit, session.buffered
                break
            if isinstance(event, MessageReceived):
                check_message(policy, event)
                choice = answers[answered % len(answers)] if answers else 0
                session.answer_message(ANSWERS[choice % len(ANSWERS)])
                answered += 1
            elif isinstance(event, AuthRequest):
                session.answer_auth(event.password == "secret")
            elif isinstance(event, StartTLS):
                session.tls_started()
            elif isinstance(event, Close):
                closed = True
            else:
                raise AssertionError(f"unknown event {event!r}")
        wire += session.data_to_send()
    assert closed and session.state is State.CLOSED, "EOF must end the session"
    check_wire(bytes(wire))


def check_message(policy: SessionPolicy, event: MessageReceived) -> None:
    data = event.data
    crlf = data.count(b"\r\n")
    assert data.count(b"\n") == crlf and data.count(b"\r") == crlf, "bare CR or LF in a message"
    assert len(data) <= policy.max_message_size, "message over the size limit"
    assert 1 <= len(event.envelope.rcpt_to) <= policy.max_recipients


def check_wire(wire: bytes) -> None:
    assert wire.startswith(b"220 mx.fuzz.test")
    assert wire.endswith(b"\r\n")
    for line in wire[:-2].split(b"\r\n"):
        assert REPLY_LINE.fullmatch(line), f"not an SMTP reply line: {line[:80]!r}"


@fuzz_settings(bounded=300)
@given(
    policy=policies,
    stream=streams,
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=10),
    tls=st.booleans(),
    answers=st.lists(st.integers(min_value=0, max_value=2), max_size=4),
)
def test_fuzz_server_session(
    policy: SessionPolicy, stream: bytes, cuts: list[int], tls: bool, answers: list[int]
) -> None:
    target("intake: SMTP server session").run(converse, policy, stream, cuts, tls, answers)
