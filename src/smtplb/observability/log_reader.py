"""Reading delivery logs: smtplb's JSON Lines and Postfix's mail log, line by line.

Every line is auto-detected: a JSON object is a record of smtplb's delivery
log, decoded into the one schema, :class:`~smtplb.observability.record.DeliveryRecord`
(records of older versions decode too: unknown fields are ignored); a syslog
line from ``postfix/<agent>`` is Postfix's mail log. A Postfix recipient line
(``to=<…>, status=sent|deferred|bounced``) becomes the same ``DeliveryRecord``
smtplb would have written; the queue manager's lines about a whole message
(``nrcpt=``, ``status=expired``, ``removed``) become a :class:`QueueEvent`.
Sans-IO except :func:`read_lines`, which only iterates a stream it is given.
"""

from __future__ import annotations

import enum
import gzip
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Literal

import msgspec

from smtplb.model import domain_of
from smtplb.observability.record import DeliveryRecord
from smtplb.observability.record import decode as decode_record

COUNTED = frozenset(
    {"received", "delivered", "deferred", "bounced", "expired"}
    | {"suppressed", "complaint", "failover"}
)


class QueueEvent(msgspec.Struct, frozen=True, gc=False):
    """A Postfix queue manager line about a whole message, not one recipient."""

    kind: Literal["received", "expire_queue", "removed"]
    queue_id: str
    nrcpt: int = 0  # received: recipients in the message


class Verdict(enum.Enum):
    IGNORED = "ignored"  # understood, but not a recipient outcome (smtpd, member_down…)
    FOREIGN = "foreign"  # a syslog line from another program
    SKIPPED = "skipped"  # unreadable


Parsed = DeliveryRecord | QueueEvent | Verdict


def parse_json(line: str) -> DeliveryRecord | Verdict:
    try:
        record = decode_record(line)
    except msgspec.DecodeError:  # not JSON, or a field of the wrong type
        return Verdict.SKIPPED
    return record if record.event in COUNTED else Verdict.IGNORED


_SYSLOG = re.compile(
    r"(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?"  # RFC 3339
    r"|[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)?)"  # Mon DD HH:MM:SS
    r" \S+ (?P<prog>[^\s\[:]+)(?:\[\d+\])?: (?P<msg>.*)"
)
# Short queue ids are hex; long ones avoid vowels, so "warning:" is no queue id.
_QUEUE_ID = re.compile(r"([0-9A-F]{6,}|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,}): (.*)")
_FIELD = re.compile(r"(?:^|, )([a-z_]+)=(<[^>]*>|[^,]*)")
_RELAY = re.compile(r"([^\[\s]*)\[([^\]]*)\](?::(\d+))?")
_POSTFIX_STATUS = {"sent": "delivered", "deferred": "deferred", "bounced": "bounced"}
_POSTFIX_REPLY = re.compile(r"(?:host \S+ said: )?(\d{3})(?:[ -](\d\.\d{1,3}\.\d{1,3}))?[ -]?(.*)")
_IN_REPLY_TO = re.compile(r"\s*\(in reply to [^)]*\)$")


def parse_syslog(line: str) -> DeliveryRecord | QueueEvent | Verdict:
    m = _SYSLOG.match(line)
    if m is None:
        return Verdict.SKIPPED
    prog, msg = m.group("prog", "msg")
    q = _QUEUE_ID.match(msg)
    if "/" not in prog:
        return Verdict.FOREIGN
    if q is None:
        return Verdict.IGNORED  # connect/disconnect, NOQUEUE rejects, warnings
    agent = prog.rsplit("/", 1)[1]
    queue_id, rest = q.groups()
    if rest.startswith("to=<"):
        return _postfix_recipient(queue_id, rest)
    if agent in ("qmgr", "nqmgr"):
        if rest == "removed":
            return QueueEvent("removed", queue_id)
        if rest.startswith("from=<"):
            fields = dict(_FIELD.findall(rest.partition(" (")[0]))
            if fields.get("status") == "expired":  # "…, status=expired, returned to sender"
                return QueueEvent("expire_queue", queue_id)
            nrcpt = fields.get("nrcpt", "")
            if nrcpt.isdigit():
                return QueueEvent("received", queue_id, int(nrcpt))
    return Verdict.IGNORED


def _postfix_recipient(queue_id: str, rest: str) -> DeliveryRecord | Verdict:
    head, _, tail = rest.partition(", status=")
    status, _, text = tail.partition(" ")
    event = _POSTFIX_STATUS.get(status)
    if event is None:
        return Verdict.IGNORED  # address-verification probes, SOFTBOUNCE…
    fields = dict(_FIELD.findall(head))
    recipient = fields.get("to", "<>")[1:-1]
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    text = _IN_REPLY_TO.sub("", text)
    code: int | None = None
    reply = _POSTFIX_REPLY.fullmatch(text)
    if reply is not None:
        code, text = int(reply.group(1)), reply.group(3)
    delays = fields.get("delays", "").split("/")
    return DeliveryRecord(
        event=event,
        queue_id=queue_id,
        recipient=recipient,
        recipient_domain=domain_of(recipient),
        pool="postfix",
        member=_relay_member(fields.get("relay", "none")),
        code=code,
        enhanced_code=fields.get("dsn") or None,
        response=text,
        latency_ms=_ms(delays[3]) if len(delays) == 4 else None,
        delay_ms=_ms(fields.get("delay", "")),
    )


def _relay_member(relay: str) -> str | None:
    """``mx.example.com[192.0.2.1]:25`` → ``mx.example.com:25``; ``none`` → None."""
    if relay == "none":
        return None
    m = _RELAY.fullmatch(relay)
    if m is None:
        return relay  # local, private/dovecot-lmtp…
    host, addr, port = m.groups()
    return f"{host or addr}:{port}" if port else host or addr


def _ms(seconds: str) -> float | None:
    try:
        return round(float(seconds) * 1000, 1)
    except ValueError:
        return None


def parse_line(line: str) -> tuple[str, Parsed]:
    """The line's format (smtplb, postfix, syslog or "") and what it says."""
    line = line.strip()
    if not line:
        return "", Verdict.SKIPPED
    if line[0] == "{":
        parsed = parse_json(line)
        return ("" if parsed is Verdict.SKIPPED else "smtplb"), parsed
    found = parse_syslog(line)
    if not isinstance(found, Verdict) or found is Verdict.IGNORED:
        return "postfix", found
    return ("syslog" if found is Verdict.FOREIGN else ""), found


# -- files -----------------------------------------------------------------------------------

_ROTATED = re.compile(r"(.*?)[.-](\d{1,3}|\d{8}(?:-\d{6})?)(?:\.gz)?")


def chronological(paths: Sequence[Path]) -> list[Path]:
    """Rotated siblings oldest first: ``log.2.gz, log.1, log``; ``log-20240301, log``."""

    def key(path: Path) -> tuple[str, int, int]:
        m = _ROTATED.fullmatch(path.name)
        if m is None:
            return (str(path.parent / path.name.removesuffix(".gz")), 1, 0)
        base, suffix = m.groups()
        index = int(suffix.replace("-", ""))
        return (str(path.parent / base), 0, -index if len(suffix) <= 3 else index)

    return sorted(paths, key=key)


def read_lines(stream: IO[bytes]) -> Iterator[str]:
    """Decoded lines of a plain or gzip-compressed stream (sniffed, not by name)."""
    head = stream.peek(2)[:2] if isinstance(stream, io.BufferedReader) else b""
    source: Iterable[bytes] = gzip.GzipFile(fileobj=stream) if head == b"\x1f\x8b" else stream
    for raw in source:
        yield raw.decode("utf-8", "replace")
