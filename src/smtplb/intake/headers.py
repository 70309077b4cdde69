"""Header work done once at intake: parse the header block, add trace headers.

Only the header block is touched; the body passes through byte for byte, and
existing headers (List-Unsubscribe and the like) are never refolded.
"""

from __future__ import annotations

import email.utils
import functools
import secrets
import time

from smtplb.model import Envelope
from smtplb.smtp.framing import plain_lines


def rfc5322_date(now: float) -> str:
    """``now`` as a Date/Received date in UTC (whole seconds, as formatdate shows it)."""
    return _date_of_second(int(now))


@functools.lru_cache(maxsize=4)
def _date_of_second(second: int) -> str:
    # formatdate costs ~5 µs; every message of the same second shares its text
    return email.utils.formatdate(second, localtime=False)


def split_message(data: bytes) -> tuple[bytes, memoryview]:
    """(header block incl. its final CRLF, rest incl. the blank line).

    ``rest`` is a view into ``data``: the body of a large message is not copied.
    """
    view = memoryview(data)
    if data.startswith(b"\r\n"):
        return b"", view
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data, view[len(data) :]
    return data[: end + 2], view[end + 2 :]


def parse_headers(block: bytes) -> list[tuple[str, str]]:
    """Unfolded ``(lower-cased name, value)`` pairs of a header block."""
    headers: list[tuple[str, str]] = []
    text = block.decode("utf-8", "replace")
    for line in text.split("\r\n"):
        if not line:
            continue
        if line[0] in " \t" and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip().lower(), value.strip()))
    return headers


def header_value(headers: list[tuple[str, str]], name: str) -> str | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def new_message_id(hostname: str) -> str:
    return f"<{int(time.time())}.{secrets.token_hex(8)}@{hostname}>"


def received_header(envelope: Envelope, hostname: str, queue_id: str, now: float) -> bytes:
    protocol = "ESMTP"
    if envelope.tls:
        protocol += "S"
    if envelope.auth_user:
        protocol += "A"
    helo = envelope.helo or "unknown"
    date = rfc5322_date(now)
    text = (
        f"Received: from {helo} ([{envelope.client_ip}])\r\n"
        f"\tby {hostname} (smtplb) with {protocol} id {queue_id};\r\n"
        f"\t{date}\r\n"
    )
    return text.encode("utf-8", "replace")


def prepare_message(
    data: bytes,
    envelope: Envelope,
    hostname: str,
    queue_id: str,
    now: float,
) -> tuple[bytes, list[tuple[str, str]], str, bool]:
    """Add Received (always) and Message-ID / Date (when missing).

    Returns the new content, the parsed headers, the Message-ID, and whether the
    content is plain lines (:func:`~smtplb.smtp.framing.plain_lines`): when
    ``envelope.plain_lines`` says ``data`` is, and the fields added keep it so
    (checked here: they are a few hundred bytes, the body is not read again).
    """
    block, rest = split_message(data)  # the body is copied once, by the join below
    headers = parse_headers(block)
    added = [received_header(envelope, hostname, queue_id, now)]
    message_id = header_value(headers, "message-id")
    if not message_id:
        message_id = new_message_id(hostname)
        added.append(f"Message-ID: {message_id}\r\n".encode())
        headers.append(("message-id", message_id))
    if header_value(headers, "date") is None:
        date = rfc5322_date(now)
        added.append(f"Date: {date}\r\n".encode())
        headers.append(("date", date))
    plain = envelope.plain_lines and all(map(plain_lines, added))
    if not rest:  # a message with no blank line: everything was header
        end = b"\r\n" if block.endswith(b"\r\n") or not block else b"\r\n\r\n"
        return b"".join([*added, block, end]), headers, message_id, plain
    return b"".join([*added, block, rest]), headers, message_id, plain
