"""The smart sink plays a provider per client IP: rate limits answered with
Gmail's 421 4.7.28, connection limits at the greeting, blocks with 550 5.7.1."""

from __future__ import annotations

import smtplib

import pytest

from smtplb.sink.profile import ClientRule, SinkProfile, profile_from_dict
from smtplb.sink.server import ThreadedSink


def _send(sink: ThreadedSink, source: str, rcpt: str = "a@gmail.test") -> tuple[int, bytes]:
    with smtplib.SMTP(sink.host, sink.port, source_address=(source, 0)) as c:
        c.ehlo("client.test")
        c.mail("s@shop.test")
        code, text = c.rcpt(rcpt)
        if code == 250:
            code, text = c.data(b"Subject: x\r\n\r\nx\r\n")
        return code, text


def test_rate_limit_per_client_ip_with_the_providers_words() -> None:
    profile = profile_from_dict({"clients": {"127.0.0.2": {"rate": "3/m"}}})
    with ThreadedSink("127.0.0.1", 0, profile) as sink:
        codes = [_send(sink, "127.0.0.2")[0] for _ in range(3)]
        code, text = _send(sink, "127.0.0.2")
        assert codes == [250, 250, 250] and code == 421
        assert text.startswith(b"4.7.28 Our system has detected an unusual rate")
        assert _send(sink, "127.0.0.3")[0] == 250  # another IP is not limited
        assert sink.client_counts["throttled"] == 1


def test_block_and_connection_limit_per_client_ip() -> None:
    profile = SinkProfile(
        clients={"127.0.0.4": ClientRule(block=True), "*": ClientRule(max_connections=2)}
    )
    with ThreadedSink("127.0.0.1", 0, profile) as sink:
        code, text = _send(sink, "127.0.0.4")
        assert code == 550 and b"5.7.1" in text and b"poor reputation" in text
        open_ = [smtplib.SMTP(sink.host, sink.port, source_address=("127.0.0.5", 0))]
        open_.append(smtplib.SMTP(sink.host, sink.port, source_address=("127.0.0.5", 0)))
        try:
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP(sink.host, sink.port, source_address=("127.0.0.5", 0))
            assert refused.value.smtp_code == 421
            assert b"Too many concurrent connections" in refused.value.smtp_error
            assert _send(sink, "127.0.0.6")[0] == 250  # per IP
        finally:
            for c in open_:
                c.quit()
        assert sink.client_counts["connections_refused"] == 1


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"clients": {"1.2.3.4": {"rate": "fast"}}}, 'rate must be like "20/m"'),
        ({"clients": {"1.2.3.4": {"throttle_reply": "250 ok"}}}, "must be a 4xx reply"),
        ({"clients": {"1.2.3.4": {"max_connections": 0}}}, "max_connections must be at least 1"),
        ({"clients": {"1.2.3.4": {"colour": 1}}}, "unknown key 'colour'"),
    ],
)
def test_bad_client_profiles_name_the_key(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        profile_from_dict(doc, source="p.toml")
    assert 'p.toml: clients."1.2.3.4"' in str(err.value)
