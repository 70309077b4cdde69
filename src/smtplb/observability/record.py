"""The delivery-log record: one schema for every writer and reader (SPEC §2.6).

A :class:`DeliveryRecord` is one event about one recipient (``received``,
``delivered``, ``deferred``, ``bounced``, ``expired``, ``failover``,
``suppressed``, ``complaint``) or about one member (``member_up``,
``member_down``, ``member_ejected``, ``member_paused``, ``member_resumed``,
``quarantined``, ``suspended``, ``warmup_advanced``, ``warmup_held``,
``warmup_stepped_back``) or about an experiment (``experiment_started``,
``experiment_stopped``, ``experiment_variant_stopped``: ``variant`` and the
reason in ``response``). Intake and delivery build it, the
:class:`~smtplb.observability.delivery_log.DeliveryLog` stamps ``ts`` and
encodes it, the listeners (metrics, live view, webhooks) read its attributes,
and ``logs analyze`` decodes log lines back into it.

On the wire a field that does not apply is left out rather than written as
``null`` (``omit_defaults``): a reader treats an absent field as null. Unknown
fields in a line are ignored, so logs written by older or newer versions
decode; a field of the wrong type makes the line unreadable
(:class:`msgspec.ValidationError`).
"""

from __future__ import annotations

import msgspec

RECIPIENT_EVENTS = (
    "received",
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "failover",
    "suppressed",
    "complaint",
)
MEMBER_EVENTS = (
    "member_up",
    "member_down",
    "member_ejected",
    "member_paused",
    "member_resumed",
    "quarantined",
    "throttled",
    "probation",
    "reputation_ok",
    "suspended",
    "warmup_advanced",  # warm-up step decisions, per member × provider (response: the rates)
    "warmup_held",
    "warmup_stepped_back",
)
EXPERIMENT_EVENTS = ("experiment_started", "experiment_stopped", "experiment_variant_stopped")
# A sender domain's complaint budget changed state: `sender_domain`, `state`, `rate`.
DOMAIN_EVENTS = ("complaint_budget",)
EVENTS = RECIPIENT_EVENTS + MEMBER_EVENTS + EXPERIMENT_EVENTS + DOMAIN_EVENTS


class DeliveryRecord(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """One line of the delivery log. Field order is the order written."""

    # gc=False: only str/int/float/None fields, so no reference cycles; the log
    # writer makes one of these per event and the collector need not track them.
    ts: float = 0.0  # Unix time in seconds; stamped by DeliveryLog.write
    event: str
    queue_id: str | None = None
    message_id: str | None = None
    sender: str | None = None
    recipient: str | None = None
    recipient_domain: str | None = None
    provider: str | None = None
    pool: str | None = None
    member: str | None = None
    source_ip: str | None = None
    upstream: str | None = None  # host:port the member reached
    code: int | None = None
    enhanced_code: str | None = None
    response: str | None = None  # the upstream reply text, or why (member events)
    latency_ms: float | None = None  # the upstream transaction
    delay_ms: float | None = None  # since the message was received
    attempt: int | None = None
    klass: str | None = msgspec.field(default=None, name="class")  # content class
    variant: str | None = None  # experiment variant
    client_ip: str | None = None  # received: who submitted it
    size: int | None = None  # received: message size in bytes
    rule: str | None = None  # suspended / quarantined: the rule that fired
    until: float | None = None  # suspended / quarantined: Unix time it ends
    sender_domain: str | None = None  # complaint_budget: the domain
    state: str | None = None  # complaint_budget: ok | throttled | stopped
    rate: float | None = None  # complaint_budget: complaints / delivered in the window


def member_record(event: str, pool: str, member: str, reason: str) -> DeliveryRecord:
    """A member state change (``member_down``, ``member_paused`` …) with its reason."""
    return DeliveryRecord(event=event, pool=pool, member=member, response=reason)


encode = msgspec.json.Encoder().encode  # a record or a list of them (a webhook batch)
decode = msgspec.json.Decoder(DeliveryRecord).decode
