"""The shared SMTP core (smtplb.smtp): replies, status classes, framing, the body reader."""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtplb.config import SmtpConfig
from smtplb.delivery.client_state import TRANSITIONS as CLIENT_TRANSITIONS
from smtplb.delivery.client_state import State as ClientState
from smtplb.intake.session_state import TRANSITIONS as SERVER_TRANSITIONS
from smtplb.smtp import framing
from smtplb.smtp.framing import (
    PIECE,
    TOO_LONG,
    BodyBudget,
    BodyProblem,
    BodyReader,
    LineBuffer,
    dot_stuff,
    only_crlf,
    plain_lines,
)
from smtplb.smtp.reply import Reply, parse_reply, split_enhanced_code
from smtplb.smtp.status import BounceKind, classify_reply
from smtplb.smtp.verbs import VERBS, Verb
from smtplb.units import Size

# -- replies and status -------------------------------------------------------------------


def test_reply_wire_form_and_classes() -> None:
    reply = Reply(250, "2.0.0", "first\nsecond")
    assert reply.to_bytes() == b"250-2.0.0 first\r\n250 2.0.0 second\r\n"
    assert str(reply) == "250 2.0.0 first\nsecond"
    assert reply.is_success and reply.is_positive and not reply.is_transient
    assert Reply(354).is_positive and not Reply(354).is_success
    assert Reply(452, "4.3.1").is_transient and Reply(502, "5.5.1").is_permanent


def _wire_form(reply: Reply) -> bytes:
    """RFC 5321 4.2.1 spelled out: every line but the last has "-" after the code."""
    lines = reply.text.split("\n")
    prefix = f"{reply.enhanced_code} " if reply.enhanced_code else ""
    out = [
        f"{reply.code}{' ' if i == len(lines) - 1 else '-'}{prefix}{line}".rstrip(" ") + "\r\n"
        for i, line in enumerate(lines)
    ]
    return "".join(out).encode("utf-8", "replace")


@given(
    st.integers(200, 599),
    st.none() | st.sampled_from(["2.0.0", "4.7.1", "5.1.1"]),
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=40),
)
def test_a_reply_on_the_wire_one_line_or_several(
    code: int, enhanced: str | None, text: str
) -> None:
    assert Reply(code, enhanced, text).to_bytes() == _wire_form(Reply(code, enhanced, text))
    empty = f"{code} {enhanced or ''}".rstrip().encode() + b"\r\n"
    assert Reply(code, enhanced, "").to_bytes() == empty


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (250, "2.1.5 Ok", ("2.1.5", "Ok")),
        (550, "5.1.10 no such domain", ("5.1.10", "no such domain")),
        (550, "4.1.1 class does not match the code", (None, "4.1.1 class does not match the code")),
        (250, "2.0 not an enhanced code", (None, "2.0 not an enhanced code")),
        (250, "2.0.0", ("2.0.0", "")),
    ],
)
def test_split_enhanced_code(code: int, text: str, expected: tuple[str | None, str]) -> None:
    assert split_enhanced_code(code, text) == expected


def test_parse_reply_strips_the_enhanced_code_of_every_line() -> None:
    reply = parse_reply([b"550-5.7.1 blocked", b"550-5.7.1", b"550 5.7.1 see url"])
    assert reply == Reply(550, "5.7.1", "blocked\n\nsee url")


def test_classify_reply() -> None:
    assert classify_reply(Reply(250, "2.0.0", "ok")) is None
    assert classify_reply(Reply(550, "5.1.1", "User unknown")) is BounceKind.HARD
    assert classify_reply(Reply(550, "5.7.1", "blocked by policy")) is BounceKind.POLICY
    assert classify_reply(Reply(552, "5.2.2", "mailbox full")) is BounceKind.SOFT
    assert classify_reply(Reply(421, "4.7.28", "rate limited")) is BounceKind.TRANSIENT
    assert classify_reply(Reply(550, None, "No such user here")) is BounceKind.HARD


# -- verbs and the two tables -------------------------------------------------------------


def test_verbs_by_name() -> None:
    assert VERBS["EHLO"] is Verb.EHLO and VERBS["STARTTLS"] is Verb.STARTTLS
    assert "XCLIENT" not in VERBS and len(VERBS) == len(Verb) == 12


def test_both_tables_use_typed_triggers() -> None:
    for table in (SERVER_TRANSITIONS, CLIENT_TRANSITIONS):
        assert all(not isinstance(trigger, str) for _, trigger in table)


def test_every_client_state_is_reachable() -> None:
    reachable = {ClientState.GREETING, ClientState.ERROR, *CLIENT_TRANSITIONS.values()}
    assert reachable == set(ClientState)


# -- line framing -------------------------------------------------------------------------


def test_line_buffer_hands_out_lines_and_reports_a_long_one_once() -> None:
    lines = LineBuffer(max_length=10)
    lines.feed(b"NOOP\r\nRS")
    assert lines.read_line() == b"NOOP\r\n"
    assert lines.read_line() is None
    lines.feed(b"ET\r\n" + b"x" * 20)
    assert lines.read_line() == b"RSET\r\n"
    assert lines.read_line() is TOO_LONG
    assert lines.head(5) == b"xxxxx"  # still there for the error message
    assert lines.read_line() is None  # the rest of the long line is dropped
    lines.feed(b"yyy\nQUIT\r\n")
    assert lines.read_line() == b"QUIT\r\n"
    assert len(lines) == 0


# -- DATA: dot-stuffing and the body reader -------------------------------------------------


def read_body(wire: bytes, step: int, reader: BodyReader | None = None) -> tuple[bytes, bytes]:
    """Feed ``wire`` ``step`` bytes at a time; (content, what is left after the dot)."""
    reader = reader or BodyReader(max_size=10**9)
    reader.start()
    buf = bytearray()
    for i in range(0, len(wire), step):
        buf += wire[i : i + step]
        content = reader.read(buf)
        if content is not None:
            return content, bytes(buf) + wire[i + step :]
    raise AssertionError("no final dot found")


_LINE = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c not in b"\r\n\0"))


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.one_of(_LINE, st.sampled_from([b".", b"..", b".x", b""])), max_size=30),
    step=st.integers(1, 50),
)
def test_dot_stuffing_round_trips_whatever_the_reads(lines: list[bytes], step: int) -> None:
    content = b"".join(line + b"\r\n" for line in lines)
    wire = b"".join(dot_stuff(content)) + b"QUIT\r\n"
    body = BodyReader(max_size=10**9)
    assert read_body(wire, step, body) == (content, b"QUIT\r\n")
    assert body.problem is None
    # What delivery is told: no dot line read means content it may send as it is.
    assert body.dot_lines == any(line.startswith(b".") for line in lines)
    assert plain_lines(content) == (bool(lines) and not body.dot_lines)


@pytest.mark.parametrize("step", [1000, 16384, 70000])
@pytest.mark.parametrize("at", [0, 1, PIECE // 52 - 1, PIECE // 52, PIECE // 52 + 1, -1])
def test_a_dot_line_anywhere_in_a_large_body_is_seen(at: int, step: int) -> None:
    """Wherever the one dot line falls (first, at a piece's cut, last), the reader says
    so: delivery would otherwise send the content unstuffed."""
    lines = [b"%050d\r\n" % i for i in range(3 * PIECE // 52)]  # 52-byte lines
    plain = b"".join(lines)
    assert read_body(plain + b".\r\n", step) == (plain, b"")
    reader = BodyReader(max_size=10**9)
    read_body(plain + b".\r\n", step, reader)
    assert not reader.dot_lines
    lines[at] = b"." + lines[at]
    content = b"".join(lines)
    reader = BodyReader(max_size=10**9)
    assert read_body(b"".join(dot_stuff(content)), step, reader) == (content, b"")
    assert reader.dot_lines and not plain_lines(content)


@pytest.mark.parametrize(
    ("data", "plain"),
    [
        (b"a\r\nb\r\n", True),
        (b"\r\n", True),
        (b"", False),  # not a line
        (b"a\r\nb", False),  # the last line not ended
        (b".a\r\n", False),
        (b"a\r\n.\r\n", False),
        (b"a\nb\r\n", False),
        (b"a\rb\r\n", False),
        (b"a.\r\n\t.b\r\n", True),  # a dot, but not at a line's start
    ],
)
def test_plain_lines(data: bytes, plain: bool) -> None:
    assert plain_lines(data) is plain
    if plain:
        assert dot_stuff(data) == [data, b".\r\n"]
        assert dot_stuff(data, plain=True) == dot_stuff(data)


def test_a_large_body_leaves_the_buffer_in_pieces_and_is_joined_once() -> None:
    line = b".starts with a dot and is stuffed on the wire\r\n"
    content = line * (5 * PIECE // len(line))
    wire = b"".join(dot_stuff(content))
    budget = BodyBudget(limit=10 * PIECE)
    reader = BodyReader(max_size=10**9, budget=budget)
    reader.start()
    buf = bytearray()
    peak = 0
    result = None
    for i in range(0, len(wire), 16384):
        buf += wire[i : i + 16384]
        result = reader.read(buf)
        peak = max(peak, len(buf))
    assert result == content
    assert peak < PIECE + 16384  # the receive buffer never holds the message
    assert budget.used == reader.held == len(content)  # held until answered
    reader.release()
    assert budget.used == 0


def test_a_long_line_without_crlf_is_cut_without_splitting_a_crlf() -> None:
    content = b"x" * (3 * PIECE) + b"\r\n" + b"y" * 10 + b"\r\n"
    assert read_body(content + b".\r\n", 1000) == (content, b"")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"a\nb\r\n", BodyProblem.BARE_NEWLINE),
        (b"a\rb\r\n", BodyProblem.BARE_NEWLINE),
        (b"nul \0 here\r\n", BodyProblem.NUL),
        (b"x" * 101 + b"\r\n", BodyProblem.TOO_BIG),
    ],
)
def test_a_bad_body_is_dropped_with_its_problem(content: bytes, problem: BodyProblem) -> None:
    reader = BodyReader(max_size=100)
    assert read_body(content + b".\r\nNOOP\r\n", 7, reader) == (b"", b"NOOP\r\n")
    assert reader.problem is problem
    assert read_body(b"fine\r\n.\r\n", 7, reader) == (b"fine\r\n", b"")  # next one is fresh
    assert reader.problem is None


# Bodies made mostly of the bytes the reader cares about, so that bare CR/LF, CRLF
# pairs split across reads, dot lines, fake and real terminators all turn up.
_TOKENS = [b"\r", b"\n", b"\r\n", b"\r\n", b".", b"\r\n.", b"\0", b"x", b"xyz" * 5]
_WIRE = st.lists(st.sampled_from(_TOKENS), max_size=60).map(b"".join)


def _counted_only_crlf(data: bytes) -> bool:
    """The rule as first written: as many CRLF pairs as CRs and as LFs."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") == crlf and data.count(b"\r") == crlf


@settings(max_examples=2000, deadline=None)
@given(data=st.one_of(_WIRE, st.binary(max_size=64)))
def test_only_crlf_is_the_counting_rule(data: bytes) -> None:
    assert only_crlf(data) is _counted_only_crlf(data)


def _reference_read(wire: bytes) -> tuple[bytes, bytes, BodyProblem | None]:
    """What a body reader must answer for ``wire``, worked out on the whole of it."""
    if wire.startswith(b".\r\n"):
        raw, rest = b"", wire[3:]
    else:
        end = wire.find(b"\r\n.\r\n")
        raw, rest = wire[: end + 2], wire[end + 5 :]
    if not _counted_only_crlf(raw):
        return b"", rest, BodyProblem.BARE_NEWLINE
    if b"\0" in raw:
        return b"", rest, BodyProblem.NUL
    content = raw[1:] if raw.startswith(b".") else raw
    return content.replace(b"\r\n.", b"\r\n"), rest, None


@settings(max_examples=1500, deadline=None)
@given(
    content=_WIRE,
    step=st.integers(1, 40),
    piece=st.sampled_from([4, 8, 16, 64, PIECE]),
)
def test_the_body_reader_answers_as_the_whole_message_says(
    content: bytes, step: int, piece: int
) -> None:
    """Whatever the reads and piece size: the content, the bytes after the dot, the problem."""
    wire = content + b"\r\n.\r\nNEXT\r\n"
    expected = _reference_read(wire)
    reader = BodyReader(max_size=10**9)
    with mock.patch.object(framing, "PIECE", piece):
        content_read, rest = read_body(wire, step, reader)
    assert (content_read, rest, reader.problem) == expected


def test_a_body_over_the_budget_is_dropped_and_its_room_given_back() -> None:
    budget = BodyBudget(limit=2 * PIECE)
    other = BodyReader(max_size=10**9, budget=budget)
    assert read_body(b"z" * PIECE + b"\r\n.\r\n", 4096, other)[0]  # holds PIECE + 2
    reader = BodyReader(max_size=10**9, budget=budget)
    assert read_body(b"w" * (2 * PIECE) + b"\r\n.\r\n", 4096, reader) == (b"", b"")
    assert reader.problem is BodyProblem.NO_ROOM
    assert budget.used == PIECE + 2 and reader.held == 0
    other.release()
    assert budget.used == 0 and budget.has_room(2 * PIECE) and not budget.has_room(2 * PIECE + 1)


def test_the_node_budget_is_shared_by_the_workers() -> None:
    smtp = SmtpConfig(max_message_size=Size(25_000_000))
    assert smtp.pending_bytes_share(1) == 100_000_000  # four largest messages
    assert smtp.pending_bytes_share(8) == 25_000_000  # never less than one
    smtp = SmtpConfig(max_message_size=Size(1_000_000), max_pending_bytes=Size(10_000_000))
    assert smtp.pending_bytes_share(4) == 2_500_000
