"""Recipients past the maximum queue lifetime: expired in the spool, logged, and a DSN
to the sender (never for a DSN), whatever state they were waiting in."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from smtplb.clock import Clock
from smtplb.delivery.dsn import FailedRecipient, diagnostic
from smtplb.model import domain_of
from smtplb.observability.delivery_log import DeliveryLog
from smtplb.observability.record import DeliveryRecord
from smtplb.spool.base import ExpiredRecipient, Spool


@dataclass(frozen=True, slots=True)
class BounceNotice:
    """Recipients of one message that failed for good, for a DSN."""

    queue_id: str
    sender: str
    content: bytes
    received_at: float
    recipients: list[FailedRecipient]
    expired: bool


BounceHandler = Callable[[BounceNotice], Coroutine[Any, Any, None]]


class ExpirySweeper:
    """Expires what is due and hands each message's expired recipients to the bounce
    handler the dispatcher has at the time (it is set after construction)."""

    def __init__(
        self,
        spool: Spool,
        log: DeliveryLog,
        clock: Clock,
        provider_of: Callable[[str], str],
        bounce_handler: Callable[[], BounceHandler | None],
    ) -> None:
        self.spool = spool
        self.log = log
        self.clock = clock
        self.provider_of = provider_of
        self.bounce_handler = bounce_handler

    async def sweep(self) -> int:
        expired = await self.spool.expire_due(self.clock.wall())
        on_bounce = self.bounce_handler()
        by_message: dict[int, list[ExpiredRecipient]] = {}
        for rcpt in expired:
            by_message.setdefault(rcpt.msg_pk, []).append(rcpt)
            self.log.write(
                DeliveryRecord(
                    event="expired",
                    queue_id=rcpt.queue_id,
                    message_id=rcpt.message_id,
                    sender=rcpt.sender,
                    recipient=rcpt.address,
                    recipient_domain=domain_of(rcpt.address),
                    provider=self.provider_of(domain_of(rcpt.address)),
                    code=rcpt.last_code,
                    enhanced_code=rcpt.last_enhanced_code,
                    response=rcpt.last_response or "maximum queue lifetime exceeded",
                )
            )
        for rcpts in by_message.values():
            first = rcpts[0]
            if not first.sender or on_bounce is None:
                continue
            content = await self.spool.get_content(first.queue_id) or b""
            view = await self.spool.get(first.queue_id)
            if view is None or view.is_dsn:
                continue
            failed = [
                FailedRecipient(
                    r.address,
                    "failed",
                    "4.4.7",
                    diagnostic(r.last_code, r.last_enhanced_code, r.last_response)
                    if r.last_code
                    else "x-smtplb; maximum queue lifetime exceeded",
                )
                for r in rcpts
            ]
            await on_bounce(
                BounceNotice(first.queue_id, first.sender, content, view.received_at, failed, True)
            )
        return len(expired)
