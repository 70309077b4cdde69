"""What the dispatcher writes down about a delivery, built without I/O: delivery-log
records of recipients, jobs and reputation changes, the DSN line of a failed recipient,
and an experiment's observation of a finished recipient."""

from __future__ import annotations

from smtplb.clock import Clock
from smtplb.delivery.dsn import FailedRecipient, diagnostic
from smtplb.delivery.member import Member
from smtplb.delivery.pools import Job
from smtplb.experiments import Observation
from smtplb.model import RecipientState
from smtplb.observability.record import DeliveryRecord
from smtplb.reputation.book import MEMBER_WIDE, Change
from smtplb.reputation.standing import Reputation
from smtplb.smtp.reply import Reply
from smtplb.smtp.status import BounceKind, classify_reply
from smtplb.spool.base import ClaimedRecipient


def rcpt_record(
    job: Job,
    rcpt: ClaimedRecipient,
    event: str,
    reply: Reply,
    member: Member | None,
    upstream: str,
    latency: float,
    attempt: int,
    clock: Clock,
) -> DeliveryRecord:
    """One recipient's outcome (or step) on ``member``, with the reply that decided it."""
    msg = job.message
    return DeliveryRecord(
        event=event,
        queue_id=msg.queue_id,
        message_id=msg.message_id,
        sender=msg.sender,
        recipient=rcpt.address,
        recipient_domain=job.domain,
        provider=job.provider or None,
        pool=job.pool,
        member=member.name if member else None,
        source_ip=member.source_ip if member else None,
        upstream=upstream or None,
        code=reply.code,
        enhanced_code=reply.enhanced_code,
        response=reply.text,
        latency_ms=round(latency * 1000, 1) if member else None,
        delay_ms=round((clock.wall() - msg.received_at) * 1000, 1),
        attempt=attempt,
        klass=msg.content_class,
        variant=job.variant,
    )


def job_records(job: Job, event: str, member: Member, response: str) -> list[DeliveryRecord]:
    """The same event for every recipient of a job (a failover, a connection failure)."""
    return [
        DeliveryRecord(
            event=event,
            queue_id=job.message.queue_id,
            message_id=job.message.message_id,
            sender=job.message.sender,
            recipient=rcpt.address,
            recipient_domain=job.domain,
            provider=job.provider or None,
            pool=job.pool,
            member=member.name,
            source_ip=member.source_ip,
            response=response,
            attempt=rcpt.attempts + 1,
            klass=job.message.content_class,
            variant=job.variant,
        )
        for rcpt in job.recipients
    ]


def reputation_record(change: Change, event: str, pool: str | None) -> DeliveryRecord:
    """A member (× provider) changed reputation state."""
    new = change.new
    return DeliveryRecord(
        event=event,
        pool=pool,
        member=change.member,
        provider=None if change.provider == MEMBER_WIDE else change.provider,
        response=new.reason,
        rule=new.reason,
        until=new.until if new.state is Reputation.QUARANTINED else None,
    )


def failed_recipient(
    address: str, reply: Reply, upstream: str, *, expired: bool = False
) -> FailedRecipient:
    status = reply.enhanced_code or ("4.4.7" if expired else f"{reply.code // 100}.0.0")
    if expired and status.startswith("4"):
        status = "4.4.7"
    return FailedRecipient(
        address,
        "failed",
        status,
        diagnostic(reply.code, reply.enhanced_code, reply.text),
        upstream.rpartition(":")[0],
    )


def observation(
    job: Job,
    rcpt: ClaimedRecipient,
    state: RecipientState,
    reply: Reply,
    now: float,
    latency: float | None,
) -> Observation:
    """A finished recipient of an experiment's message, for its counters."""
    experiment, variant = job.experiment or ("", "")
    if state is RecipientState.DELIVERED:
        outcome = "delivered"
    elif state is RecipientState.BOUNCED:
        policy = classify_reply(reply) is BounceKind.POLICY  # 5.7.x: the sender was blocked
        outcome = "policy_block" if policy else "bounced"
    else:
        outcome = "expired"
    return Observation(
        experiment,
        variant,
        job.domain,  # the provider, once routing recognises providers
        outcome,
        deferred_ever=rcpt.attempts > 0,
        time_to_deliver=now - job.message.received_at if outcome == "delivered" else None,
        latency=latency,
        at=now,
    )
