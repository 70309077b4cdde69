"""Complaints (SPEC §2.4): ARF reports (RFC 5965) and JSON events, matched to the
message they complain about, then counted and suppressed.

:func:`parse_arf` and :func:`parse_event` are pure; :class:`FeedbackHandler`
does the rest: it finds the message (our queue id in the original's Received
header, else the Message-ID given), the member that delivered it, writes a
``complaint`` record, counts the complaint against the member × provider and
suppresses the complainant."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from smtplb.clock import Clock
from smtplb.model import domain_of
from smtplb.observability.delivery_log import DeliveryLog
from smtplb.observability.record import DeliveryRecord
from smtplb.reputation.book import ReputationBook
from smtplb.reputation.standing import Outcome
from smtplb.reputation.state import State, Suppression, normalize
from smtplb.spool.base import MessageView

_QUEUE_ID = re.compile(r"\(smtplb\) with \S+ id ([0-9A-Fa-f]{8,40})")
_ADDRESS = re.compile(r"<?([^<>\s@]+@[^<>\s@]+)>?")


class FeedbackError(ValueError):
    """The report cannot be used; the text names what is missing."""


@dataclass(frozen=True, slots=True)
class Feedback:
    recipient: str  # the complainant: the original recipient
    feedback_type: str = "abuse"  # RFC 5965 Feedback-Type; "abuse" for JSON complaints
    queue_id: str | None = None
    message_id: str | None = None
    sender: str | None = None
    source: str = "arf"  # arf | json


def _first_address(value: str | None) -> str | None:
    if not value:
        return None
    found = _ADDRESS.search(value)
    return normalize(found.group(1)) if found else None


def parse_arf(raw: bytes) -> Feedback:
    """An RFC 5965 report: ``multipart/report; report-type=feedback-report`` with a
    ``message/feedback-report`` part and the original message (or its headers)."""
    report = email.message_from_bytes(raw, policy=email.policy.default)
    if report.get_content_type() != "multipart/report":
        raise FeedbackError(f"expected multipart/report, got {report.get_content_type()}")
    if report.get_param("report-type") != "feedback-report":
        raise FeedbackError("expected report-type=feedback-report (RFC 5965)")
    fields: Mapping[str, Any] | None = None
    original: EmailMessage | None = None
    for part in report.iter_parts():
        kind = part.get_content_type()
        if kind == "message/feedback-report":
            fields = _feedback_fields(part)
        elif kind in ("message/rfc822", "text/rfc822-headers"):
            original = _original(part)
    if fields is None:
        raise FeedbackError("no message/feedback-report part")
    headers = original if original is not None else EmailMessage()
    recipient = _first_address(fields.get("original-rcpt-to")) or _first_address(
        str(headers.get("to", ""))
    )
    if recipient is None:
        raise FeedbackError("no Original-Rcpt-To in the report nor To in the original message")
    queue_id = None
    for received in headers.get_all("received", []):
        found = _QUEUE_ID.search(str(received))
        if found:
            queue_id = found.group(1)
    return Feedback(
        recipient=recipient,
        feedback_type=str(fields.get("feedback-type", "abuse")).strip().lower(),
        queue_id=queue_id,
        message_id=str(headers.get("message-id", "")).strip() or None,
        sender=_first_address(fields.get("original-mail-from"))
        or _first_address(str(headers.get("from", ""))),
        source="arf",
    )


def _body(part: Any) -> bytes:
    """The bytes of a part's body, whether the parser made it a message or text."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return b"".join(p.as_bytes() for p in payload)
    if isinstance(payload, str):
        decoded = part.get_payload(decode=True)
        return decoded if isinstance(decoded, bytes) else payload.encode("utf-8", "replace")
    return b""


def _feedback_fields(part: Any) -> dict[str, str]:
    inner = email.message_from_bytes(_body(part), policy=email.policy.default)
    return {k.lower(): str(v) for k, v in inner.items()}


def _original(part: Any) -> EmailMessage:
    parsed = email.message_from_bytes(_body(part), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def parse_event(doc: Mapping[str, Any]) -> Feedback:
    """A JSON complaint: ``{"type": "complaint", "recipient": ..., "queue_id"?,
    "message_id"?, "sender"?}``."""
    kind = doc.get("type", "complaint")
    if kind != "complaint":
        raise FeedbackError(f'type: only "complaint" is taken here, got {kind!r}')
    recipient = doc.get("recipient")
    if not isinstance(recipient, str) or _first_address(recipient) is None:
        raise FeedbackError("recipient: a mail address is required")
    for key in ("queue_id", "message_id", "sender"):
        if key in doc and not isinstance(doc[key], str):
            raise FeedbackError(f"{key}: must be a string")
    return Feedback(
        recipient=_first_address(recipient) or recipient,
        feedback_type=str(doc.get("feedback_type", "abuse")),
        queue_id=doc.get("queue_id"),
        message_id=doc.get("message_id"),
        sender=doc.get("sender"),
        source="json",
    )


def arf_report(
    original: bytes,
    *,
    feedback_type: str = "abuse",
    recipient: str | None = None,
    reporter: str = "fbl@provider.test",
) -> bytes:
    """An RFC 5965 report about ``original`` (as a provider's feedback loop sends
    it): for tests, the demo and operators replaying a complaint."""
    boundary = "smtplb-arf-boundary"
    fields = f"Feedback-Type: {feedback_type}\r\nUser-Agent: smtplb/1\r\nVersion: 1\r\n"
    if recipient:
        fields += f"Original-Rcpt-To: <{recipient}>\r\n"
    return (
        (
            f"From: <{reporter}>\r\nTo: <abuse@sender.test>\r\nSubject: complaint\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=feedback-report;\r\n"
            f' boundary="{boundary}"\r\n'
            f"\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n"
            f"--{boundary}\r\nContent-Type: message/feedback-report\r\n\r\n{fields}\r\n"
            f"--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n"
        ).encode()
        + original
        + f"\r\n--{boundary}--\r\n".encode()
    )


FindMessage = Callable[[str], Awaitable[MessageView | None]]


def complaint_scope(scope: str, sender: str | None) -> str:
    """The domain a complaint suppresses the complainant under: the sender's domain
    with ``[suppression] scope = "sender_domain"`` when the sender is known; else
    "" (every sender: a complaint about unknown mail is not narrowed)."""
    if scope != "sender_domain" or not sender:
        return ""
    return domain_of(normalize(sender))


class FeedbackHandler:
    def __init__(
        self,
        state: State,
        book: ReputationBook,
        delivery_log: DeliveryLog,
        find_message: FindMessage,
        clock: Clock,
        scope: str = "global",
    ) -> None:
        self.scope = scope  # [suppression] scope: of the complainant's entry
        self.state = state
        self.book = book
        self.delivery_log = delivery_log
        self.find_message = find_message
        self.clock = clock
        # (sender domain, content class or None when unmatched): the complaint budget.
        self.on_complaint: Callable[[str, str | None], None] | None = None

    async def handle(self, fb: Feedback) -> dict[str, Any]:
        """Record one complaint; what was matched and done, for the API's answer."""
        view = await self.find_message(fb.queue_id) if fb.queue_id else None
        member = pool = None
        if view is not None:
            for rcpt in view.recipients:
                if normalize(rcpt.address) == fb.recipient:
                    member, pool = rcpt.member or None, rcpt.pool
        domain = fb.recipient.rpartition("@")[2]
        provider = self.book.provider_of(domain)
        if member is not None:
            self.book.record(member, domain, Outcome.COMPLAINT)
        self.delivery_log.write(
            DeliveryRecord(
                event="complaint",
                queue_id=view.queue_id if view else fb.queue_id,
                message_id=view.message_id if view else fb.message_id,
                sender=view.sender if view else fb.sender,
                recipient=fb.recipient,
                recipient_domain=domain,
                provider=provider,
                pool=pool,
                member=member,
                klass=view.content_class if view else None,
                response=f"{fb.source} feedback-type {fb.feedback_type}",
            )
        )
        sender = view.sender if view else fb.sender
        if self.on_complaint is not None and sender and "@" in sender:
            domain = sender.rpartition("@")[2].strip("<> ").lower()
            self.on_complaint(domain, view.content_class if view else None)
        reason = f"complaint ({fb.source}, {fb.feedback_type})"
        scope = complaint_scope(self.scope, view.sender if view else fb.sender)
        await self.state.suppress(
            [Suppression(fb.recipient, reason, "complaint", self.clock.wall(), scope)]
        )
        return {
            "recipient": fb.recipient,
            "matched": view is not None,
            "queue_id": view.queue_id if view else fb.queue_id,
            "member": member,
            "provider": provider,
            "suppressed": True,
            "domain": scope,
        }

    def __repr__(self) -> str:
        return f"FeedbackHandler({self.state!r})"
