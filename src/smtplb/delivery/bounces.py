"""Writing DSNs: each bounce notice from the dispatcher becomes a message from
``<>`` to the original sender, queued like any other (:mod:`smtplb.delivery.dsn`
builds it; the intake pipeline routes and stores it)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Protocol

from smtplb.delivery.dsn import build_dsn
from smtplb.delivery.expiry import BounceNotice
from smtplb.model import Envelope
from smtplb.spool.base import SpoolError

log = logging.getLogger("smtplb")


class Submit(Protocol):
    def __call__(
        self, envelope: Envelope, data: bytes, *, is_dsn: bool = ...
    ) -> Awaitable[str]: ...


class DsnWriter:
    """The dispatcher's ``on_bounce``: queue a DSN for ``notice``."""

    def __init__(self, reporting_mta: str, submit: Submit) -> None:
        self.reporting_mta = reporting_mta
        self.submit = submit

    async def __call__(self, notice: BounceNotice) -> None:
        content = build_dsn(
            reporting_mta=self.reporting_mta,
            original_sender=notice.sender,
            original_queue_id=notice.queue_id,
            original_content=notice.content,
            arrival_date=notice.received_at,
            recipients=notice.recipients,
            now=time.time(),
            expired=notice.expired,
        )
        envelope = Envelope(
            mail_from="", rcpt_to=[notice.sender], helo="localhost", client_ip="127.0.0.1"
        )
        try:
            await self.submit(envelope, content, is_dsn=True)
        except SpoolError:
            log.exception("could not queue the DSN for %s", notice.queue_id)

    def __repr__(self) -> str:
        return f"DsnWriter(as {self.reporting_mta})"
