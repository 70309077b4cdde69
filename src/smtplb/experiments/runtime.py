"""The experiments of a running node: assignment on the hot path, results
buffered and written a batch at a time, the guardrail after every batch, and
start/stop shared with the other workers through the store.

The hot path (``variant_for``, ``observe``) does no I/O. ``flush`` writes
the buffered observations from a thread, then reads the counts back (the sum
of every worker's rows) for the guardrail, and picks up stops and starts made
elsewhere (another worker's guardrail, ``smtplb experiment stop``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from smtplb.clock import Clock, SystemClock
from smtplb.config import PoolConfig
from smtplb.config_sections import ExperimentConfig
from smtplb.experiments.assignment import Assignment, VariantShare
from smtplb.experiments.counters import STORE_ERRORS, CounterStore, Event, Observation
from smtplb.experiments.guardrail import Guardrail
from smtplb.observability.delivery_log import DeliveryLog
from smtplb.observability.record import DeliveryRecord

log = logging.getLogger("smtplb.experiments")

MAX_PENDING = 100_000  # results held in memory while the store cannot be written

EventHandler = Callable[[Event, str], None]  # (event, pool)


def log_events(delivery_log: DeliveryLog) -> EventHandler:
    """Experiment events as delivery-log records (``experiment_variant_stopped``,
    ``experiment_started``, ``experiment_stopped``): so also metrics and webhooks."""

    def write(event: Event, pool: str) -> None:
        delivery_log.write(
            DeliveryRecord(
                event=f"experiment_{event.event}",
                pool=pool,
                variant=event.variant,
                response=f"experiment {event.experiment}: {event.detail}",
            )
        )

    return write


@dataclass(slots=True)
class RunningExperiment:
    config: ExperimentConfig
    assignment: Assignment
    guardrail: Guardrail
    running: bool = True
    stopped: dict[str, tuple[float, str]] = field(default_factory=dict)
    # counts at the last (re)start: the guardrail judges what came after it
    baseline: dict[tuple[str, str], int] = field(default_factory=dict)

    def restart_guardrail(self, counts: dict[tuple[str, str], int]) -> None:
        names = [v.name for v in self.config.variants]
        self.guardrail = Guardrail(names[0], names, self.config.guardrail_bounce_margin)
        self.baseline = dict(counts)

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        stopped = sorted(self.stopped)
        return f"RunningExperiment({self.name!r} on {self.config.pool}, {state}, {stopped=})"


def variant_pool(pool: PoolConfig, experiment: ExperimentConfig, variant: str) -> PoolConfig:
    """The pool as ``variant`` sees it: its strategy and member subset."""
    v = next(v for v in experiment.variants if v.name == variant)
    members = pool.members
    if v.members is not None:
        wanted = set(v.members)
        members = [m for m in pool.members if m.name in wanted]
    return PoolConfig(
        name=pool.name,
        strategy=v.strategy or pool.strategy,
        hash_key=pool.hash_key,
        hash_balance_factor=pool.hash_balance_factor,
        latency_decay=pool.latency_decay,
        members=members,
    )


class Experiments:
    def __init__(
        self,
        configs: Sequence[ExperimentConfig],
        store: CounterStore,
        *,
        clock: Clock | None = None,
        on_event: EventHandler | None = None,
    ) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.on_event = on_event
        self.by_name: dict[str, RunningExperiment] = {}
        self.by_pool: dict[str, RunningExperiment] = {}
        self._pending: list[Observation] = []
        self._flush_task: asyncio.Task[None] | None = None
        self.dropped = 0  # results lost while the store could not be written
        self.configure(configs)

    def configure(self, configs: Sequence[ExperimentConfig]) -> None:
        """(Re)build from the config; state (running, stops) comes from the store."""
        self.by_name.clear()
        self.by_pool.clear()
        for c in configs:
            variants = [VariantShare(v.name, v.share) for v in c.variants]
            names = [v.name for v in c.variants]
            exp = RunningExperiment(
                c,
                Assignment(c.name, variants),
                Guardrail(names[0], names, c.guardrail_bounce_margin),
            )
            try:
                exp.running = self.store.running(c.name)
                exp.stopped = self.store.stopped_variants(c.name)
            except STORE_ERRORS as exc:  # e.g. a full disk: refresh() reads it again
                log.error("experiment %s: cannot read its state (%s); running", c.name, exc)
            self.by_name[c.name] = exp
            self.by_pool[c.pool] = exp

    # -- hot path ----------------------------------------------------------------

    def variant_for(self, pool: str, recipient: str, queue_id: str) -> tuple[str, str] | None:
        """(experiment, variant) of a recipient of ``pool``; None outside experiments."""
        exp = self.by_pool.get(pool)
        if exp is None or not exp.running:
            return None
        key = recipient.lower() if exp.config.split == "recipient" else queue_id
        return exp.name, exp.assignment.assign(key, exp.stopped)

    def observe(self, observation: Observation) -> None:
        self._pending.append(observation)
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0.05)  # gather a batch: one transaction for many results
        await self.flush()

    # -- batches -----------------------------------------------------------------

    async def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self.store.add, batch)
            except STORE_ERRORS as exc:  # kept (bounded) and retried by refresh()
                self._pending[:0] = batch
                excess = len(self._pending) - MAX_PENDING
                if excess > 0:
                    del self._pending[:excess]
                    self.dropped += excess
                log.error(
                    "cannot record %d experiment results yet (%s); %d dropped so far",
                    len(self._pending),
                    exc,
                    self.dropped,
                )
                return
            for name in {o.experiment for o in batch}:
                try:
                    await self._check_guardrail(name)
                except STORE_ERRORS as exc:
                    log.error("experiment %s: guardrail not checked: %s", name, exc)

    async def _check_guardrail(self, name: str) -> None:
        exp = self.by_name.get(name)
        if exp is None:
            return
        counts = await asyncio.to_thread(self.store.counts, name)
        exp.stopped = await asyncio.to_thread(self.store.stopped_variants, name)
        since = {k: n - exp.baseline.get(k, 0) for k, n in counts.items()}
        for variant, reason in exp.guardrail.check(since, list(exp.stopped)):
            now = self.clock.wall()
            if await asyncio.to_thread(self.store.stop_variant, name, variant, now, reason):
                log.warning("experiment %s: variant %s stopped: %s", name, variant, reason)
                exp.stopped[variant] = (now, reason)
                self._emit(Event(name, variant, "variant_stopped", reason, now), exp)

    async def refresh(self) -> None:
        """Pick up starts and stops made by other workers or the CLI; retry results
        that could not be written."""
        for exp in self.by_name.values():
            try:
                running = await asyncio.to_thread(self.store.running, exp.name)
                stopped = await asyncio.to_thread(self.store.stopped_variants, exp.name)
                if (running and not exp.running) or set(exp.stopped) - set(stopped):
                    # restarted elsewhere: judge from here on, as the restarting worker does
                    exp.restart_guardrail(await asyncio.to_thread(self.store.counts, exp.name))
            except STORE_ERRORS as exc:
                log.error("experiment %s: cannot read its state: %s", exp.name, exc)
                continue
            exp.running, exp.stopped = running, stopped
        if self._pending and (self._flush_task is None or self._flush_task.done()):
            await self.flush()

    def _emit(self, event: Event, exp: RunningExperiment) -> None:
        if self.on_event is not None:
            self.on_event(event, exp.config.pool)

    # -- operations ----------------------------------------------------------------

    async def set_running(self, name: str, running: bool) -> dict[str, Any]:
        exp = self.by_name[name]
        now = self.clock.wall()
        detail = "by operator"
        await asyncio.to_thread(self.store.set_running, name, running, now, detail)
        exp.running = running
        if running:
            exp.stopped = {}
            exp.restart_guardrail(await asyncio.to_thread(self.store.counts, name))
        self._emit(Event(name, None, "started" if running else "stopped", detail, now), exp)
        return await self.report(name)

    async def report(self, name: str) -> dict[str, Any]:
        # numpy and scipy load on the first report, not at every worker's start
        from smtplb.experiments.report import VariantInfo, build_report

        exp = self.by_name[name]
        await self.flush()
        rows = await asyncio.to_thread(self.store.rows, name)
        events = await asyncio.to_thread(self.store.events, name)
        stopped = await asyncio.to_thread(self.store.stopped_variants, name)
        running = await asyncio.to_thread(self.store.running, name)
        c = exp.config
        return await asyncio.to_thread(
            lambda: build_report(
                name=c.name,
                pool=c.pool,
                split=c.split,
                running=running,
                variants=[
                    VariantInfo(
                        v.name,
                        v.share,
                        v.strategy,
                        tuple(v.members) if v.members is not None else None,
                    )
                    for v in c.variants
                ],
                rows=rows,
                stopped=stopped,
                events=events,
                guardrail_bounce_margin=c.guardrail_bounce_margin,
            )
        )

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "name": e.name,
                "pool": e.config.pool,
                "split": e.config.split,
                "state": "running" if e.running else "stopped",
                "variants": [
                    {"name": v.name, "share": v.share, "stopped": v.name in e.stopped}
                    for v in e.config.variants
                ],
            }
            for e in self.by_name.values()
        ]

    def __repr__(self) -> str:
        return f"Experiments({list(self.by_name.values())})"
