"""Delivery Status Notifications (RFC 3464) for bounced and expired recipients. Pure."""

from __future__ import annotations

import email.utils
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from smtplb.intake.headers import split_message


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    address: str
    action: str  # "failed" (bounced or expired)
    status: str  # enhanced_code, e.g. "5.1.1" or "4.4.7"
    diagnostic: str  # "smtp; 550 5.1.1 User unknown" or a reason
    remote_mta: str = ""


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    original_queue_id: str,
    original_content: bytes,
    arrival_date: float,
    recipients: Sequence[FailedRecipient],
    now: float,
    expired: bool,
) -> bytes:
    """A multipart/report DSN to ``original_sender``, with the original headers."""
    boundary = f"smtplb-{secrets.token_hex(12)}"
    subject = (
        "Delivery Status Notification (Delay expired)"
        if expired
        else "Undelivered Mail Returned to Sender"
    )
    human = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients."
        if not expired
        else "Your message could not be delivered before its time in the queue ran out.",
        "",
    ]
    for r in recipients:
        human.append(f"<{r.address}>: {r.diagnostic}")
    per_message = [
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Smtplb-Queue-ID: {original_queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival_date)}",
    ]
    per_recipient: list[str] = []
    for r in recipients:
        per_recipient += [
            "",
            f"Final-Recipient: rfc822; {r.address}",
            f"Action: {r.action}",
            f"Status: {r.status}",
        ]
        if r.remote_mta:
            per_recipient.append(f"Remote-MTA: dns; {r.remote_mta}")
        per_recipient.append(f"Diagnostic-Code: {r.diagnostic}")
    headers, _ = split_message(original_content)
    parts = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{original_sender}>",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: <{int(now)}.{secrets.token_hex(8)}.dsn@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        *per_message,
        *per_recipient,
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    tail = f"\r\n--{boundary}--\r\n"
    head = "\r\n".join(parts).encode("utf-8", "replace") + b"\r\n"
    return head + headers + tail.encode()


def diagnostic(code: int | None, enhanced_code: str | None, response: str) -> str:
    if code is None:
        return f"x-smtplb; {response or 'delivery failed'}"
    return f"smtp; {code} {enhanced_code + ' ' if enhanced_code else ''}{response}".rstrip()
