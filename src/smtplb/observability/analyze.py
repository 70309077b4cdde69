"""``smtplb logs analyze``: deliverability from delivery logs (SPEC §2.6).

Theory of operation. Every input line is auto-detected: a JSON object is a
record of smtplb's delivery log; a syslog line from ``postfix/<agent>`` is
Postfix's mail log. Both become the same :class:`Event`, so counting is one
piece of code. :class:`Analyzer` is sans-IO: ``feed()`` lines, get a
:class:`Report` from ``report()``. The click command at the bottom is the only
part that opens files.

What is counted, per group and overall:

* *attempted* — distinct recipients (queue id, address) with a delivery
  outcome; *final* — delivered + bounced + expired events; *deliverability*
  is delivered / final.
* bounces are split by :func:`smtplb.delivery.outcome.classify_reply`: HARD is
  a hard bounce, anything else permanent (policy included) a soft one.
* *deferrals* count events; *ever deferred* counts recipients.
* a recipient's ``expired`` record inherits pool/member/… from its last
  deferral (the sweeper does not know them; Postfix logs expiry per message).

Memory stays bounded: recipients are kept as 64-bit hashes, reason counters
are pruned, and latency/delay samples become a seeded reservoir above
``sample_cap`` values per group (the report says so).
"""

from __future__ import annotations

import enum
import gzip
import io
import math
import random
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

import click
import msgspec

from smtplb.delivery.outcome import BounceKind, classify_reply
from smtplb.model import Reply, domain_of

DIMENSIONS = ("pool", "member", "provider", "class", "variant", "domain")
SAMPLE_CAP = 200_000
TOP_REASONS = 5
_REASONS_KEEP = 1_000  # pruning keeps this many when a counter passes 10×
_FINAL = frozenset({"delivered", "bounced", "expired"})
_ATTEMPTS = _FINAL | {"deferred"}
_COUNTED = _ATTEMPTS | {"received", "suppressed", "complaint", "failover"}


# -- normalised events -------------------------------------------------------------


class Event(msgspec.Struct):
    """One line's meaning, whatever format it came in; decodes a delivery-log record."""

    kind: str = msgspec.field(name="event")  # Postfix adds "expire_queue" and "removed"
    queue_id: str | None = None
    recipient: str | None = None
    pool: str | None = None
    member: str | None = None
    provider: str | None = None
    klass: str | None = msgspec.field(default=None, name="class")
    variant: str | None = None
    domain: str | None = msgspec.field(default=None, name="recipient_domain")
    code: int | None = None
    enhanced: str | None = msgspec.field(default=None, name="enhanced_code")
    response: str | None = None
    latency_ms: float | None = None
    delay_ms: float | None = None
    nrcpt: int = 1

    def dimension(self, name: str) -> str:
        if name == "domain":
            value = self.domain or (domain_of(self.recipient) if self.recipient else None)
        else:
            value = getattr(self, "klass" if name == "class" else name)
        return value or "-"

    def inherit(self, other: Event) -> None:
        """Fill what this record lacks from an earlier one about the same recipient."""
        for name in ("pool", "member", "provider", "klass", "variant", "domain"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(other, name))


class Verdict(enum.Enum):
    IGNORED = "ignored"  # understood, but not a recipient outcome (smtpd, member_down…)
    FOREIGN = "foreign"  # a syslog line from another program
    SKIPPED = "skipped"  # unreadable


_decode_record = msgspec.json.Decoder(Event).decode


def parse_json(line: str) -> Event | Verdict:
    try:
        event = _decode_record(line)
    except msgspec.DecodeError:
        return Verdict.SKIPPED
    return event if event.kind in _COUNTED else Verdict.IGNORED


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


def parse_syslog(line: str) -> Event | Verdict:
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
            return Event("removed", queue_id)
        if rest.startswith("from=<"):
            fields = dict(_FIELD.findall(rest.partition(" (")[0]))
            if fields.get("status") == "expired":  # "…, status=expired, returned to sender"
                return Event("expire_queue", queue_id)
            nrcpt = fields.get("nrcpt", "")
            if nrcpt.isdigit():
                return Event("received", queue_id, pool="postfix", nrcpt=int(nrcpt))
    return Verdict.IGNORED


def _postfix_recipient(queue_id: str, rest: str) -> Event | Verdict:
    head, _, tail = rest.partition(", status=")
    status, _, text = tail.partition(" ")
    kind = _POSTFIX_STATUS.get(status)
    if kind is None:
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
    dsn = fields.get("dsn") or None
    delays = fields.get("delays", "").split("/")
    return Event(
        kind,
        queue_id,
        recipient,
        pool="postfix",
        member=_relay_member(fields.get("relay", "none")),
        domain=domain_of(recipient),
        code=code,
        enhanced=dsn,
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


def parse_line(line: str) -> tuple[str, Event | Verdict]:
    """The line's format (smtplb, postfix, syslog or "") and what it says."""
    line = line.strip()
    if not line:
        return "", Verdict.SKIPPED
    if line[0] == "{":
        parsed = parse_json(line)
        return ("" if parsed is Verdict.SKIPPED else "smtplb"), parsed
    parsed = parse_syslog(line)
    if isinstance(parsed, Event) or parsed is Verdict.IGNORED:
        return "postfix", parsed
    return ("syslog" if parsed is Verdict.FOREIGN else ""), parsed


# -- reasons, percentiles ---------------------------------------------------------------

_NOISE = (
    (re.compile(r"<[^<>]*>"), "<*>"),
    (re.compile(r"[^\s<>()\[\],;]+@[^\s<>()\[\],;]+"), "*@*"),
    (re.compile(r"\[[0-9a-fA-F:.]+\]"), "[*]"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "*"),
    (re.compile(r"\b(?=[\w.-]*\d)[\w.-]{8,}\b"), "*"),  # ids, timestamps, tokens
    (re.compile(r"\s+"), " "),
)


def normalise_reason(code: int | None, enhanced: str | None, text: str) -> str:
    """A reply reduced to what is the same across recipients: ``450 4.2.1 mailbox busy``."""
    text = text.lower()
    for pattern, repl in _NOISE:
        text = pattern.sub(repl, text)
    parts = [str(code) if code else "", enhanced or "", text.strip()[:100]]
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

    def add(self, ev: Event, key: int, tally: str, reason: str | None) -> None:
        self.counts[tally] += ev.nrcpt if tally == "received" else 1
        if ev.kind in _ATTEMPTS:
            self.attempted.add(key)
        if ev.kind == "deferred":
            self.deferred.add(key)
            _bump(self.deferral_reasons, reason)
        elif ev.kind == "bounced":
            _bump(self.bounce_reasons, reason)
        elif ev.kind == "delivered":
            if ev.latency_ms is not None:
                self.latency.add(ev.latency_ms)
            if ev.delay_ms is not None:
                self.delay.add(ev.delay_ms)

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
        self, by: Sequence[str] = (), *, sample_cap: int = SAMPLE_CAP, seed: int = 0
    ) -> None:
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
        # Recipients whose last outcome was a deferral: queue id → address → event.
        self._pending: dict[str | None, dict[str | None, Event]] = {}
        self._received_queues: set[str | None] = set()  # Postfix: qmgr logs from= per retry

    def feed(self, line: str) -> None:
        self.lines += 1
        source, parsed = parse_line(line)
        if source:
            self.sources[source] += 1
        if isinstance(parsed, Event):
            for ev in self._resolve(parsed):
                self.records += 1
                self._count(ev)
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

    def _resolve(self, ev: Event) -> list[Event]:
        if ev.kind == "removed":
            self._pending.pop(ev.queue_id, None)
            self._received_queues.discard(ev.queue_id)
            return []
        if ev.kind == "expire_queue":
            waiting = self._pending.pop(ev.queue_id, {})
            if not waiting:  # its deferrals are not in these logs
                return [Event("expired", ev.queue_id, pool="postfix")]
            return [
                msgspec.structs.replace(d, kind="expired", latency_ms=None, delay_ms=None)
                for d in waiting.values()
            ]
        if ev.kind == "received" and ev.pool == "postfix":
            if ev.queue_id in self._received_queues:
                return []
            self._received_queues.add(ev.queue_id)
        elif ev.kind == "deferred":
            self._pending.setdefault(ev.queue_id, {})[ev.recipient] = ev
        elif ev.kind in _FINAL:
            queue = self._pending.get(ev.queue_id)
            if queue is not None:
                last = queue.pop(ev.recipient, None)
                if not queue:
                    del self._pending[ev.queue_id]
                if last is not None and ev.kind == "expired":
                    ev.inherit(last)
        return [ev]

    def _count(self, ev: Event) -> None:
        key = hash((ev.queue_id, ev.recipient))
        tally, reason = ev.kind, None
        if ev.kind in ("deferred", "bounced"):
            reason = normalise_reason(ev.code, ev.enhanced, ev.response or "")
        if ev.kind == "bounced":
            code = ev.code or (450 if (ev.enhanced or "").startswith("4") else 550)
            kind = classify_reply(Reply(code, ev.enhanced, ev.response or ""))
            tally = "hard" if kind is BounceKind.HARD else "soft"
        self._overall.add(ev, key, tally, reason)
        if self.by:
            group_key = tuple(ev.dimension(d) for d in self.by)
            group = self._groups.get(group_key)
            if group is None:
                group = self._groups[group_key] = _Group(self.sample_cap, self._seed)
            group.add(ev, key, tally, reason)

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


# -- files and the command -----------------------------------------------------------------

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


logs = click.Group("logs", help="Read delivery logs (smtplb's JSON Lines or Postfix's mail log).")


@logs.command("analyze")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--by",
    default="",
    metavar="DIMS",
    help=f"Group by a comma list of: {', '.join(DIMENSIONS)}.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def analyze(files: tuple[Path, ...], by: str, as_json: bool) -> None:
    """Deliverability, bounces, deferrals, complaints and latency from log FILES.

    Reads smtplb's delivery log and Postfix's mail log, auto-detected per line,
    rotated and gzip-compressed files included; - is standard input. Rotated
    siblings (log.2.gz, log.1, log) are read oldest first, whatever the order
    given. Rates: deliverability = delivered / final outcomes (delivered,
    bounced, expired); complaints per delivered; deferred% = recipients ever
    deferred / attempted. Latency is the upstream transaction, delay the time
    since receipt (Postfix: the last part of delays=, and delay=).
    """
    dims = [d.strip() for d in by.split(",") if d.strip()]
    try:
        analyzer = Analyzer(dims)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--by") from None
    missing = [p for p in files if str(p) != "-" and not p.is_file()]
    if missing:
        for p in missing:
            what = "is not a file" if p.exists() else "no such file"
            click.echo(f"smtplb logs analyze: {p}: {what}", err=True)
        sys.exit(1)
    for path in chronological(list(files)):
        before = analyzer.lines
        try:
            if str(path) == "-":
                analyzer.feed_lines(read_lines(sys.stdin.buffer))
                continue
            with path.open("rb") as stream:
                analyzer.feed_lines(read_lines(stream))
        except PermissionError as exc:
            click.echo(f"smtplb logs analyze: {path}: {exc.strerror}", err=True)
            sys.exit(1)
        except (OSError, EOFError) as exc:  # truncated or corrupt gzip: keep what was read
            analyzer.skip(f"{path}: unreadable after line {analyzer.lines - before:,}: {exc}")
    report = analyzer.report()
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
    else:
        click.echo(render_table(report))
