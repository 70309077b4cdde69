"""From an accepted message to a stored one: route, store (fsync), hand to delivery.

Both doors use it: the SMTP listener calls :meth:`IntakePipeline.handle_message`
(it answers with a reply), the HTTP API and the DSN writer call
:meth:`IntakePipeline.submit` (it returns the queue id or raises ``SpoolError``).
It also gives each client address its session policy (relay networks, limits).

Delivery is reached through :class:`Handoff`, the three calls the dispatcher
offers to intake, so this module does not import the delivery layer.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from typing import Protocol

from smtplb.config import Config
from smtplb.intake.compliance import (
    GUARDED_CLASSES,
    MessageRefused,
    from_domain,
    refusal,
    unsubscribe_problem,
)
from smtplb.intake.headers import prepare_message
from smtplb.intake.session import SessionPolicy
from smtplb.mailauth.dmarc_watch import DmarcWatch
from smtplb.mailauth.sign import DkimSigner, KeyRing
from smtplb.model import Envelope, domain_of
from smtplb.observability.delivery_log import DeliveryLog
from smtplb.observability.metrics import Metrics
from smtplb.observability.record import DeliveryRecord
from smtplb.observability.trace import TraceBook
from smtplb.reputation.feedback import FeedbackError, FeedbackHandler, parse_arf
from smtplb.reputation.state import State, normalize
from smtplb.routing.routes import RoutingInput, classify_content, decide_route
from smtplb.smtp.framing import BodyBudget, plain_lines
from smtplb.smtp.reply import Reply
from smtplb.spool.base import (
    ClaimedMessage,
    NewMessage,
    NewRecipient,
    Spool,
    SpoolError,
)

log = logging.getLogger("smtplb")

_QUEUE_ID_PROCESS = f"{secrets.randbits(20):05X}"  # tells this process's ids apart
_QUEUE_ID_COUNTER = itertools.count()
_SUPPRESSED = Reply(550, "5.7.1", "Recipient address is on the suppression list")


def new_queue_id() -> str:
    """20 hex digits: milliseconds (sortable by arrival), a per-process random part,
    and a counter — unique without a system call per message."""
    n = next(_QUEUE_ID_COUNTER) & 0xFFFF
    return f"{int(time.time() * 1000):011X}{_QUEUE_ID_PROCESS}{n:04X}"


class Handoff(Protocol):
    """What intake needs from delivery (the dispatcher implements it)."""

    def has_room(self) -> bool: ...

    def submit(self, message: ClaimedMessage) -> None: ...

    def note_overflow(self) -> None: ...


class IntakePipeline:
    """Accepts messages for this node; ``is_draining`` says when to refuse (421)."""

    def __init__(
        self,
        config: Config,
        *,
        spool: Spool,
        handoff: Handoff,
        delivery_log: DeliveryLog,
        metrics: Metrics,
        traces: TraceBook,
        is_draining: Callable[[], bool],
        provider_of: Callable[[str, str], str | None] | None = None,
        signer: DkimSigner | None = None,
        dmarc_watch: DmarcWatch | None = None,
        state: State | None = None,
    ) -> None:
        # (recipient domain, pool) -> its provider as far as it is known at intake (by
        # the domain, or its MX hosts already looked up), for the `received` record.
        self.provider_of = provider_of
        self.spool = spool
        self.signer = signer or DkimSigner(KeyRing())
        self.dmarc_watch = dmarc_watch
        self.handoff = handoff
        self.delivery_log = delivery_log
        self.metrics = metrics
        self.traces = traces
        self.is_draining = is_draining
        self.state = state
        # Consumes ARF mail sent to [reputation] feedback_addresses (set by app.py).
        self.feedback: FeedbackHandler | None = None
        self._policies: dict[str, SessionPolicy] = {}
        # Message bodies held in memory at once by every session of this process.
        self.body_budget = BodyBudget(0)
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """A reload: routes, limits and relay_networks apply to new connections."""
        self.config = config
        self._relay_networks = [
            ipaddress.ip_network(n, strict=False) for n in config.smtp.relay_networks
        ]
        self._policies.clear()
        self.body_budget.limit = config.smtp.pending_bytes_share(config.workers)

    # -- the SMTP door ---------------------------------------------------------------

    def policy_for(self, client_ip: str) -> SessionPolicy:
        """The session policy for a client address (cached: asked at every connection)."""
        policy = self._policies.get(client_ip)
        if policy is None:
            if len(self._policies) > 10_000:
                self._policies.clear()
            policy = self._policies[client_ip] = self._make_policy(client_ip)
        return policy

    def _make_policy(self, client_ip: str) -> SessionPolicy:
        smtp = self.config.smtp
        try:
            addr = ipaddress.ip_address(client_ip)
            relay_ok = any(addr in net for net in self._relay_networks)
        except ValueError:
            relay_ok = False
        return SessionPolicy(
            hostname=self.config.hostname,
            max_message_size=smtp.max_message_size,
            max_recipients=smtp.max_recipients,
            max_line_length=smtp.max_line_length,
            max_errors=smtp.max_errors,
            starttls_available=smtp.tls_cert is not None,
            auth_enabled=bool(smtp.users),
            auth_without_tls=smtp.auth_without_tls,
            require_auth=smtp.require_auth,
            relay_allowed=relay_ok and not smtp.require_auth,
            body_budget=self.body_budget,
            check_recipient=self._refuse_suppressed
            if self.state is not None and self.config.suppression.on_intake == "reject"
            else None,
        )

    def _refuse_suppressed(self, address: str, sender: str) -> Reply | None:
        assert self.state is not None
        if self.state.is_suppressed(address, domain_of(sender)):
            return _SUPPRESSED
        return None

    async def _consume_feedback(self, rcpt_to: list[str], data: bytes, queue_id: str) -> list[str]:
        """A report to a feedback address is consumed here; the other recipients remain."""
        addresses = self.config.reputation.feedback_addresses
        if self.feedback is None or not addresses:
            return rcpt_to
        wanted = {normalize(a) for a in addresses}
        kept = [r for r in rcpt_to if normalize(r) not in wanted]
        if len(kept) < len(rcpt_to):
            try:
                await self.feedback.handle(parse_arf(data))
            except FeedbackError as exc:
                log.warning("feedback mail %s not used: %s", queue_id, exc)
        return kept

    def _drop_suppressed(self, envelope: Envelope, queue_id: str) -> list[str]:
        """The recipients to keep; each suppressed one is logged as ``suppressed``.
        Recipients already checked at RCPT (``on_intake = "reject"``) are not looked
        up twice: one lookup per recipient."""
        if self.state is None or envelope.recipients_checked:
            return envelope.rcpt_to
        kept = []
        sender_domain = domain_of(envelope.mail_from)
        for rcpt in envelope.rcpt_to:
            if not self.state.is_suppressed(rcpt, sender_domain):
                kept.append(rcpt)
                continue
            self.delivery_log.write(
                DeliveryRecord(
                    event="suppressed",
                    queue_id=queue_id,
                    sender=envelope.mail_from,
                    recipient=rcpt,
                    recipient_domain=domain_of(rcpt),
                    client_ip=envelope.client_ip,
                    code=_SUPPRESSED.code,
                    enhanced_code=_SUPPRESSED.enhanced_code,
                    response=_SUPPRESSED.text,
                )
            )
        return kept

    def refuse(self) -> Reply | None:
        """The greeting's refusal, while draining."""
        if self.is_draining():
            return Reply(421, "4.3.2", f"{self.config.hostname} is draining, try another server")
        return None

    async def handle_message(self, envelope: Envelope, data: bytes) -> Reply:
        if self.is_draining():
            self.metrics.count_intake("smtp", "4xx")
            return Reply(421, "4.3.2", "service draining, try again later")
        try:
            queue_id = await self.submit(envelope, data)
        except MessageRefused as exc:
            self.metrics.count_intake("smtp", "5xx")
            return exc.reply
        except SpoolError as exc:
            log.error("spool write failed: %s", exc)
            self.metrics.count_intake("smtp", "4xx")
            return Reply(451, "4.3.0", "temporary local problem, try again later")
        self.metrics.count_intake("smtp", "2xx")
        return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")

    # -- the HTTP door -----------------------------------------------------------------

    async def inject(self, envelope: Envelope, content: bytes) -> str:
        """:meth:`submit`, counted as an HTTP injection. Raises SpoolError or
        MessageRefused."""
        try:
            queue_id = await self.submit(envelope, content)
        except MessageRefused:
            self.metrics.count_intake("http", "4xx")
            raise
        except SpoolError:
            self.metrics.count_intake("http", "5xx")
            raise
        self.metrics.count_intake("http", "2xx")
        return queue_id

    # -- both --------------------------------------------------------------------------

    async def submit(self, envelope: Envelope, data: bytes, *, is_dsn: bool = False) -> str:
        """Route, check, sign (DKIM), store durably (fsync) and hand to delivery.
        Raises SpoolError, or MessageRefused when a compliance check refuses it."""
        now = time.time()
        queue_id = new_queue_id()
        rcpt_to = self._drop_suppressed(envelope, queue_id)
        rcpt_to = await self._consume_feedback(rcpt_to, data, queue_id)
        if not rcpt_to:
            return queue_id  # accepted and dropped: suppressed, or a consumed report
        content, headers, message_id, plain = prepare_message(
            data, envelope, self.config.hostname, queue_id, now
        )
        content_class = classify_content(headers, len(rcpt_to))
        default_pool = self.config.pools[0].name
        recipients = []
        routed = []  # traced once stored: a refused message leaves no trace rows
        for rcpt in rcpt_to:
            decision = decide_route(
                self.config.routes,
                default_pool,
                RoutingInput(
                    envelope.mail_from,
                    rcpt,
                    headers,
                    content_class,
                    envelope.auth_user,
                    envelope.client_ip,
                ),
            )
            content_class = decision.content_class
            recipients.append(NewRecipient(rcpt, decision.pool, decision.priority))
            routed.append(
                (
                    rcpt,
                    decision.route_index,
                    decision.pool,
                    decision.priority,
                    decision.content_class,
                )
            )
        if not is_dsn:
            self._check_compliance(queue_id, envelope, headers, content_class)
        # Signed once, here, on the bytes that will be sent: nothing after this point
        # changes the content (the delivery client only dot-stuffs on the wire).
        signed = await self.signer.sign(content, from_domain(headers))
        if signed is not content:  # the DKIM-Signature fields on top: are they plain too?
            plain = plain and plain_lines(signed[: len(signed) - len(content)])
            content = signed
        message = NewMessage(
            queue_id=queue_id,
            sender=envelope.mail_from,
            recipients=tuple(recipients),
            content=content,
            message_id=message_id,
            received_at=now,
            expires_at=now + self.config.delivery.max_lifetime,
            client_ip=envelope.client_ip,
            auth_user=envelope.auth_user,
            content_class=content_class,
            is_dsn=is_dsn,
            plain_lines=plain,
        )
        inflight = self.handoff.has_room()
        stored = await self.spool.store(message, inflight=inflight)
        for step in routed:
            self.traces.add(queue_id, "routed", *step)
        for r in recipients:
            self.delivery_log.write(
                DeliveryRecord(
                    event="received",
                    queue_id=queue_id,
                    message_id=message_id,
                    sender=envelope.mail_from,
                    recipient=r.address,
                    recipient_domain=domain_of(r.address),
                    provider=self.provider_of(domain_of(r.address), r.pool)
                    if self.provider_of
                    else None,
                    pool=r.pool,
                    klass=content_class,
                    client_ip=envelope.client_ip,
                    size=len(content),
                )
            )
        if not inflight:
            self.handoff.note_overflow()
        else:
            self.handoff.submit(stored)
        return queue_id

    async def close(self) -> None:
        """At stop, after the listeners: no signing or DMARC lookup is left running."""
        if self.dmarc_watch is not None:
            await self.dmarc_watch.close()
        self.signer.close()

    def _check_compliance(
        self,
        queue_id: str,
        envelope: Envelope,
        headers: list[tuple[str, str]],
        content_class: str,
    ) -> None:
        mode = self.config.compliance.list_unsubscribe
        if mode == "off" or content_class not in GUARDED_CLASSES:
            return
        domain = from_domain(headers)
        if self.dmarc_watch is not None and domain:
            self.dmarc_watch.note(domain)  # a lookup in the background, once a day
        problem = unsubscribe_problem(headers, content_class)
        if problem is None:
            return
        self.metrics.compliance.labels("list_unsubscribe", mode).inc()
        if mode == "reject":
            log.info("compliance: refused %s from <%s>: %s", queue_id, envelope.mail_from, problem)
            raise MessageRefused(refusal(problem))
        log.warning("compliance: %s from <%s>: %s", queue_id, envelope.mail_from, problem)

    def __repr__(self) -> str:
        state = "draining" if self.is_draining() else "accepting"
        return f"IntakePipeline({state}, {len(self._policies)} cached policies)"
