"""The sans-IO SMTP client session, driven with scripted server replies (no sockets)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtplb.delivery.client import (
    ClientSession,
    ExtensionNotOffered,
    IllegalCommand,
    ProtocolError,
    parse_extensions,
)
from smtplb.delivery.client_events import (
    AuthDone,
    EhloDone,
    Event,
    Greeting,
    NoopDone,
    QuitDone,
    ResetDone,
    ServerClosing,
    StartTlsReady,
    StartTlsRefused,
    TransactionDone,
)
from smtplb.delivery.client_state import State
from smtplb.smtp.framing import NEED_DATA, dot_stuff
from smtplb.smtp.reply import Reply, parse_reply

EHLO_PIPELINING = (
    b"250-mx.example Hello\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-AUTH PLAIN LOGIN\r\n"
    b"250 STARTTLS\r\n"
)
EHLO_PLAIN = b"250-mx.example\r\n250 ENHANCEDSTATUSCODES\r\n"

OK = b"250 2.0.0 Ok\r\n"
GO = b"354 End data with <CR><LF>.<CR><LF>\r\n"


def feed(session: ClientSession, data: bytes) -> list[Event]:
    session.receive_data(data)
    events: list[Event] = []
    while (event := session.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def greeted(ehlo_reply: bytes = EHLO_PIPELINING) -> ClientSession:
    session = ClientSession()
    assert feed(session, b"220 mx.example ESMTP\r\n") == [
        Greeting(Reply(220, None, "mx.example ESMTP"))
    ]
    session.ehlo("client.example")
    assert session.data_to_send() == b"EHLO client.example\r\n"
    [event] = feed(session, ehlo_reply)
    assert isinstance(event, EhloDone)
    assert session.state is State.IDLE
    return session


# -- greeting and EHLO ----------------------------------------------------------


def test_ehlo_extensions_are_parsed() -> None:
    session = greeted()
    assert dict(session.extensions) == {
        "PIPELINING": "",
        "SIZE": "10240000",
        "8BITMIME": "",
        "SMTPUTF8": "",
        "ENHANCEDSTATUSCODES": "",
        "AUTH": "PLAIN LOGIN",
        "STARTTLS": "",
    }
    assert session.esmtp
    assert session.supports("pipelining")
    assert session.max_size == 10240000
    assert session.auth_mechanisms == {"PLAIN", "LOGIN"}


def test_extension_quirks() -> None:
    # lower-case keywords, the old "AUTH=" form, and smtp-sink's empty last line
    text = "mx\nauth=LOGIN\nAUTH PLAIN\nsize\n"
    assert parse_extensions(text) == {"AUTH": "LOGIN PLAIN", "SIZE": ""}


def test_refused_ehlo_falls_back_to_helo() -> None:
    session = ClientSession()
    feed(session, b"220 old.example\r\n")
    session.ehlo("client.example")
    assert session.data_to_send() == b"EHLO client.example\r\n"
    assert feed(session, b"502 5.5.2 Error: command not recognized\r\n") == []
    assert session.data_to_send() == b"HELO client.example\r\n"
    assert feed(session, b"250 old.example\r\n") == [EhloDone(Reply(250, None, "old.example"), {})]
    assert not session.esmtp
    assert session.state is State.IDLE


def test_transient_ehlo_refusal_is_reported_not_retried() -> None:
    session = ClientSession()
    feed(session, b"220 mx\r\n")
    session.ehlo("client.example")
    session.data_to_send()
    assert feed(session, b"451 4.3.0 try later\r\n") == [
        EhloDone(Reply(451, "4.3.0", "try later"), {})
    ]
    assert session.data_to_send() == b""


def test_negative_banner_is_an_event_and_the_caller_may_quit() -> None:
    session = ClientSession()
    assert feed(session, b"554 5.7.1 no thanks\r\n") == [Greeting(Reply(554, "5.7.1", "no thanks"))]
    session.quit()
    assert session.data_to_send() == b"QUIT\r\n"
    assert feed(session, b"221 2.0.0 Bye\r\n") == [QuitDone(Reply(221, "2.0.0", "Bye"))]
    assert session.state is State.CLOSED


# -- transactions ---------------------------------------------------------------


def test_pipelined_transaction_writes_mail_rcpt_data_at_once() -> None:
    session = greeted()
    session.send_transaction("a@x.example", ["b@y.example", "c@y.example"], b"Hi\r\n")
    assert session.data_to_send() == (
        b"MAIL FROM:<a@x.example> SIZE=4\r\n"
        b"RCPT TO:<b@y.example>\r\n"
        b"RCPT TO:<c@y.example>\r\n"
        b"DATA\r\n"
    )
    assert feed(session, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n") == []
    assert session.data_to_send() == b""  # nothing before the 354
    assert feed(session, GO) == []
    assert session.data_to_send() == b"Hi\r\n.\r\n"
    assert session.state.name == "BODY"
    [done] = feed(session, b"250 2.0.0 Ok: queued as 4Xyz\r\n")
    assert done == TransactionDone(
        mail=Reply(250, "2.1.0", "Ok"),
        rcpts=[Reply(250, "2.1.5", "Ok"), Reply(250, "2.1.5", "Ok")],
        data=Reply(250, "2.0.0", "Ok: queued as 4Xyz"),
    )
    assert session.state is State.IDLE


def test_the_body_goes_out_as_its_own_piece_uncopied() -> None:
    body = b"x" * 70 + b"\r\n"
    data = body * 1000  # no line starts with a dot: nothing to stuff
    session = greeted()
    session.send_transaction("a@x.example", ["b@y.example"], data)
    session.data_to_send()
    feed(session, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + GO)
    pieces = session.pieces_to_send()
    assert pieces[0] is data and b"".join(pieces) == data + b".\r\n"
    assert session.pieces_to_send() == [] and session.data_to_send() == b""


def test_plain_lines_go_out_as_they_are_unread() -> None:
    data = b"Subject: x\r\n\r\n" + b"y" * 70 + b"\r\n"
    session = greeted()
    session.send_transaction("a@x.example", ["b@y.example"], data, plain_lines=True)
    session.data_to_send()
    feed(session, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + GO)
    pieces = session.pieces_to_send()
    assert pieces == [data, b".\r\n"] and pieces[0] is data
    assert b"".join(pieces) == b"".join(dot_stuff(data))


@pytest.mark.parametrize("data", [b"no trailing newline", b"a\r\n.", b""])
def test_plain_lines_is_not_trusted_for_data_without_a_final_crlf(data: bytes) -> None:
    plain = greeted()
    plain.send_transaction("a@x.example", ["b@y.example"], data, plain_lines=True)
    plain.data_to_send()
    feed(plain, b"250 Ok\r\n250 Ok\r\n" + GO)
    assert plain.data_to_send() == body_bytes(data)


def test_without_plain_lines_a_bare_lf_is_still_refused() -> None:
    session = greeted()
    with pytest.raises(ValueError, match="bare LF"):
        session.send_transaction("a@x.example", ["b@y.example"], b"Hi\n.\nQUIT\n")
    assert session.data_to_send() == b""


@pytest.mark.parametrize("data", [b"a\rb\r\n", b"\r\r\n", b"x\r"])
def test_a_bare_cr_is_let_through_only_a_bare_lf_is_refused(data: bytes) -> None:
    session = greeted()
    session.send_transaction("a@x.example", ["b@y.example"], data)
    assert session.data_to_send().startswith(b"MAIL FROM:")


def test_lock_step_transaction_sends_one_command_per_reply() -> None:
    session = greeted(EHLO_PLAIN)
    session.send_transaction("a@x.example", ["b@y.example", "c@y.example"], b"Hi\r\n")
    assert session.data_to_send() == b"MAIL FROM:<a@x.example>\r\n"
    assert feed(session, b"250 2.1.0 Ok\r\n") == []
    assert session.data_to_send() == b"RCPT TO:<b@y.example>\r\n"
    assert feed(session, b"250 2.1.5 Ok\r\n") == []
    assert session.data_to_send() == b"RCPT TO:<c@y.example>\r\n"
    assert feed(session, b"250 2.1.5 Ok\r\n") == []
    assert session.data_to_send() == b"DATA\r\n"
    assert feed(session, GO) == []
    assert session.data_to_send() == b"Hi\r\n.\r\n"
    [done] = feed(session, OK)
    assert isinstance(done, TransactionDone)
    assert done.data == Reply(250, "2.0.0", "Ok")


def test_partial_rcpt_rejection() -> None:
    session = greeted()
    session.send_transaction("a@x.example", ["bad@y.example", "good@y.example"], b"Hi\r\n")
    session.data_to_send()
    feed(session, b"250 2.1.0 Ok\r\n550 5.1.1 <bad@y.example>: User unknown\r\n250 2.1.5 Ok\r\n")
    feed(session, GO)
    assert session.data_to_send() == b"Hi\r\n.\r\n"
    [done] = feed(session, OK)
    assert isinstance(done, TransactionDone)
    assert done.outcome(0) == Reply(550, "5.1.1", "<bad@y.example>: User unknown")
    assert done.outcome(1) == Reply(250, "2.0.0", "Ok")


def test_pipelined_all_rcpts_rejected_resets_instead_of_data() -> None:
    session = greeted()
    session.send_transaction("a@x.example", ["b@y.example"], b"Hi\r\n")
    session.data_to_send()
    replies = b"250 2.1.0 Ok\r\n550 5.1.1 unknown\r\n554 5.5.1 Error: no valid recipients\r\n"
    assert feed(session, replies) == []
    assert session.data_to_send() == b"RSET\r\n"  # never the message
    [done] = feed(session, OK)
    assert done == TransactionDone(
        Reply(250, "2.1.0", "Ok"), [Reply(550, "5.1.1", "unknown")], data=None
    )
    # the connection is clean for the next message
    session.send_transaction("a@x.example", ["c@y.example"], b"Hi\r\n")
    assert session.data_to_send().startswith(b"MAIL FROM:")


def test_pipelined_data_accepted_without_recipients_gets_a_lone_dot() -> None:
    # RFC 2920 §3.1: a server may accept DATA even though no RCPT succeeded.
    session = greeted()
    session.send_transaction("a@x.example", ["b@y.example"], b"Secret\r\n")
    session.data_to_send()
    feed(session, b"250 2.1.0 Ok\r\n550 5.1.1 unknown\r\n" + GO)
    assert session.data_to_send() == b".\r\n"
    [done] = feed(session, b"554 5.5.1 no valid recipients\r\n")
    assert isinstance(done, TransactionDone)
    assert done.data is None
    assert session.state is State.IDLE


def test_lock_step_all_rcpts_rejected_resets_without_data() -> None:
    session = greeted(EHLO_PLAIN)
    session.send_transaction("a@x.example", ["b@y.example"], b"Hi\r\n")
    session.data_to_send()
    feed(session, b"250 2.1.0 Ok\r\n")
    session.data_to_send()
    assert feed(session, b"550 5.1.1 unknown\r\n") == []
    assert session.data_to_send() == b"RSET\r\n"
    [done] = feed(session, OK)
    assert isinstance(done, TransactionDone)
    assert done.data is None


def test_lock_step_mail_rejected_sends_nothing_more() -> None:
    session = greeted(EHLO_PLAIN)
    session.send_transaction("a@x.example", ["b@y.example", "c@y.example"], b"Hi\r\n")
    session.data_to_send()
    mail = Reply(553, "5.7.1", "sender rejected")
    assert feed(session, b"553 5.7.1 sender rejected\r\n") == [
        TransactionDone(mail, [mail, mail], None)
    ]
    assert session.data_to_send() == b""
    assert session.state is State.IDLE


def test_pipelined_mail_rejected_reads_every_reply_then_resets() -> None:
    session = greeted()
    session.send_transaction("a@x.example", ["b@y.example", "c@y.example"], b"Hi\r\n")
    session.data_to_send()
    replies = b"553 5.7.1 sender rejected\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"
    assert feed(session, replies + b"503 5.5.1 need RCPT\r\n") == []
    assert session.data_to_send() == b"RSET\r\n"
    [done] = feed(session, OK)
    mail = Reply(553, "5.7.1", "sender rejected")
    assert done == TransactionDone(mail, [mail, mail], None)
    assert done.outcome(1) == mail


def test_data_refused_after_accepted_rcpt_is_the_data_reply() -> None:
    session = greeted()
    session.send_transaction("a@x.example", ["b@y.example"], b"Hi\r\n")
    session.data_to_send()
    feed(session, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n451 4.3.0 try again later\r\n")
    assert session.data_to_send() == b"RSET\r\n"
    [done] = feed(session, OK)
    assert isinstance(done, TransactionDone)
    assert done.data == Reply(451, "4.3.0", "try again later")
    assert done.outcome(0) == done.data


def test_421_mid_pipeline_ends_the_transaction_at_once() -> None:
    session = greeted()
    session.send_transaction("a@x.example", ["b@y.example", "c@y.example"], b"Hi\r\n")
    session.data_to_send()
    closing = Reply(421, "4.7.0", "mx.example closing connection")
    events = feed(
        session, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n421 4.7.0 mx.example closing connection\r\n"
    )
    assert events == [
        TransactionDone(Reply(250, "2.1.0", "Ok"), [Reply(250, "2.1.5", "Ok"), closing], closing)
    ]
    assert session.state is State.CLOSED
    assert session.closed_by == (State.RCPT, closing)
    assert feed(session, b"whatever comes after\r\n") == []  # ignored once closed
    with pytest.raises(IllegalCommand):
        session.noop()


def test_421_as_the_end_of_data_reply() -> None:
    session = greeted()
    session.send_transaction("a@x.example", ["b@y.example"], b"Hi\r\n")
    session.data_to_send()
    feed(session, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + GO)
    [done] = feed(session, b"421 4.4.2 timeout\r\n")
    assert isinstance(done, TransactionDone)
    assert done.data == Reply(421, "4.4.2", "timeout")
    assert session.closed_by is not None and session.closed_by[0] is State.BODY


def test_mail_parameters() -> None:
    session = greeted()
    session.send_transaction(
        "ü@x.example", ["b@y.example"], b"\xc3\xa9\r\n", smtputf8=True, body_8bit=True
    )
    first = session.data_to_send().split(b"\r\n")[0]
    assert first == "MAIL FROM:<ü@x.example> SIZE=4 BODY=8BITMIME SMTPUTF8".encode()


def test_null_sender_and_no_size_without_the_extension() -> None:
    session = greeted(EHLO_PLAIN)
    session.send_transaction("", ["b@y.example"], b"Hi\r\n", body_8bit=True)
    assert session.data_to_send() == b"MAIL FROM:<>\r\n"  # no BODY= without 8BITMIME


def test_smtputf8_needs_the_extension() -> None:
    session = greeted(EHLO_PLAIN)
    with pytest.raises(ExtensionNotOffered) as info:
        session.send_transaction("ü@x.example", ["b@y.example"], b"Hi\r\n", smtputf8=True)
    assert info.value.extension == "SMTPUTF8"
    assert session.state is State.IDLE  # nothing was sent
    assert session.data_to_send() == b""


@pytest.mark.parametrize(
    ("mail_from", "rcpts", "data", "words"),
    [
        ("a@x.example", ["b@y.example\r\nRSET"], b"Hi\r\n", "CR, LF"),
        ("a@x.example", ["ü@y.example"], b"Hi\r\n", "not ASCII"),
        ("a@x.example", [], b"Hi\r\n", "at least one recipient"),
        ("a@x.example", ["b@y.example"], b"Hi\n.\nQUIT\n", "bare LF"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    mail_from: str, rcpts: list[str], data: bytes, words: str
) -> None:
    session = greeted()
    with pytest.raises(ValueError, match=words):
        session.send_transaction(mail_from, rcpts, data)
    assert session.data_to_send() == b""
    assert session.state is State.IDLE


# -- dot-stuffing -----------------------------------------------------------------


def body_bytes(data: bytes) -> bytes:
    session = greeted()
    session.send_transaction("a@x.example", ["b@y.example"], data)
    session.data_to_send()
    feed(session, b"250 Ok\r\n250 Ok\r\n" + GO)
    return session.data_to_send()


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"Hi\r\n", b"Hi\r\n.\r\n"),
        (b".leading dot\r\n", b"..leading dot\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\n..two\r\n.\r\n", b"a\r\n...two\r\n..\r\n.\r\n"),
        (b"no trailing newline", b"no trailing newline\r\n.\r\n"),
        (b"ends with a dot line\r\n.", b"ends with a dot line\r\n..\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b"", b".\r\n"),
    ],
)
def test_dot_stuffing(data: bytes, wire: bytes) -> None:
    assert body_bytes(data) == wire


@given(st.lists(st.sampled_from([b"", b".", b"..", b"a", b"a.b", b" ."]), min_size=1, max_size=8))
def test_dot_stuffing_round_trips(lines: list[bytes]) -> None:
    data = b"\r\n".join(lines) + b"\r\n"
    wire = body_bytes(data)
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    received = wire.split(b"\r\n")[:-2]  # what a server reads, up to the lone dot
    assert b"." not in received
    unstuffed = [line[1:] if line.startswith(b".") else line for line in received]
    assert unstuffed == lines


# -- replies ----------------------------------------------------------------------


def test_multi_line_reply_with_enhanced_codes_on_every_line() -> None:
    session = greeted()
    session.noop()
    [event] = feed(session, b"250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 third\r\n")
    assert event == NoopDone(Reply(250, "2.0.0", "first\nsecond\nthird"))


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"250 2.1.5 Ok", Reply(250, "2.1.5", "Ok")),
        (b"550 5.7.1", Reply(550, "5.7.1", "")),
        (b"250", Reply(250, None, "")),
        (b"250 ", Reply(250, None, "")),
        (b"451 4.7.650 throttled", Reply(451, "4.7.650", "throttled")),
        (
            b"550 2.1.1 class does not match the code",
            Reply(550, None, "2.1.1 class does not match the code"),
        ),
        (b"250 2.0 not an enhanced code", Reply(250, None, "2.0 not an enhanced code")),
        (b"250 2.0.0000 too long", Reply(250, None, "2.0.0000 too long")),
        (b"250 2.0.0Ok", Reply(250, None, "2.0.0Ok")),
        ("250 2.0.0 Grüße".encode(), Reply(250, "2.0.0", "Grüße")),
        (b"250 \xff\xfe junk bytes", Reply(250, None, "\ufffd\ufffd junk bytes")),
    ],
)
def test_reply_parsing(line: bytes, reply: Reply) -> None:
    session = greeted()
    session.noop()
    assert feed(session, line + b"\r\n") == [NoopDone(reply)]


def test_bare_lf_replies_are_tolerated() -> None:
    session = greeted()
    session.noop()
    assert feed(session, b"250-one\n250 two\n") == [NoopDone(Reply(250, None, "one\ntwo"))]


@given(
    code=st.sampled_from([211, 220, 250, 354, 421, 451, 550, 554]),
    enhanced_code=st.one_of(st.none(), st.from_regex(r"\A[0-9]{1,3}\.[0-9]{1,3}\Z")),
    lines=st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)
        .map(str.strip)
        .filter(lambda t: not t[:1].isdigit()),
        min_size=1,
        max_size=4,
    ),
)
def test_reply_round_trips_through_the_wire(
    code: int, enhanced_code: str | None, lines: list[str]
) -> None:
    if enhanced_code is not None and code // 100 in (2, 4, 5):
        enhanced_code = f"{code // 100}.{enhanced_code}"
    else:
        enhanced_code = None
    reply = Reply(code, enhanced_code, "\n".join(lines))
    session = greeted()
    session.noop()
    assert feed(session, reply.to_bytes()) == [NoopDone(reply)]


@pytest.mark.parametrize(
    ("garbage", "words"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n", "does not start with a 3-digit code"),
        (b"\r\n", "does not start with a 3-digit code"),
        (b"25\r\n", "does not start with a 3-digit code"),
        (b"650 what\r\n", "does not start with a 3-digit code"),
        (b"2500 Ok\r\n", "not followed by space or hyphen"),
        (b"250_Ok\r\n", "not followed by space or hyphen"),
        (b"250-one\r\n251 two\r\n", "changes its code from 250"),
        (b"250 " + b"x" * 5000, "longer than 4096 bytes"),
        (b"250-x\r\n" * 600, "longer than 500 lines"),
    ],
)
def test_garbage_is_a_protocol_error_naming_the_problem(garbage: bytes, words: str) -> None:
    session = greeted()
    session.noop()
    session.receive_data(garbage)
    with pytest.raises(ProtocolError, match=words):
        session.next_event()
    assert session.state is State.ERROR
    with pytest.raises(ProtocolError, match=words):  # and it stays broken
        session.next_event()
    assert "broken" in repr(session)
    again = greeted()  # one-line replies are remembered once checked: never a bad one
    again.noop()
    again.receive_data(garbage)
    with pytest.raises(ProtocolError, match=words):
        again.next_event()


@pytest.mark.parametrize("line", [b"250 2.1.0 Ok", b"354 go ahead", b"550", b"421 4.7.0 x y"])
def test_a_one_line_reply_is_the_same_every_time(line: bytes) -> None:
    for _ in range(2):
        session = greeted()
        session.noop()
        assert feed(session, line + b"\r\n") == [NoopDone(parse_reply([line]))]


def test_a_reply_nobody_asked_for_is_a_protocol_error() -> None:
    session = greeted()
    session.receive_data(b"250 surprise\r\n")
    with pytest.raises(ProtocolError, match="no command pending"):
        session.next_event()


def test_unsolicited_421_while_idle_closes_the_session() -> None:
    session = greeted()
    closing = Reply(421, "4.4.2", "idle timeout")
    assert feed(session, b"421 4.4.2 idle timeout\r\n") == [ServerClosing(closing)]
    assert session.state is State.CLOSED


# -- STARTTLS, AUTH, RSET, NOOP, QUIT ----------------------------------------------


def test_starttls_ready_then_extensions_are_forgotten() -> None:
    session = greeted()
    session.starttls()
    assert session.data_to_send() == b"STARTTLS\r\n"
    assert feed(session, b"220 2.0.0 Ready to start TLS\r\n") == [
        StartTlsReady(Reply(220, "2.0.0", "Ready to start TLS"))
    ]
    assert session.state is State.TLS_HANDSHAKE
    with pytest.raises(IllegalCommand):
        session.send_transaction("a@x.example", ["b@y.example"], b"Hi\r\n")
    session.tls_established()
    assert session.extensions == {}
    session.ehlo("client.example")
    assert session.data_to_send() == b"EHLO client.example\r\n"


def test_starttls_refused() -> None:
    session = greeted()
    session.starttls()
    assert feed(session, b"454 4.7.0 TLS not available\r\n") == [
        StartTlsRefused(Reply(454, "4.7.0", "TLS not available"))
    ]
    assert session.state is State.IDLE


def test_bytes_after_the_starttls_220_are_refused() -> None:
    # CVE-2011-0411 style injection: plaintext that would be read as if it came over TLS.
    session = greeted()
    session.starttls()
    session.receive_data(b"220 Go ahead\r\n250 injected\r\n")
    with pytest.raises(ProtocolError, match="after its STARTTLS 220"):
        session.next_event()


def test_auth_plain() -> None:
    session = greeted()
    session.auth("PLAIN", "user", "pässword")
    token = base64.b64encode("\0user\0pässword".encode()).decode()
    assert session.data_to_send() == f"AUTH PLAIN {token}\r\n".encode()
    ok = Reply(235, "2.7.0", "Authentication successful")
    assert feed(session, b"235 2.7.0 Authentication successful\r\n") == [AuthDone(ok)]


def test_auth_login_answers_each_challenge() -> None:
    session = greeted()
    session.auth("LOGIN", "user", "secret")
    assert session.data_to_send() == b"AUTH LOGIN\r\n"
    assert feed(session, b"334 VXNlcm5hbWU6\r\n") == []
    assert session.data_to_send() == base64.b64encode(b"user") + b"\r\n"
    assert feed(session, b"334 UGFzc3dvcmQ6\r\n") == []
    assert session.data_to_send() == base64.b64encode(b"secret") + b"\r\n"
    # a third challenge has no answer: cancel
    assert feed(session, b"334 more?\r\n") == []
    assert session.data_to_send() == b"*\r\n"
    [done] = feed(session, b"501 5.7.0 cancelled\r\n")
    assert done == AuthDone(Reply(501, "5.7.0", "cancelled"))


def test_rset_noop_quit() -> None:
    session = greeted()
    session.rset()
    assert session.data_to_send() == b"RSET\r\n"
    assert feed(session, OK) == [ResetDone(Reply(250, "2.0.0", "Ok"))]
    session.noop()
    assert session.data_to_send() == b"NOOP\r\n"
    assert feed(session, OK) == [NoopDone(Reply(250, "2.0.0", "Ok"))]
    session.quit()
    assert session.data_to_send() == b"QUIT\r\n"
    assert feed(session, b"221 2.0.0 Bye\r\n") == [QuitDone(Reply(221, "2.0.0", "Bye"))]
    assert session.state is State.CLOSED


def test_commands_out_of_order_are_caller_bugs() -> None:
    session = ClientSession()
    with pytest.raises(IllegalCommand, match="cannot MAIL while awaiting greeting"):
        session.send_transaction("a@x.example", ["b@y.example"], b"Hi\r\n")
    session = greeted()
    session.send_transaction("a@x.example", ["b@y.example"], b"Hi\r\n")
    with pytest.raises(IllegalCommand, match="cannot MAIL while awaiting MAIL reply"):
        session.send_transaction("a@x.example", ["b@y.example"], b"Hi\r\n")


def test_repr_tells_the_state() -> None:
    session = greeted()
    session.send_transaction("a@x.example", ["b@y.example", "c@y.example"], b"Hi\r\n")
    feed(session, b"250 Ok\r\n250 Ok\r\n")
    assert repr(session) == (
        "<ClientSession awaiting RCPT reply, ESMTP, PIPELINING, 1/2 RCPT replies>"
    )


# -- chunking: how the bytes are split never changes what happens -------------------

SCRIPT_REPLIES = [
    b"220-mx.example ESMTP\r\n220 second banner line\r\n",
    EHLO_PIPELINING,
    b"250 2.1.0 Ok\r\n550 5.1.1 unknown\r\n250 2.1.5 Ok\r\n" + GO,
    b"250 2.0.0 queued\r\n",
    b"250 2.1.0 Ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n",
    b"250 2.0.0 reset\r\n",
    b"221 2.0.0 Bye\r\n",
]


def run_script(chunkings: list[list[int]] | None) -> tuple[list[Event], bytes]:
    """Play a whole session; each reply stream is cut at the given offsets."""
    session = ClientSession()
    events: list[Event] = []
    sent = b""
    commands: list[Callable[[], None]] = [
        lambda: None,
        lambda: session.ehlo("client.example"),
        lambda: session.send_transaction("a@x.example", ["b@y.example", "c@y.example"], b"Hi\r\n"),
        lambda: None,  # the message goes out on the 354
        lambda: session.send_transaction("a@x.example", ["d@y.example"], b"Hi\r\n"),
        lambda: None,  # the RSET goes out on its own
        lambda: session.quit(),
    ]
    for i, (command, stream) in enumerate(zip(commands, SCRIPT_REPLIES, strict=True)):
        command()
        sent += session.data_to_send()
        cuts = sorted(set(chunkings[i])) if chunkings else []
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        for piece in pieces:
            events += feed(session, piece)
            sent += session.data_to_send()
    return events, sent


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_chunking_of_the_reply_stream_gives_the_same_events(data: st.DataObject) -> None:
    chunkings = [
        data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream)))
        for stream in SCRIPT_REPLIES
    ]
    assert run_script(chunkings) == run_script(None)


def test_the_chunking_script_itself() -> None:
    events, sent = run_script(None)
    assert [type(e) for e in events] == [
        Greeting,
        EhloDone,
        TransactionDone,
        TransactionDone,
        QuitDone,
    ]
    assert sent.count(b"RSET\r\n") == 1
    assert sent.count(b"Hi\r\n.\r\n") == 1
