"""The sans-IO SMTP server session, driven directly: no sockets."""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from smtplb.intake.session import ServerSession, SessionPolicy, SessionStateError
from smtplb.intake.session_events import AuthRequest, Close, Event, MessageReceived, StartTLS
from smtplb.intake.session_state import TRANSITIONS, State
from smtplb.smtp.framing import NEED_DATA, PIECE, BodyBudget
from smtplb.smtp.reply import Reply

POLICY = SessionPolicy(
    hostname="mx.test", max_message_size=10_000, max_recipients=3, relay_allowed=True
)
OK = Reply(250, "2.0.0", "Ok: queued")
TXN = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
HEAD = b"EHLO client.test\r\n" + TXN


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def new(policy: SessionPolicy = POLICY, *, tls: bool = False) -> ServerSession:
    session = ServerSession(policy, "192.0.2.1", tls=tls)
    session.greeting()
    session.data_to_send()
    return session


@dataclass
class Result:
    events: list[Event] = field(default_factory=list)
    wire: bytes = b""

    @property
    def replies(self) -> list[str]:
        """Whole replies, multi-line ones joined with newlines."""
        out: list[str] = []
        current: list[str] = []
        for line in self.wire.decode().split("\r\n")[:-1]:
            current.append(line)
            if len(line) < 4 or line[3] != "-":
                out.append("\n".join(current))
                current = []
        return out

    @property
    def codes(self) -> list[str]:
        """'250 2.1.0' style: code plus enhanced code when there is one."""
        out = []
        for reply in self.replies:
            last = reply.split("\n")[-1]
            parts = last.split(" ")
            has_enhanced = len(parts) > 1 and parts[1][:1].isdigit() and "." in parts[1]
            out.append(" ".join(parts[:2]) if has_enhanced else parts[0][:3])
        return out

    @property
    def messages(self) -> list[MessageReceived]:
        return [e for e in self.events if isinstance(e, MessageReceived)]

    @property
    def closed(self) -> bool:
        return any(isinstance(e, Close) for e in self.events)


def drive(
    session: ServerSession,
    *chunks: bytes,
    answer: Reply | None = OK,
    password: str = "secret",
    eof: bool = False,
) -> Result:
    """Feed chunks and play the application: answer messages, AUTH and STARTTLS."""
    result = Result()
    for chunk in (*chunks, b"") if eof else chunks:
        session.receive_data(chunk)
        while not result.closed:
            event = session.next_event()
            if event is NEED_DATA:
                break
            result.events.append(event)
            if isinstance(event, MessageReceived) and answer is not None:
                session.answer_message(answer)
            elif isinstance(event, AuthRequest):
                session.answer_auth(event.password == password)
            elif isinstance(event, StartTLS):
                session.tls_started()
    result.wire = session.data_to_send()
    return result


# -- greeting, EHLO, simple verbs -------------------------------------------------


def test_greeting_names_the_host() -> None:
    session = ServerSession(POLICY, "192.0.2.1")
    session.greeting()
    assert session.data_to_send() == b"220 mx.test ESMTP smtplb\r\n"
    assert session.data_to_send() == b""


def test_ehlo_lists_extensions() -> None:
    result = drive(new(), b"EHLO client.test\r\n")
    assert result.wire == (
        b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"
    )


def test_ehlo_offers_starttls_and_auth_only_when_they_apply() -> None:
    policy = dataclasses.replace(POLICY, starttls_available=True, auth_enabled=True)
    plain = drive(new(policy), b"EHLO c\r\n").replies[0]
    assert "STARTTLS" in plain and "AUTH" not in plain
    secure = drive(new(policy, tls=True), b"EHLO c\r\n").replies[0]
    assert "STARTTLS" not in secure and "250 AUTH PLAIN LOGIN" in secure
    loopback = dataclasses.replace(policy, auth_without_tls=True)
    assert "AUTH PLAIN LOGIN" in drive(new(loopback), b"EHLO c\r\n").replies[0]


def test_helo_and_missing_hostname() -> None:
    result = drive(new(), b"HELO c\r\nEHLO\r\nHELO \r\n")
    assert result.replies[0] == "250 mx.test"
    assert result.codes[1:] == ["501 5.5.4", "501 5.5.4"]


def test_noop_help_vrfy_rset_work_before_and_after_ehlo() -> None:
    result = drive(new(), b"NOOP\r\nHELP\r\nVRFY bob\r\nRSET\r\nEHLO c\r\nRSET x\r\nnoop hi\r\n")
    expected = ["250 2.0.0", "214 2.0.0", "502 5.5.1", "250 2.0.0", "250", "501 5.5.4", "250 2.0.0"]
    assert result.codes == expected


def test_vrfy_is_disabled_as_postfix_says_it() -> None:
    """SPEC §2.1: VRFY disabled; Postfix's disable_vrfy_command wording."""
    result = drive(new(), b"EHLO c\r\nVRFY postmaster\r\nVRFY\r\n")
    assert result.replies[1:] == ["502 5.5.1 VRFY command is disabled"] * 2


def test_quit_closes_and_ignores_what_follows() -> None:
    session = new()
    result = drive(session, b"QUIT\r\nNOOP\r\n")
    assert result.codes == ["221 2.0.0"]
    assert result.events == [Close("quit")]
    assert session.state is State.CLOSED
    assert session.next_event() == Close("quit")


# -- a mail transaction ----------------------------------------------------------------


def test_a_message_with_its_envelope() -> None:
    result = drive(
        new(),
        b"EHLO client.test\r\nMAIL FROM:<a@example.com> SIZE=40 BODY=8BITMIME\r\n"
        b"RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n",
        b"Subject: hi\r\n\r\nbody\r\n.\r\n",
    )
    assert result.codes == ["250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354", "250 2.0.0"]
    [message] = result.messages
    assert message.data == b"Subject: hi\r\n\r\nbody\r\n"
    env = message.envelope
    assert (env.mail_from, env.rcpt_to) == ("a@example.com", ["b@example.net", "c@example.org"])
    assert (env.helo, env.client_ip, env.size_hint, env.body_8bit) == (
        "client.test",
        "192.0.2.1",
        40,
        True,
    )
    assert (env.tls, env.smtputf8, env.auth_user) == (False, False, None)


def test_verbs_are_case_insensitive_and_space_after_colon_is_allowed() -> None:
    result = drive(new(), b"ehlo c\r\nmail from: <a@example.com>\r\nrcpt to: <b@example.net>\r\n")
    assert result.codes == ["250", "250 2.1.0", "250 2.1.5"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"..leading\r\nmid\r\n...three\r\n.x\r\n.\r\n", b".leading\r\nmid\r\n..three\r\nx\r\n"),
        (b"no dot . here\r\n.\r\n", b"no dot . here\r\n"),
    ],
)
def test_dot_unstuffing(content: bytes, expected: bytes) -> None:
    [message] = drive(new(), HEAD + content).messages
    assert message.data == expected


@pytest.mark.parametrize(
    ("content", "plain"),
    [
        (b"a\r\nb . c\r\n.\r\n", True),
        (b"\r\n.\r\n", True),
        (b"..leading\r\n.\r\n", False),
        (b"a\r\n..\r\nb\r\n.\r\n", False),
        (b"a\r\n.x\r\n.\r\n", False),  # a sloppy client's unstuffed dot: not plain either
    ],
)
def test_an_envelope_says_whether_its_content_is_plain_lines(content: bytes, plain: bool) -> None:
    """No line started with a dot: delivery may send the content without stuffing it."""
    [first, then_plain] = drive(new(), HEAD + content + TXN + b"ok\r\n.\r\n").messages
    assert first.envelope.plain_lines is plain
    assert then_plain.envelope.plain_lines  # each body is judged on its own


def test_terminator_split_at_every_position() -> None:
    content = b"Subject: x\r\n\r\nline\r\n..dot\r\n.\r\n"
    for cut in range(len(content) + 1):
        session = new()
        drive(session, HEAD)
        result = drive(session, *(bytes([b]) for b in content[:cut]), content[cut:])
        assert [m.data for m in result.messages] == [b"Subject: x\r\n\r\nline\r\n.dot\r\n"]


def test_pipelined_batch_is_answered_in_one_go() -> None:
    session = new()
    result = drive(session, HEAD + b"x\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<z@example.com>\r\nNOOP\r\n")
    assert result.codes == [
        "250",
        "250 2.1.0",
        "250 2.1.5",
        "354",
        "250 2.0.0",
        "250 2.1.0",
        "250 2.1.5",
        "250 2.0.0",
    ]


def test_input_waits_while_a_message_is_unanswered() -> None:
    session = new()
    result = drive(session, HEAD + b"body\r\n.\r\nMAIL FROM:<a@example.com>\r\n", answer=None)
    assert len(result.messages) == 1
    assert session.awaiting_answer and session.state is State.WAIT_MESSAGE
    session.receive_data(b"NOOP\r\n")
    assert session.next_event() is NEED_DATA
    assert session.data_to_send() == b""
    with pytest.raises(SessionStateError):
        session.answer_auth(True)
    session.answer_message(Reply(451, "4.3.0", "Try later"))
    assert session.next_event() is NEED_DATA
    assert session.data_to_send() == b"451 4.3.0 Try later\r\n250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n"
    with pytest.raises(SessionStateError):
        session.answer_message(OK)


def test_envelope_resets_after_the_answer() -> None:
    session = new()
    drive(session, HEAD + b"x\r\n.\r\n")
    assert drive(session, b"RCPT TO:<b@example.net>\r\nDATA\r\n").codes == [
        "503 5.5.1",
        "503 5.5.1",
    ]
    again = drive(session, b"MAIL FROM:<c@example.com>\r\nRCPT TO:<d@example.net>\r\nDATA\r\n.\r\n")
    [message] = again.messages
    assert message.envelope.rcpt_to == ["d@example.net"]


def test_a_421_answer_closes_the_session() -> None:
    result = drive(new(), HEAD + b"x\r\n.\r\nNOOP\r\n", answer=Reply(421, "4.3.2", "Going away"))
    assert result.codes[-1] == "421 4.3.2"
    assert result.closed


def test_rset_aborts_the_transaction() -> None:
    session = new()
    result = drive(session, HEAD[:-6] + b"RSET\r\nDATA\r\nMAIL FROM:<x@example.com>\r\n")
    assert result.codes[-3:] == ["250 2.0.0", "503 5.5.1", "250 2.1.0"]


# -- sequence errors ---------------------------------------------------------------------


def test_bad_sequences() -> None:
    result = drive(
        new(),
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
        b"EHLO c\r\nRCPT TO:<b@example.net>\r\nDATA\r\nMAIL FROM:<a@example.com>\r\n"
        b"MAIL FROM:<a@example.com>\r\nDATA\r\nDATA now\r\n",
    )
    assert result.codes == [
        "503 5.5.1",  # MAIL before EHLO
        "503 5.5.1",  # RCPT before MAIL
        "503 5.5.1",  # DATA before RCPT
        "250",
        "503 5.5.1",
        "503 5.5.1",
        "250 2.1.0",
        "503 5.5.1",  # nested MAIL
        "554 5.5.1",  # DATA with no valid recipient
        "554 5.5.1",  # bad sequence wins over the stray argument
    ]
    assert "no valid recipients" in result.replies[8]


def test_data_with_an_argument() -> None:
    assert drive(new(), HEAD[:-6] + b"DATA x\r\n").codes[-1] == "501 5.5.4"


# -- addresses and parameters -----------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "a@example.com",
        "first.last+tag@sub.example.co.uk",
        "user@localhost",
        '"quoted local"@example.com',
        '"with>angle"@example.com',
        '"esc\\"aped"@example.com',
        "u@[192.0.2.7]",
        "u@[IPv6:2001:db8::1]",
        "!#$%&'*+/=?^_`{|}~-@example.com",
    ],
)
def test_valid_addresses(address: str) -> None:
    line = f"EHLO c\r\nMAIL FROM:<{address}>\r\nRCPT TO:<{address}>\r\nDATA\r\n.\r\n"
    result = drive(new(), line.encode())
    assert result.codes == ["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]
    assert result.messages[0].envelope.rcpt_to == [address]


@pytest.mark.parametrize(
    "address",
    [
        "plain",
        "@example.com",
        "a@",
        "a@@example.com",
        "a b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a..b@example.com",
        "a@-example.com",
        "a@example-.com",
        "a@exa_mple.com",
        "a@example..com",
        "a@example.com.",
        "a@[300.1.1.1]",
        "a@[IPv6:not-an-ip]",
        '"unterminated@example.com',
        "a@" + "x" * 64 + ".com",
    ],
)
def test_invalid_addresses(address: str) -> None:
    line = (
        f"EHLO c\r\nMAIL FROM:<{address}>\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<{address}>\r\n"
    )
    assert drive(new(), line.encode()).codes == ["250", "501 5.1.7", "250 2.1.0", "501 5.1.3"]


def test_null_sender_only_for_mail_and_source_routes_are_dropped() -> None:
    result = drive(
        new(), b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<>\r\nRCPT TO:<@relay.example:b@example.net>\r\n"
    )
    assert result.codes == ["250", "250 2.1.0", "501 5.1.3", "250 2.1.5"]


def test_command_syntax_errors() -> None:
    result = drive(
        new(),
        b"EHLO c\r\nMAIL a@example.com\r\nMAIL FROM:a@example.com\r\n"
        b"MAIL FROM:<a@example.com>junk\r\nMAIL FROM:<a@example.com> SIZE=big\r\n"
        b"MAIL FROM:<a@example.com> BODY=9BIT\r\nMAIL FROM:<a@example.com> SMTPUTF8=yes\r\n"
        b"MAIL FROM:<a@example.com> NOTIFY=NEVER\r\nMAIL FROM:<a@example.com> AUTH=<>\r\n"
        b"RCPT b@example.net\r\nRCPT TO:<b@example.net> NOTIFY=NEVER\r\n",
    )
    assert result.codes == ["250"] + ["501 5.5.4"] * 6 + ["555 5.5.4", "250 2.1.0"] + [
        "501 5.5.4",
        "555 5.5.4",
    ]


def test_declared_size_over_the_limit() -> None:
    result = drive(new(), b"EHLO c\r\nMAIL FROM:<a@example.com> SIZE=10001\r\n")
    assert result.codes == ["250", "552 5.3.4"]


def test_non_ascii_addresses_need_smtputf8() -> None:
    result = drive(
        new(),
        "EHLO c\r\nMAIL FROM:<jörg@exämple.com>\r\nMAIL FROM:<a@example.com>\r\n"
        "RCPT TO:<ü@example.net>\r\nRSET\r\nMAIL FROM:<jörg@exämple.com> SMTPUTF8\r\n"
        "RCPT TO:<ü@example.net>\r\nDATA\r\n.\r\n".encode(),
    )
    assert result.codes == [
        "250",
        "553 5.6.7",
        "250 2.1.0",
        "553 5.6.7",
        "250 2.0.0",
        "250 2.1.0",
        "250 2.1.5",
        "354",
        "250 2.0.0",
    ]
    [message] = result.messages
    assert message.envelope.smtputf8 and message.envelope.rcpt_to == ["ü@example.net"]


def test_undecodable_and_non_ascii_commands() -> None:
    result = drive(new(), b"EHLO c\r\nNOOP \xff\xfe\r\n", "EHLO cafè\r\nNOOP\r\n".encode())
    assert result.codes == ["250", "500 5.5.2", "500 5.5.2", "250 2.0.0"]


# -- policy: relay, recipients, hooks --------------------------------------------------


def test_relay_is_denied_without_relay_networks_or_auth() -> None:
    closed = dataclasses.replace(POLICY, relay_allowed=False)
    result = drive(
        new(closed), b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
    )
    assert result.codes[-1] == "554 5.7.1"
    assert "relay access denied" in result.replies[-1]


def test_too_many_recipients_and_duplicates() -> None:
    rcpts = b"".join(f"RCPT TO:<r{i}@example.net>\r\n".encode() for i in range(4))
    result = drive(
        new(),
        b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<r0@example.net>\r\n"
        + rcpts
        + b"DATA\r\n.\r\n",
    )
    assert result.codes[2:7] == ["250 2.1.5"] * 4 + ["452 4.5.3"]
    assert result.messages[0].envelope.rcpt_to == [
        "r0@example.net",
        "r1@example.net",
        "r2@example.net",
    ]


def test_check_recipient_hook_refuses_without_counting_an_error() -> None:
    def check(address: str, sender: str) -> Reply | None:
        assert sender == "a@example.com"
        return Reply(550, "5.1.1", "User unknown") if address.startswith("nobody@") else None

    policy = dataclasses.replace(POLICY, check_recipient=check, max_errors=0)
    result = drive(
        new(policy),
        b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<nobody@example.net>\r\n"
        b"RCPT TO:<nobody@example.org>\r\nRCPT TO:<b@example.net>\r\n",
    )
    assert result.codes == ["250", "250 2.1.0", "550 5.1.1", "550 5.1.1", "250 2.1.5"]
    assert not result.closed


def test_an_envelope_says_whether_its_recipients_were_checked_at_rcpt() -> None:
    """Intake does not look a recipient up again when the RCPT check ran (one lookup)."""
    mail = b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nx\r\n.\r\n"
    checked = dataclasses.replace(POLICY, check_recipient=lambda address, sender: None)
    assert drive(new(checked), mail).messages[0].envelope.recipients_checked
    assert not drive(new(POLICY), mail).messages[0].envelope.recipients_checked


# -- limits ------------------------------------------------------------------------------


def test_oversized_data_is_read_to_the_end_discarded_and_refused() -> None:
    session = new()
    drive(session, HEAD)
    chunk = b"x" * 999 + b"\r\n"
    peak = 0
    for _ in range(200):  # 200 kB against a 10 kB limit
        drive(session, chunk)
        peak = max(peak, session.buffered)
    assert peak < 10_000 + 2 * len(chunk)
    result = drive(session, b".\r\nMAIL FROM:<a@example.com>\r\n")
    assert result.codes == ["552 5.3.4", "250 2.1.0"]
    assert result.messages == []


def test_data_exactly_at_the_limit_is_accepted() -> None:
    policy = dataclasses.replace(POLICY, max_message_size=12)
    content = b"0123456789\r\n"
    [message] = drive(new(policy), HEAD, content, b".\r\n").messages
    assert message.data == content
    result = drive(new(policy), HEAD + b"0123456789X\r\n.\r\n")
    assert result.codes[-1] == "552 5.3.4"


def test_line_too_long_is_discarded_and_the_session_stays_usable() -> None:
    session = new()
    long_line = b"NOOP " + b"x" * 5000 + b"\r\n"
    result = drive(session, long_line + b"NOOP\r\n")
    assert result.codes == ["500 5.5.2", "250 2.0.0"]
    assert "line too long" in result.replies[0]
    # Fed in small pieces, nothing accumulates.
    for start in range(0, len(long_line) - 2, 100):
        drive(session, long_line[start : start + 100])
        assert session.buffered <= POLICY.max_line_length
    assert drive(session, long_line[-2:] + b"NOOP\r\n").codes == ["500 5.5.2", "250 2.0.0"]


def test_a_line_of_exactly_the_limit_is_fine() -> None:
    line = b"NOOP " + b"x" * (POLICY.max_line_length - 7) + b"\r\n"
    assert len(line) == POLICY.max_line_length
    assert drive(new(), line, line[:-2] + b"y\r\n").codes == ["250 2.0.0", "500 5.5.2"]


def test_commands_must_end_in_crlf() -> None:
    result = drive(new(), b"NOOP\nNOOP\rNOOP\r\nNOOP\r\r\nNOOP\r\n")
    assert result.codes == ["500 5.5.2", "500 5.5.2", "500 5.5.2", "250 2.0.0"]
    assert "bare <LF>" in result.replies[0] and "bare <CR>" in result.replies[1]


def test_garbage_keeps_the_session_usable() -> None:
    result = drive(new(), b"\x00\x01garbage\r\nGET / HTTP/1.1\r\n\r\nEHLO c\r\n")
    assert result.codes == ["500 5.5.2", "500 5.5.2", "500 5.5.2", "250"]
    assert not result.closed


def test_too_many_errors_closes() -> None:
    policy = dataclasses.replace(POLICY, max_errors=3)
    result = drive(new(policy), b"BAD\r\n" * 4 + b"NOOP\r\n")
    assert result.codes == ["500 5.5.2"] * 4 + ["421 4.7.0"]
    assert result.events == [Close("too many errors")]


# -- SMTP smuggling ------------------------------------------------------------------------

SMUGGLED = (
    b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
    b"From: ceo@example.com\r\n\r\nsmuggled\r\n"
)


@pytest.mark.parametrize("fake_end", [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n"])
def test_smuggling_never_yields_a_second_message(fake_end: bytes) -> None:
    session = new()
    result = drive(
        session, HEAD + b"Subject: real\r\n\r\nbody" + fake_end + SMUGGLED + b".\r\nQUIT\r\n"
    )
    assert result.messages == []
    assert result.codes == ["250", "250 2.1.0", "250 2.1.5", "354", "550 5.6.0", "221 2.0.0"]


@pytest.mark.parametrize("content", [b"a\nb\r\n", b"a\rb\r\n", b"a\r\r\n", b"x\n\r\n"])
def test_bare_newlines_in_data_are_refused(content: bytes) -> None:
    result = drive(new(), HEAD + content + b".\r\nNOOP\r\n")
    assert result.messages == []
    assert result.codes[-2:] == ["550 5.6.0", "250 2.0.0"]


@pytest.mark.parametrize("content", [b"a\0b\r\n", b"\0\r\n", b"line\r\n" * 3 + b"\0"])
def test_a_nul_byte_in_data_is_refused_after_the_final_dot(content: bytes) -> None:
    """No BINARYMIME: NUL is not text (RFC 5321 §4.5.2); Postfix would pass it on."""
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    result = drive(new(), HEAD + content + b".\r\nNOOP\r\n")
    assert result.messages == []
    assert result.replies[-2:] == [
        "554 5.6.0 Error: NUL byte in message content; BINARYMIME is not supported",
        "250 2.0.0 Ok",
    ]


# -- the node-wide memory budget for message bodies -----------------------------------------


def budget_policy(limit: int) -> tuple[SessionPolicy, BodyBudget]:
    budget = BodyBudget(limit)
    return dataclasses.replace(POLICY, max_message_size=10**9, body_budget=budget), budget


def test_data_without_room_in_the_budget_gets_452_and_the_transaction_stays() -> None:
    policy, budget = budget_policy(1000)
    first = new(policy)
    held = drive(first, HEAD + b"x" * 998 + b"\r\n.\r\n", answer=None)
    assert len(held.messages) == 1 and budget.used == 1000
    second = new(policy)
    result = drive(second, HEAD)
    assert result.replies[-1] == "452 4.3.1 Insufficient system storage, try again later"
    assert second.state is State.RCPT  # the client may try DATA again later
    first.answer_message(OK)  # the message is stored: its room comes back
    assert budget.used == 0
    after = drive(second, b"DATA\r\nsmall\r\n.\r\n")
    assert after.codes == ["354", "250 2.0.0"] and len(after.messages) == 1
    assert budget.used == 0


def test_data_with_a_declared_size_over_the_room_gets_452() -> None:
    policy, _ = budget_policy(1000)
    result = drive(
        new(policy),
        b"EHLO c\r\nMAIL FROM:<a@example.com> SIZE=2000\r\nRCPT TO:<b@example.net>\r\nDATA\r\n",
    )
    assert result.codes[-1] == "452 4.3.1"


def test_a_body_that_outgrows_the_budget_is_read_to_the_end_and_refused_452() -> None:
    policy, budget = budget_policy(PIECE)
    session = new(policy)
    drive(session, HEAD)
    for _ in range(4):
        drive(session, (b"y" * 998 + b"\r\n") * (PIECE // 1000))
    assert session.buffered < 2 * PIECE and budget.used <= PIECE
    result = drive(session, b".\r\nNOOP\r\n")
    assert result.messages == [] and result.codes == ["452 4.3.1", "250 2.0.0"]
    assert budget.used == 0


def test_a_lost_connection_gives_the_room_back() -> None:
    policy, budget = budget_policy(10**6)
    session = new(policy)
    drive(session, HEAD + b"z" * 100_000 + b"\r\n")  # in the middle of DATA
    waiting = new(policy)
    drive(waiting, HEAD + b"w\r\n.\r\n", answer=None)  # a message in the handler
    assert budget.used > 100_000
    session.close()
    waiting.close()
    assert budget.used == 0


# -- EOF, timeout, refusal -----------------------------------------------------------------


def test_eof_closes_even_in_the_middle_of_data() -> None:
    assert drive(new(), b"NOOP\r\n", eof=True).events == [Close("client closed the connection")]
    result = drive(new(), HEAD + b"partial\r\n", eof=True)
    assert result.messages == [] and result.closed


def test_eof_after_a_message_waits_for_its_answer() -> None:
    session = new()
    result = drive(session, HEAD + b"x\r\n.\r\n", answer=None, eof=True)
    assert len(result.messages) == 1 and not result.closed
    session.answer_message(OK)
    assert session.next_event() == Close("client closed the connection")
    assert session.data_to_send().startswith(b"250 2.0.0")


def test_timeout_and_refuse() -> None:
    session = new()
    session.timeout()
    assert session.next_event() == Close("timeout")
    assert session.data_to_send() == b"421 4.4.2 mx.test Error: timeout exceeded\r\n"
    refused = ServerSession(POLICY, "192.0.2.1")
    refused.refuse(Reply(421, "4.3.2", "Draining"))
    refused.receive_data(b"EHLO c\r\n")
    event = refused.next_event()
    assert isinstance(event, Close) and "4.3.2" in event.reason
    assert refused.data_to_send() == b"421 4.3.2 Draining\r\n"


# -- STARTTLS ----------------------------------------------------------------------------------

TLS_POLICY = dataclasses.replace(POLICY, starttls_available=True)


def test_starttls_not_offered() -> None:
    result = drive(new(), b"EHLO c\r\nSTARTTLS\r\nSTARTTLS now\r\n")
    assert result.codes == ["250", "454 4.7.0", "501 5.5.4"]


def test_starttls_resets_state_and_drops_injected_plaintext() -> None:
    session = new(TLS_POLICY)
    session.receive_data(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@example.com>\r\n")
    assert session.next_event() == StartTLS()
    assert session.awaiting_answer
    assert session.next_event() is NEED_DATA
    assert session.data_to_send().endswith(b"220 2.0.0 Ready to start TLS\r\n")
    session.tls_started()
    assert session.tls and session.state is State.CONNECTED and session.buffered == 0
    result = drive(session, b"MAIL FROM:<a@example.com>\r\nEHLO c\r\nSTARTTLS\r\n" + TXN + b".\r\n")
    expected = ["503 5.5.1", "250", "503 5.5.1", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]
    assert result.codes == expected
    assert "STARTTLS" not in result.replies[1]
    assert result.messages[0].envelope.tls


def test_starttls_in_a_transaction_is_a_bad_sequence() -> None:
    result = drive(new(TLS_POLICY), b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nSTARTTLS\r\n")
    assert result.replies[-1] == "503 5.5.1 Error: MAIL transaction in progress"


# -- AUTH -----------------------------------------------------------------------------------------

AUTH_POLICY = dataclasses.replace(POLICY, auth_enabled=True, relay_allowed=False)


def authed(*chunks: bytes, policy: SessionPolicy = AUTH_POLICY) -> tuple[ServerSession, Result]:
    session = new(policy, tls=True)
    return session, drive(session, b"EHLO c\r\n", *chunks)


def test_auth_plain_with_initial_response() -> None:
    session, result = authed(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + 'secret')}\r\n".encode())
    assert result.codes == ["250", "235 2.7.0"]
    [request] = [e for e in result.events if isinstance(e, AuthRequest)]
    assert (request.mechanism, request.username) == ("PLAIN", "alice")
    assert "secret" not in repr(request)
    assert session.authenticated_user == "alice"
    after = drive(session, TXN + b".\r\n")
    assert after.codes[-1] == "250 2.0.0"  # relay allowed once authenticated
    assert after.messages[0].envelope.auth_user == "alice"


def test_auth_plain_with_continuation_and_wrong_password() -> None:
    session, result = authed(
        b"AUTH PLAIN\r\n", f"{b64('alice' + chr(0) + 'alice' + chr(0) + 'nope')}\r\n".encode()
    )
    assert result.codes == ["250", "334", "535 5.7.8"]
    assert b"334 \r\n" in result.wire
    assert session.authenticated_user is None


def test_auth_login_with_and_without_initial_response() -> None:
    session, result = authed(b"AUTH LOGIN\r\n", f"{b64('bob')}\r\n{b64('secret')}\r\n".encode())
    assert result.wire.split(b"\r\n")[-4:-1] == [
        b"334 VXNlcm5hbWU6",
        b"334 UGFzc3dvcmQ6",
        b"235 2.7.0 Authentication successful",
    ]
    assert session.authenticated_user == "bob"
    session, result = authed(f"AUTH LOGIN {b64('bob')}\r\n{b64('secret')}\r\n".encode())
    assert result.codes == ["250", "334", "235 2.7.0"]


def test_auth_cancel_and_undecodable_responses() -> None:
    session, result = authed(
        b"AUTH LOGIN\r\n*\r\nAUTH PLAIN\r\nnot base64!\r\nAUTH PLAIN =\r\n"
        b"AUTH PLAIN "
        + b64("x\0alice\0secret").encode()
        + b"\r\nAUTH PLAIN\r\n\xff\xff\r\nNOOP\r\n"
    )
    assert result.codes == [
        "250",
        "334",
        "501 5.0.0",  # cancelled
        "334",
        "501 5.5.2",  # not base64
        "501 5.5.2",  # "=": empty PLAIN response
        "535 5.7.8",  # authorization identity differs
        "334",
        "500 5.5.2",  # undecodable line
        "250 2.0.0",
    ]
    assert session.authenticated_user is None


def test_auth_refusals() -> None:
    plain = dataclasses.replace(AUTH_POLICY, relay_allowed=True)
    assert drive(new(plain), b"EHLO c\r\nAUTH PLAIN\r\n").codes[-1] == "538 5.7.11"
    loopback = dataclasses.replace(plain, auth_without_tls=True)
    assert drive(new(loopback), b"EHLO c\r\nAUTH LOGIN\r\n").codes[-1] == "334"
    disabled = dataclasses.replace(POLICY, auth_enabled=False)
    assert drive(new(disabled, tls=True), b"EHLO c\r\nAUTH PLAIN\r\n").codes[-1] == "503 5.5.1"
    tls = new(plain, tls=True)
    result = drive(
        tls,
        b"AUTH PLAIN\r\nHELO c\r\nAUTH PLAIN\r\nEHLO c\r\nAUTH CRAM-MD5\r\n"
        b"MAIL FROM:<a@example.com>\r\nAUTH PLAIN\r\n",
    )
    assert result.codes == [
        "503 5.5.1",
        "250",
        "503 5.5.1",
        "250",
        "504 5.5.4",
        "250 2.1.0",
        "503 5.5.1",
    ]
    _, twice = authed(
        f"AUTH PLAIN {b64(chr(0) + 'a' + chr(0) + 'secret')}\r\nAUTH PLAIN\r\n".encode()
    )
    assert twice.codes[-1] == "503 5.5.1"


def test_require_auth_before_mail() -> None:
    policy = dataclasses.replace(AUTH_POLICY, require_auth=True)
    session, result = authed(b"MAIL FROM:<a@example.com>\r\n", policy=policy)
    assert result.codes[-1] == "530 5.7.0"
    token = b64("\0alice\0secret").encode()
    after = drive(session, b"AUTH PLAIN " + token + b"\r\nMAIL FROM:<a@example.com>\r\n")
    assert after.codes == ["235 2.7.0", "250 2.1.0"]


# -- the transition table, repr ------------------------------------------------------------------


def test_every_state_is_reachable_in_the_table() -> None:
    reachable = {State.CONNECTED} | set(TRANSITIONS.values())
    assert reachable == set(State)


def test_repr_tells_the_state() -> None:
    session = new()
    drive(session, HEAD[:-6])
    text = repr(session)
    assert "state=rcpt" in text and "rcpts=1" in text and "192.0.2.1" in text


# -- chunking never changes the outcome ------------------------------------------------------

FUZZ_POLICY = SessionPolicy(
    hostname="mx.test",
    max_message_size=200,
    max_recipients=2,
    max_line_length=64,
    max_errors=12,
    auth_enabled=True,
    auth_without_tls=True,
    relay_allowed=True,
)
PIECES = [
    b"EHLO c\r\n",
    b"HELO c\r\n",
    b"MAIL FROM:<a@example.com>\r\n",
    b"MAIL FROM:<> SIZE=10\r\n",
    b"RCPT TO:<b@example.net>\r\n",
    b"RCPT TO:<c@example.net>\r\n",
    b"RCPT TO:<d@example.net>\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b64("\0u\0secret").encode() + b"\r\n",
    b"*\r\n",
    b"AUTH PLAIN " + b64("\0u\0secret").encode() + b"\r\n",
]
DATA_PIECES = [
    b"Subject: x\r\n\r\nbody\r\n",
    b"..dot\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\n.\n",
    b"\r",
    b"\n",
    b".",
    b"x" * 70,
    b"y" * 250 + b"\r\n",
    b"\xff\xfe",
    "MAIL FROM:<ü@example.com> SMTPUTF8\r\n".encode(),
]
PIECES += DATA_PIECES
# A transaction whose content is made of pieces that look like line ends and
# terminators, so that real messages, refusals and smuggling attempts all occur.
transactions = st.lists(st.sampled_from(DATA_PIECES) | st.binary(max_size=8), max_size=12).map(
    lambda parts: TXN + b"".join(parts) + b"\r\n.\r\n"
)
streams = st.lists(
    st.sampled_from(PIECES) | st.binary(max_size=12) | transactions, max_size=30
).map(lambda parts: b"EHLO c\r\n" + b"".join(parts))


def _run(stream: bytes, cuts: list[int]) -> tuple[list[object], bytes]:
    session = ServerSession(FUZZ_POLICY, "192.0.2.1")
    session.greeting()
    points = sorted({c % (len(stream) + 1) for c in cuts})
    bounds = zip([0, *points], [*points, len(stream)], strict=True)
    chunks = [stream[a:b] for a, b in bounds if b > a]  # b"" would mean EOF
    result = drive(session, *chunks, eof=True)
    for message in result.messages:
        data = message.data
        crlf = data.count(b"\r\n")
        assert data.count(b"\n") == crlf and data.count(b"\r") == crlf
        assert data == b"" or data.endswith(b"\r\n")
    summary: list[object] = [
        (type(e).__name__, e.data, e.envelope.rcpt_to) if isinstance(e, MessageReceived) else e
        for e in result.events
    ]
    return summary, result.wire


@settings(max_examples=400, deadline=None)
@given(stream=streams, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_chunking_gives_the_same_conversation(stream: bytes, cuts: list[int]) -> None:
    assert _run(stream, cuts) == _run(stream, [])


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.lists(st.sampled_from(DATA_PIECES) | st.binary(max_size=8), max_size=5).map(b"".join),
    fake_end=st.sampled_from([b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_smuggled_commands_never_become_a_message(
    prefix: bytes, fake_end: bytes, cuts: list[int]
) -> None:
    content = prefix + fake_end + SMUGGLED
    assume(b"\r\n.\r\n" not in b"\r\n" + content)  # the only real end is the last one
    events, wire = _run(HEAD + content + b".\r\nQUIT\r\n", cuts)
    assert not any(isinstance(e, tuple) for e in events)  # no MessageReceived at all
    assert wire.split(b"\r\n")[-3][:9] in (b"550 5.6.0", b"552 5.3.4")  # then 221 to QUIT
