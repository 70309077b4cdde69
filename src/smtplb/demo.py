"""`smtplb demo`: smtplb with three sandbox upstreams and a traffic generator.

The upstreams are smart sinks: ``steady`` accepts everything, ``flaky``
defers some mail the way Gmail rate-limits (421 4.7.28) and knows no
``nobody@`` users, ``slow`` takes 250 ms per message. The pool balances by
latency. ``flaky`` also plays Gmail throttling it: for ``gmail.test`` it
answers 421 4.7.28 more often, a response rule suspends ``flaky`` for Gmail
for 20 s at a time, and Gmail's mail goes through the other two meanwhile.
Early on ``slow`` starts refusing mail with ``550 5.7.1`` (its IP is
on a blocklist): those recipients go at once to the other members, and after
20 attempts ``slow`` is quarantined; the block is lifted, and after the
cool-down it comes back on probation. A third of the way in ``steady`` dies;
at two thirds it comes back. Hard bounces (``nobody@``) put the address on
the suppression list, so later mail to it is refused at RCPT. ``fresh`` is a
new IP in warm-up (a day-1 cap of 20 messages per provider): once it reaches
its cap the excess overflows to the other members. At the end
every message sent is accounted for: delivered, bounced, or still queued for
retry.

``--experiment`` runs an A/B experiment instead (SPEC §2.7): one pool over a
fast and a slow (+300 ms) upstream, half of the recipients balanced by round
robin (control), half latency-aware; at the end, the experiment's report.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from smtplb.app import build_service
from smtplb.config import parse_config
from smtplb.delivery.connection import ConnectError, ConnectionSettings, SmtpClientConnection
from smtplb.observability.record import DeliveryRecord
from smtplb.service import Service
from smtplb.sink.profile import DomainRule, SinkProfile, parse_reply
from smtplb.sink.server import SinkServer

DOMAINS = ("gmail.test", "yahoo.test", "outlook.test", "example.org", "shop.test")


@dataclass(slots=True)
class Traffic:
    sent: int = 0  # recipients accepted by smtplb
    refused: int = 0  # recipients smtplb refused at intake (e.g. while it drained)
    # (queue_id, recipient) -> last event, for the application's mail (not DSNs)
    fate: dict[tuple[str, str], str] = field(default_factory=dict)
    suspensions: int = 0  # response rules that fired

    def on_record(self, record: DeliveryRecord) -> None:
        if record.event == "suspended":
            self.suspensions += 1
            left = (record.until or 0) - time.time()
            click.echo(
                f"  {record.member or 'all members'} suspended for {record.provider} "
                f"for {left:.0f}s by rule {record.rule}: {record.response}"[:160]
            )
            return
        if record.event in ("quarantined", "probation", "reputation_ok", "throttled"):
            click.echo(f"        member {record.member!r} {record.event}: {record.response}")
        if record.sender != "app@shop.test" or not record.queue_id or not record.recipient:
            return
        event = record.event
        if event in ("received", "delivered", "deferred", "bounced", "expired"):
            self.fate[(record.queue_id, record.recipient)] = event


_BLOCKED = DomainRule(
    accept=0,
    reject=1,
    latency=0.25,
    reject_reply=parse_reply(
        "550 5.7.1 Service unavailable; client host blocked using zen.example"
    ),
)


def _profiles() -> dict[str, SinkProfile]:
    flaky = DomainRule(
        accept=0.85, defer=0.15, defer_reply=parse_reply("421 4.7.28 Rate limited, try later")
    )
    gmail_throttles = DomainRule(
        accept=0.7,
        defer=0.3,
        defer_reply=parse_reply(
            "421 4.7.28 Our system has detected an unusual rate of unsolicited mail "
            "originating from your IP address. To protect our users from spam, mail sent "
            "from your IP address has been temporarily rate limited."
        ),
    )
    return {
        "steady": SinkProfile(seed=1),
        "flaky": SinkProfile(
            rules={"*": flaky, "gmail.test": gmail_throttles},
            unknown_users=frozenset(f"nobody@{d}" for d in DOMAINS),
            seed=2,
        ),
        "slow": SinkProfile(rules={"*": DomainRule(latency=0.25)}, seed=3),
        "fresh": SinkProfile(seed=4),  # behind a member in warm-up
    }


async def _generate(
    port: int, rate: float, stop_at: float, traffic: Traffic, rng: random.Random
) -> None:
    """Send ``rate`` messages a second over a few reused connections until ``stop_at``."""
    settings = ConnectionSettings(ehlo_name="demo-app.test", tls="none")

    async def one_client(share: float) -> None:
        conn: SmtpClientConnection | None = None
        interval = 1.0 / share
        next_send = time.monotonic()
        while time.monotonic() < stop_at:
            user = "nobody" if rng.random() < 0.02 else f"user{rng.randrange(10_000)}"
            rcpt = f"{user}@{rng.choice(DOMAINS)}"
            n = traffic.sent + traffic.refused
            data = (
                f"From: Demo App <app@shop.test>\r\nTo: <{rcpt}>\r\n"
                f"Subject: demo message {n}\r\n\r\nHello from the smtplb demo.\r\n"
            ).encode()
            try:
                if conn is None or not conn.is_usable:
                    conn = await SmtpClientConnection.open("127.0.0.1", port, settings)
                result = await conn.send("app@shop.test", [rcpt], data)
                ok = result.data is not None and result.data.is_positive
                if ok:
                    traffic.sent += 1
                else:
                    traffic.refused += 1
            except ConnectError:
                traffic.refused += 1
                conn = None
            next_send += interval
            await asyncio.sleep(max(0.0, next_send - time.monotonic()))
        if conn is not None:
            await conn.quit()

    clients = 4
    await asyncio.gather(*(one_client(rate / clients) for _ in range(clients)))


async def run_demo(duration: float, rate: float, http_port: int, smtp_port: int) -> int:
    http_port = http_port or _free_port()
    smtp_port = smtp_port or _free_port()
    work = Path(tempfile.mkdtemp(prefix="smtplb-demo-"))
    profiles = _profiles()
    sinks = {name: SinkServer("127.0.0.1", _free_port(), p) for name, p in profiles.items()}
    for sink in sinks.values():
        await sink.start()
    config = parse_config(
        {
            "data_dir": str(work / "var"),
            "workers": 1,  # the demo runs one service in this process
            "hostname": "demo.smtplb.test",
            "smtp": {"listen": [f"127.0.0.1:{smtp_port}"]},
            "http": {"listen": f"127.0.0.1:{http_port}"},
            "health": {"interval": "1s", "timeout": "1s", "rise": 2, "fall": 2, "slow_start": "5s"},
            "delivery": {"retry_base": "2s", "retry_max": "5s", "max_lifetime": "1h"},
            # Gmail by its test domain, with a short suspension so the demo shows
            # both the back-off and the return.
            "providers": [
                {
                    "name": "gmail",
                    "domains": ["gmail.test"],
                    "mx_suffixes": ["google.com"],
                    "rules": [
                        {
                            "name": "gmail-4.7.28-demo",
                            "match": r"^421 4\.7\.28",
                            "action": "suspend",
                            "duration": "20s",
                        }
                    ],
                }
            ],
            "reputation": {
                "min_volume": 20,
                "quarantine": f"{max(3, int(duration / 5))}s",
                "probation": 20,
            },
            "warmup": {"schedule": [20, 40, 80], "max_hourly_share": 1.0},
            "pools": [
                {
                    "name": "demo",
                    "strategy": "latency",
                    "members": [
                        {
                            "name": name,
                            "relay": f"127.0.0.1:{sink.port}",
                            "max_connections": 5,
                            "warmup": name == "fresh",
                        }
                        for name, sink in sinks.items()
                    ],
                }
            ],
        }
    )
    service = build_service(config)
    await service.start()
    url = f"http://127.0.0.1:{service.http_port}/"
    click.echo(f"smtplb demo: dashboard at {url}  (SMTP on 127.0.0.1:{smtp_port})")
    click.echo(
        f"  upstreams: steady, flaky (15% 421 4.7.28; 30% for gmail.test, which suspends "
        f"it for Gmail), slow (+250 ms), fresh (a new IP in warm-up, 20 a day per provider);"
        f" {rate:g} msg/s"
    )
    traffic = Traffic()
    service.delivery_log.listeners.append(traffic.on_record)
    rng = random.Random(7)
    start = time.monotonic()
    generator = asyncio.create_task(_generate(smtp_port, rate, start + duration, traffic, rng))
    try:
        await _script(duration, start, sinks, service, traffic)
        await generator
        click.echo("traffic stopped; letting retries finish…")
        await _settle(service, timeout=15)
        return await _summary(service, traffic)
    finally:
        generator.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await generator
        await service.stop()
        for sink in sinks.values():
            with contextlib.suppress(Exception):
                await sink.stop()


async def run_experiment_demo(duration: float, rate: float, http_port: int, smtp_port: int) -> int:
    from smtplb.experiments.render import render_text

    work = Path(tempfile.mkdtemp(prefix="smtplb-experiment-demo-"))
    profiles = {
        "fast": SinkProfile(seed=1),
        "slow": SinkProfile(rules={"*": DomainRule(latency=0.3)}),
    }
    sinks = {name: SinkServer("127.0.0.1", _free_port(), p) for name, p in profiles.items()}
    for sink in sinks.values():
        await sink.start()
    smtp_port = smtp_port or _free_port()
    variants = [
        {"name": "round-robin", "share": 50, "strategy": "round_robin"},
        {"name": "latency", "share": 50, "strategy": "latency"},
    ]
    config = parse_config(
        {
            "data_dir": str(work / "var"),
            "workers": 1,  # the demo runs one service in this process
            "hostname": "demo.smtplb.test",
            "smtp": {"listen": [f"127.0.0.1:{smtp_port}"]},
            "http": {"listen": f"127.0.0.1:{http_port or _free_port()}"},
            "health": {"slow_start": "0s"},
            "pools": [
                {
                    "name": "demo",
                    "members": [
                        {"name": name, "relay": f"127.0.0.1:{sink.port}", "max_connections": 50}
                        for name, sink in sinks.items()
                    ],
                }
            ],
            "experiments": [{"name": "latency-vs-rr", "pool": "demo", "variants": variants}],
        }
    )
    service = build_service(config)
    await service.start()
    click.echo(
        f"smtplb experiment demo: dashboard at http://127.0.0.1:{service.http_port}/ ; "
        f"{rate:g} msg/s for {duration:g}s, split by recipient between round robin and "
        "latency-aware balancing over 'fast' and 'slow' (+300 ms)"
    )
    traffic = Traffic()
    service.delivery_log.listeners.append(traffic.on_record)
    stop_at = time.monotonic() + duration
    try:
        await _generate(smtp_port, rate, stop_at, traffic, random.Random(11))
        await _settle(service, timeout=15)
        report = await service.experiments.report("latency-vs-rr")
        click.echo("")
        click.echo(render_text(report))
        return 0
    finally:
        await service.stop()
        for sink in sinks.values():
            with contextlib.suppress(Exception):
                await sink.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _script(
    duration: float,
    start: float,
    sinks: dict[str, SinkServer],
    service: Service,
    traffic: Traffic,
) -> None:
    steady = sinks["steady"]
    slow = sinks["slow"]
    events = [
        (duration / 10, "block"),
        (duration / 4, "unblock"),
        (duration / 3, "kill"),
        (2 * duration / 3, "revive"),
    ]
    next_report = start + 5
    while time.monotonic() - start < duration:
        elapsed = time.monotonic() - start
        if events and elapsed >= events[0][0]:
            _, what = events.pop(0)
            if what == "block":
                slow.profile = SinkProfile(rules={"*": _BLOCKED}, seed=3)
                click.echo(f"[{elapsed:5.1f}s] upstream 'slow' blocks us (550 5.7.1): watch it")
            elif what == "unblock":
                slow.profile = _profiles()["slow"]
                click.echo(f"[{elapsed:5.1f}s] upstream 'slow' lifts the block")
            elif what == "kill":
                await steady.stop()
                click.echo(f"[{elapsed:5.1f}s] upstream 'steady' killed: watch failover")
            else:  # a new server on the same port, as a restarted MTA would be
                steady = SinkServer("127.0.0.1", steady.port, steady.profile)
                sinks["steady"] = steady
                await steady.start()
                click.echo(f"[{elapsed:5.1f}s] upstream 'steady' revived: watch it ramp up")
        if time.monotonic() >= next_report:
            next_report += 5
            states = ", ".join(
                f"{m.name}={m.state}/{service.book.view(m.name)['state']}"
                for m in service.members()
            )
            click.echo(f"[{elapsed:5.1f}s] sent {traffic.sent}; members: {states}")
        await asyncio.sleep(0.2)


async def _settle(service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = await service.spool.stats()
        if stats["queued"] + stats["in_flight"] + stats["deferred"] == 0:
            return
        await asyncio.sleep(0.5)


async def _summary(service: Service, traffic: Traffic) -> int:
    fates = list(traffic.fate.values())
    delivered, bounced = fates.count("delivered"), fates.count("bounced")
    expired = fates.count("expired")
    pending = [key for key, fate in traffic.fate.items() if fate in ("received", "deferred")]
    still_queued = 0
    for queue_id, rcpt in pending:  # check the spool really holds each one
        view = await service.spool.get(queue_id)
        if view and any(r.address == rcpt and not r.state.is_final for r in view.recipients):
            still_queued += 1
    click.echo("")
    click.echo("summary")
    click.echo(f"  sent (accepted by smtplb)  {traffic.sent}")
    click.echo(f"  refused at intake          {traffic.refused}")
    click.echo(f"  delivered                  {delivered}")
    click.echo(f"  bounced                    {bounced}  (a DSN went back to the sender for each)")
    click.echo(f"  expired                    {expired}")
    click.echo(f"  still queued for retry     {still_queued}")
    click.echo(f"  suspensions by rules       {traffic.suspensions}  (smtplb providers shows them)")
    click.echo("  per member:")
    for m in service.members():
        c = m.counters
        click.echo(
            f"    {m.name:<8} {m.state:<9} delivered {c.delivered:>5}  deferred {c.deferred:>4}"
            f"  bounced {c.bounced:>3}  connection failures {c.failures:>3}"
            f"  reputation {service.book.view(m.name)['state']}"
        )
    for m in service.members():
        for provider, w in service.warmup.gate.views(m.name).items():
            click.echo(
                f"    {m.name:<8} warm-up {provider}: day {w['day']}, {w['sent']} of {w['cap']}"
                " today; the rest overflowed to warmed members"
            )
    total = delivered + bounced + expired + still_queued
    ok = total == traffic.sent == len(traffic.fate)
    click.echo(
        f"  accounted for: {total} of {traffic.sent} sent" + ("  ✓" if ok else "  ✗ MISMATCH")
    )
    return 0 if ok else 1
