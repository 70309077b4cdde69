"""``smtplb logs analyze``: deliverability from delivery logs (SPEC §2.6).

Theory of operation. :mod:`smtplb.observability.log_reader` turns each line,
smtplb's JSON Lines or Postfix's mail log, into a
:class:`~smtplb.observability.record.DeliveryRecord` (or a Postfix
:class:`~smtplb.observability.log_reader.QueueEvent` about a whole message),
so counting is one piece of code. :class:`Analyzer` is sans-IO: ``feed()``
lines, get a :class:`Report` from ``report()``; :func:`render_table` prints
it. The ``smtplb logs analyze`` command in :mod:`smtplb.cli` opens the files.

What is counted, per group and overall:

* *attempted* — distinct recipients (queue id, address) with a delivery
  outcome; *final* — delivered + bounced + expired events; *deliverability*
  is delivered / final.
* bounces are split by :func:`smtplb.smtp.status.classify_reply`: HARD is a hard
  bounce, anything else permanent (policy included) a soft one.
* *deferrals* count events; *ever deferred* counts recipients.
* a recipient's ``expired`` record inherits pool/member/… from its last
  deferral (the sweeper does not know them; Postfix logs expiry per message).

Memory stays bounded: recipients are kept as 64-bit hashes, reason counters
are pruned, and latency/delay samples become a seeded reservoir above
``sample_cap`` values per group (the report says so).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import msgspec

from smtplb.model import domain_of
from smtplb.observability.log_reader import QueueEvent, Verdict, parse_line
from smtplb.observability.record import DeliveryRecord
from smtplb.smtp.reply import Reply
from smtplb.smtp.status import BounceKind, classify_reply

DIMENSIONS = ("pool", "member", "provider", "class", "variant", "domain")
SAMPLE_CAP = 200_000
TOP_REASONS = 5
_REASONS_KEEP = 1_000  # pruning keeps this many when a counter passes 10×
_FINAL = frozenset({"delivered", "bounced", "expired"})
_ATTEMPTS = _FINAL | {"deferred"}
_INHERITED = ("pool", "member", "provider", "klass", "variant", "recipient_domain")


def _domain(record: DeliveryRecord) -> str | None:
    if record.recipient_domain:
        return record.recipient_domain
    return domain_of(record.recipient) if record.recipient else None


_DIMENSION: dict[str, Callable[[DeliveryRecord], str | None]] = {
    "pool": lambda r: r.pool,
    "member": lambda r: r.member,
    "provider": lambda r: r.provider,
    "class": lambda r: r.klass,
    "variant": lambda r: r.variant,
    "domain": _domain,
}


def _inherit(record: DeliveryRecord, earlier: DeliveryRecord) -> None:
    """Fill what ``record`` lacks from an earlier one about the same recipient."""
    for name in _INHERITED:
        if getattr(record, name) is None:
            setattr(record, name, getattr(earlier, name))


# -- reasons, percentiles ---------------------------------------------------------------

_NOISE = (
    (re.compile(r"<[^<>]*>"), "<*>"),
    (re.compile(r"[^\s<>()\[\],;]+@[^\s<>()\[\],;]+"), "*@*"),
    (re.compile(r"\[[0-9a-fA-F:.]+\]"), "[*]"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "*"),
    (re.compile(r"\b(?=[\w.-]*\d)[\w.-]{8,}\b"), "*"),  # ids, timestamps, tokens
    (re.compile(r"\s+"), " "),
)


def normalise_reason(code: int | None, enhanced_code: str | None, text: str) -> str:
    """A reply reduced to what is the same across recipients: ``450 4.2.1 mailbox busy``."""
    text = text.lower()
    for pattern, repl in _NOISE:
        text = pattern.sub(repl, text)
    parts = [str(code) if code else "", enhanced_code or "", text.strip()[:100]]
    return " ".join(p for p in parts if p) or "(no reply)"


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (exact, no interpolation)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(len(sorted_values) * p / 100))
    return sorted_values[rank - 1]


class _Reservoir:
    """All values up to ``cap``; then a uniform sample of them (algorithm R, seeded)."""

    __slots__ = ("_rng", "_seed", "cap", "seen", "values")

    def __init__(self, cap: int, seed: int) -> None:
        self.cap = cap
        self.seen = 0
        self.values: list[float] = []
        self._seed = seed
        self._rng: random.Random | None = None

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.cap:
            self.values.append(value)
            return
        if self._rng is None:
            self._rng = random.Random(self._seed)
        j = self._rng.randrange(self.seen)
        if j < self.cap:
            self.values[j] = value


# -- the report --------------------------------------------------------------------------


class Percentiles(msgspec.Struct, frozen=True):
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    sampled: bool  # True when computed from a reservoir sample


class Reason(msgspec.Struct, frozen=True):
    reason: str
    count: int


class GroupReport(msgspec.Struct, frozen=True):
    group: dict[str, str]
    received: int
    attempted: int
    final: int
    delivered: int
    hard_bounces: int
    soft_bounces: int
    expired: int
    deferrals: int
    ever_deferred: int
    complaints: int
    suppressed: int
    failovers: int
    deliverability: float | None  # delivered / final
    hard_bounce_rate: float | None  # / final
    soft_bounce_rate: float | None  # / final
    deferral_rate: float | None  # recipients ever deferred / attempted
    complaint_rate: float | None  # / delivered
    latency_ms: Percentiles
    delay_ms: Percentiles
    top_deferrals: list[Reason]
    top_bounces: list[Reason]


class Report(msgspec.Struct, frozen=True):
    by: list[str]
    lines: int
    records: int
    ignored: int
    skipped: int
    sources: dict[str, int]
    notes: list[str]
    overall: GroupReport
    groups: list[GroupReport]


def _rate(n: int, d: int) -> float | None:
    return round(n / d, 6) if d else None


class _Group:
    __slots__ = (
        "attempted",
        "bounce_reasons",
        "counts",
        "deferral_reasons",
        "deferred",
        "delay",
        "latency",
    )

    def __init__(self, cap: int, seed: int) -> None:
        self.counts: Counter[str] = Counter()
        self.attempted: set[int] = set()
        self.deferred: set[int] = set()
        self.latency = _Reservoir(cap, seed)
        self.delay = _Reservoir(cap, seed + 1)
        self.deferral_reasons: Counter[str] = Counter()
        self.bounce_reasons: Counter[str] = Counter()

    def add(
        self, record: DeliveryRecord, key: int, tally: str, reason: str | None, received: int
    ) -> None:
        event = record.event
        self.counts[tally] += received if tally == "received" else 1
        if event in _ATTEMPTS:
            self.attempted.add(key)
        if event == "deferred":
            self.deferred.add(key)
            _bump(self.deferral_reasons, reason)
        elif event == "bounced":
            _bump(self.bounce_reasons, reason)
        elif event == "delivered":
            if record.latency_ms is not None:
                self.latency.add(record.latency_ms)
            if record.delay_ms is not None:
                self.delay.add(record.delay_ms)

    def summary(self, group: dict[str, str]) -> GroupReport:
        c = self.counts
        final = c["delivered"] + c["hard"] + c["soft"] + c["expired"]
        return GroupReport(
            group=group,
            received=c["received"],
            attempted=len(self.attempted),
            final=final,
            delivered=c["delivered"],
            hard_bounces=c["hard"],
            soft_bounces=c["soft"],
            expired=c["expired"],
            deferrals=c["deferred"],
            ever_deferred=len(self.deferred),
            complaints=c["complaint"],
            suppressed=c["suppressed"],
            failovers=c["failover"],
            deliverability=_rate(c["delivered"], final),
            hard_bounce_rate=_rate(c["hard"], final),
            soft_bounce_rate=_rate(c["soft"], final),
            deferral_rate=_rate(len(self.deferred), len(self.attempted)),
            complaint_rate=_rate(c["complaint"], c["delivered"]),
            latency_ms=_percentiles(self.latency),
            delay_ms=_percentiles(self.delay),
            top_deferrals=_top(self.deferral_reasons),
            top_bounces=_top(self.bounce_reasons),
        )


def _top(counter: Counter[str]) -> list[Reason]:
    """The most frequent reasons; ties by text, so the order of the input does not matter."""
    ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return [Reason(reason, n) for reason, n in ranked[:TOP_REASONS]]


def _bump(counter: Counter[str], reason: str | None) -> None:
    if reason is None:
        return
    counter[reason] += 1
    if len(counter) > 10 * _REASONS_KEEP:
        kept = counter.most_common(_REASONS_KEEP)
        counter.clear()
        counter.update(dict(kept))


def _percentiles(res: _Reservoir) -> Percentiles:
    if not res.values:
        return Percentiles(0, None, None, None, False)
    v = sorted(res.values)
    return Percentiles(
        res.seen, percentile(v, 50), percentile(v, 95), percentile(v, 99), res.seen > res.cap
    )


class Analyzer:
    """Feed lines, get a :class:`Report`. Group by any of :data:`DIMENSIONS`."""

    def __init__(
        self,
        by: Sequence[str] = (),
        *,
        sample_cap: int = SAMPLE_CAP,
        seed: int = 0,
        provider_of: Callable[[DeliveryRecord], str | None] | None = None,
    ) -> None:
        # Fills `provider` where a line has none (Postfix's log: from the recipient
        # domain or the relay host's name; smtplb logs from before providers).
        self.provider_of = provider_of
        unknown = [d for d in by if d not in DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown --by {', '.join(unknown)}; use {', '.join(DIMENSIONS)}")
        self.by = tuple(by)
        self.sample_cap = sample_cap
        self.lines = self.records = self.ignored = self.skipped = 0
        self.sources: Counter[str] = Counter()
        self.notes: list[str] = []
        self._seed = seed
        self._overall = _Group(sample_cap, seed)
        self._groups: dict[tuple[str, ...], _Group] = {}
        self._dimensions = [_DIMENSION[d] for d in self.by]
        # Recipients whose last outcome was a deferral: queue id → address → record.
        self._pending: dict[str | None, dict[str | None, DeliveryRecord]] = {}
        self._received_queues: set[str] = set()  # Postfix messages seen arriving

    def feed(self, line: str) -> None:
        self.lines += 1
        source, parsed = parse_line(line)
        if source:
            self.sources[source] += 1
        if isinstance(parsed, DeliveryRecord):
            if parsed.provider is None and self.provider_of is not None and parsed.recipient:
                parsed.provider = self.provider_of(parsed)
            self._record(parsed)
        elif isinstance(parsed, QueueEvent):
            self._queue_event(parsed)
        elif parsed is Verdict.SKIPPED:
            self.skipped += 1
        else:
            self.ignored += 1

    def feed_lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.feed(line)

    def skip(self, note: str) -> None:
        """Count something unreadable outside the lines (a truncated file) and say so."""
        self.skipped += 1
        self.notes.append(note)

    def _record(self, record: DeliveryRecord) -> None:
        event = record.event
        if event == "deferred":
            self._pending.setdefault(record.queue_id, {})[record.recipient] = record
        elif event in _FINAL:
            queue = self._pending.get(record.queue_id)
            if queue is not None:
                last = queue.pop(record.recipient, None)
                if not queue:
                    del self._pending[record.queue_id]
                if last is not None and event == "expired":
                    _inherit(record, last)
        self._count(record)

    def _queue_event(self, q: QueueEvent) -> None:
        if q.kind == "removed":
            self._pending.pop(q.queue_id, None)
            self._received_queues.discard(q.queue_id)
        elif q.kind == "expire_queue":
            waiting = self._pending.pop(q.queue_id, {})
            if not waiting:  # its deferrals are not in these logs
                self._count(DeliveryRecord(event="expired", queue_id=q.queue_id, pool="postfix"))
            for d in waiting.values():
                replace = msgspec.structs.replace
                self._count(replace(d, event="expired", latency_ms=None, delay_ms=None))
        elif q.queue_id not in self._received_queues:  # qmgr logs from= again per retry
            self._received_queues.add(q.queue_id)
            received = DeliveryRecord(event="received", queue_id=q.queue_id, pool="postfix")
            self._count(received, q.nrcpt)

    def _count(self, record: DeliveryRecord, received: int = 1) -> None:
        """Count one record; ``received`` recipients for a Postfix message's arrival."""
        self.records += 1
        key = hash((record.queue_id, record.recipient))
        tally, reason = record.event, None
        if tally in ("deferred", "bounced"):
            enhanced_code, text = record.enhanced_code, record.response or ""
            reason = normalise_reason(record.code, enhanced_code, text)
            if tally == "bounced":
                code = record.code or (450 if (enhanced_code or "").startswith("4") else 550)
                kind = classify_reply(Reply(code, enhanced_code, text))
                tally = "hard" if kind is BounceKind.HARD else "soft"
        self._overall.add(record, key, tally, reason, received)
        if self._dimensions:
            group_key = tuple(get(record) or "-" for get in self._dimensions)
            group = self._groups.get(group_key)
            if group is None:
                group = self._groups[group_key] = _Group(self.sample_cap, self._seed)
            group.add(record, key, tally, reason, received)

    def report(self) -> Report:
        groups = [g.summary(dict(zip(self.by, k, strict=True))) for k, g in self._groups.items()]
        groups.sort(key=lambda g: (-g.attempted, -g.received, list(g.group.values())))
        overall = self._overall.summary({})
        notes = list(self.notes)
        if self.lines == 0:
            notes.append("no input lines: nothing to analyze")
        elif self.records == 0:
            notes.append("no delivery records found (neither smtplb JSON Lines nor Postfix)")
        if self.skipped:
            notes.append(
                f"{self.skipped:,} unreadable line(s) skipped (neither JSON records nor syslog)"
            )
        sampled = [g for g in [overall, *groups] if g.latency_ms.sampled or g.delay_ms.sampled]
        if sampled:
            notes.append(
                f"percentiles of {len(sampled)} group(s) come from a seeded random sample of "
                f"{self.sample_cap:,} values each"
            )
        counts = (self.lines, self.records, self.ignored, self.skipped)
        return Report(list(self.by), *counts, dict(self.sources), notes, overall, groups)


def analyze_lines(lines: Iterable[str], by: Sequence[str] = ()) -> Report:
    analyzer = Analyzer(by)
    analyzer.feed_lines(lines)
    return analyzer.report()


# -- rendering -----------------------------------------------------------------------------


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Aligned columns; ``align`` has an ``l`` or ``r`` per column."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [header, *rows]:
        cells = [
            c.ljust(w) if a == "l" else c.rjust(w)
            for c, w, a in zip(row, widths, align, strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    return out


def _group_row(g: GroupReport) -> list[str]:
    rates = (g.deliverability, g.hard_bounce_rate, g.soft_bounce_rate)
    times = (g.latency_ms.p50, g.latency_ms.p95, g.latency_ms.p99, g.delay_ms.p95)
    return [
        *g.group.values(),
        *(f"{n:,}" for n in (g.received, g.attempted, g.delivered)),
        *map(_pct, rates),
        f"{g.expired:,}",
        *map(_pct, (g.deferral_rate, g.complaint_rate)),
        *map(_num, times),
    ]


def render_table(report: Report) -> str:
    o = report.overall
    sources = ", ".join(f"{name} {n:,}" for name, n in sorted(report.sources.items()))
    lines = [
        f"{report.lines:,} lines ({sources or 'none recognised'}): {report.records:,} records, "
        f"{report.ignored:,} ignored, {report.skipped:,} skipped",
        "",
    ]
    overall: list[tuple[str, int, float | None, str]] = [
        ("received", o.received, None, ""),
        ("attempted", o.attempted, None, ""),
        ("final outcomes", o.final, None, ""),
        ("delivered", o.delivered, o.deliverability, "deliverability (of final)"),
        ("hard bounces", o.hard_bounces, o.hard_bounce_rate, "of final"),
        ("soft bounces", o.soft_bounces, o.soft_bounce_rate, "of final"),
        ("expired", o.expired, _rate(o.expired, o.final), "of final"),
        ("ever deferred", o.ever_deferred, o.deferral_rate, "of attempted"),
        ("deferral events", o.deferrals, None, ""),
        ("complaints", o.complaints, o.complaint_rate, "of delivered"),
        ("suppressed", o.suppressed, None, ""),
        ("failovers", o.failovers, None, ""),
    ]
    rows = [[label, f"{n:,}", _pct(rate) if of else "", of] for label, n, rate, of in overall]
    lines += _table(["overall", "recipients", "rate", ""], rows, "lrrl")
    lines.append("")
    rows = [
        [name, _num(p.p50), _num(p.p95), _num(p.p99), f"{p.count:,}"]
        for name, p in (("latency", o.latency_ms), ("delay", o.delay_ms))
    ]
    lines += _table(["ms", "p50", "p95", "p99", "samples"], rows, "lrrrr")
    for title, reasons in (("deferral", o.top_deferrals), ("bounce", o.top_bounces)):
        if reasons:
            lines += ["", f"top {title} reasons", *(f"{r.count:>8,}  {r.reason}" for r in reasons)]
    if report.groups:
        header = [*report.by, "received", "attempted", "delivered", "deliv%", "hard%", "soft%"]
        header += ["expired", "deferred%", "compl%", "lat p50", "lat p95", "lat p99", "delay p95"]
        rows = [_group_row(g) for g in report.groups]
        lines += ["", f"by {', '.join(report.by)}"]
        lines += _table(header, rows, "l" * len(report.by) + "r" * 13)
    lines += [""] * bool(report.notes) + [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
