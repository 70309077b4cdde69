"""The dispatcher: from claimed spool work to deliveries on members, and back.

Theory of operation. Work enters as :class:`ClaimedMessage` (straight from
intake while there is room in memory, else claimed from the spool by the
feeder). Each message is split into :class:`Job` s, one per (pool, recipient
domain), and queued on its pool's priority lane. The pump hands lane heads to
members, highest lane first: the pool's eligibility filters say which members
may take the job and why the others may not, the pool's strategy picks among
them (:meth:`PoolRuntime.choose`). A job whose members are all excluded (paused,
down, ejected, failed this attempt…) is deferred to the spool; one whose
members are merely busy waits in its lane.

A delivery that fails for a connection-level reason goes straight back to the
front of its lane, with the failed member excluded, without counting an
attempt (immediate failover). Replies decide each recipient: 2xx delivered,
4xx deferred with backoff (expired past the queue lifetime), 5xx bounced.
Bounced and expired recipients get a DSN through ``on_bounce``. Each finished
attempt goes back to its member in one call (:meth:`PoolRuntime.record`).
Time comes from the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence

from smtplb.clock import Clock, SystemClock
from smtplb.delivery.connection import ConnectError
from smtplb.delivery.dsn import FailedRecipient
from smtplb.delivery.expiry import BounceHandler, BounceNotice, ExpirySweeper
from smtplb.delivery.member import AttemptResult, Member
from smtplb.delivery.mx import MxResolver, ResolveError
from smtplb.delivery.outcome import RetrySchedule, next_state, transaction_outcomes
from smtplb.delivery.pools import LANES, Job, PoolRuntime, no_member_reply
from smtplb.delivery.provider_desk import ProviderDesk
from smtplb.delivery.records import (
    failed_recipient,
    job_records,
    observation,
    rcpt_record,
    reputation_record,
)
from smtplb.experiments import Experiments
from smtplb.model import RecipientState, domain_of
from smtplb.observability.delivery_log import DeliveryLog
from smtplb.observability.record import member_record
from smtplb.observability.trace import TraceBook
from smtplb.reputation.book import Change, ReputationBook
from smtplb.reputation.rules import RuleBook
from smtplb.reputation.shaping import Shaping, waits_for_provider
from smtplb.reputation.standing import Outcome, Reputation
from smtplb.routing.providers import OTHER, ProviderTable
from smtplb.smtp.bounce import Classification, classify_bounce
from smtplb.smtp.reply import Reply
from smtplb.spool.base import (
    ClaimedMessage,
    ClaimedRecipient,
    RecipientResult,
    Spool,
    SpoolError,
)

log = logging.getLogger("smtplb.delivery")
SCAN_LIMIT = 256  # jobs looked at per lane and pump, past those waiting for their provider
_NOTHING_SENT = AttemptResult()  # an attempt that ends before sending (frozen: shared)


class Dispatcher:
    def __init__(
        self,
        *,
        spool: Spool,
        pools: dict[str, PoolRuntime],
        resolver: MxResolver,
        delivery_log: DeliveryLog,
        schedule: RetrySchedule,
        max_in_flight: int = 2000,
        sweep_interval: float = 30.0,
        max_ejection_percent: int = 50,
        on_bounce: BounceHandler | None = None,
        traces: TraceBook | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        experiments: Experiments | None = None,
        shaping: Shaping | None = None,
    ) -> None:
        self.experiments = experiments
        self.clock = clock if clock is not None else SystemClock()
        self.traces = traces if traces is not None else TraceBook()
        if shaping is None:
            shaping = Shaping(ProviderTable.build(), RuleBook(), self.clock)
        self.desk = ProviderDesk(shaping, resolver, delivery_log, self.traces, self.clock)
        self.expiry = ExpirySweeper(
            spool,
            delivery_log,
            self.clock,
            lambda domain: self.desk.table.by_domain(domain) or OTHER,
            lambda: self.on_bounce,
        )
        self._wake_handle: asyncio.TimerHandle | None = None
        self._recognising: set[asyncio.Task[None]] = set()  # jobs waiting for an MX lookup
        self._wake_at = 0.0
        self.max_ejection_percent = max_ejection_percent
        self.spool = spool
        self.pools = pools
        self.resolver = resolver
        self.log = delivery_log
        self.schedule = schedule
        self.max_in_flight = max_in_flight
        self.sweep_interval = sweep_interval
        self.on_bounce = on_bounce
        # A recipient's address is bad (a hard bounce): suppress it (set by app.py).
        self.on_hard_bounce: Callable[[str, str], None] | None = None
        # Outcomes per member × provider, thresholds, quarantine (set by app.py).
        self.reputation: ReputationBook | None = None
        # The replies of each attempt, by member (the warm-up loop's rates; set by app.py).
        self.on_outcome: Callable[[Member, Job, Sequence[Reply]], None] | None = None
        # A job that must wait before any member is asked (the complaint budget): the
        # deferral reply and the earliest retry (wall time); None: it may go (app.py).
        self.hold: Callable[[Job], tuple[Reply, float] | None] | None = None
        self.held = 0  # recipients in memory: in lanes or being delivered
        # True while the spool may hold due work that is not in memory (intake
        # overflowed to disk, or the last claim came back full): then freed room
        # wakes the feeder at once rather than at its next periodic look.
        self.backlog = True
        self.active = 0  # deliveries in progress
        self._pending_results: list[RecipientResult] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._pump_scheduled = False
        self._feed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = rng if rng is not None else random.Random()

    # -- intake side ---------------------------------------------------------------

    def has_room(self) -> bool:
        return self.held < self.max_in_flight

    def submit(self, message: ClaimedMessage) -> None:
        """Queue a claimed message's recipients (all INFLIGHT in the spool) for delivery."""
        groups: dict[tuple[str, int, str, tuple[str, str] | None], list[ClaimedRecipient]] = {}
        experiments = self.experiments if not message.is_dsn else None  # DSNs stay out
        for rcpt in message.recipients:
            experiment = (
                experiments.variant_for(rcpt.pool, rcpt.address, message.queue_id)
                if experiments is not None
                else None
            )
            key = (
                rcpt.pool,
                min(max(rcpt.priority, 0), LANES - 1),
                domain_of(rcpt.address),
                experiment,
            )
            groups.setdefault(key, []).append(rcpt)
        for (pool_name, priority, domain, experiment), rcpts in groups.items():
            self.held += len(rcpts)
            job = Job(message, rcpts, pool_name, priority, domain, experiment=experiment)
            pool = self.pools.get(pool_name)
            known = self.desk.recognise_now(job, pool)
            if pool is None:  # the pool was removed by a reload: defer, never drop
                self._defer(job, Reply(451, "4.3.5", f"no pool named {pool_name!r}"))
                continue
            if known:
                pool.lanes[priority].append(job)
            else:
                task = asyncio.get_running_loop().create_task(self._recognise(job))
                self._recognising.add(task)
                task.add_done_callback(self._recognising.discard)
        self._schedule_pump()

    def provider_hint(self, domain: str, pool: str) -> str | None:
        """The recipient's provider as far as it is known now (for intake's record)."""
        return self.desk.provider_hint(domain, self.pools.get(pool))

    async def _recognise(self, job: Job) -> None:
        """The job's provider from its domain's MX hosts, then into its lane."""
        try:
            await self.desk.recognise(job)
        finally:
            pool = self.pools.get(job.pool)
            if pool is None:
                self._defer(job, Reply(451, "4.3.5", f"no pool named {job.pool!r}"))
            else:
                pool.lanes[job.priority].append(job)
                self._schedule_pump()

    # -- the pump ------------------------------------------------------------------

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        now = self.clock.monotonic()
        for pool in self.pools.values():
            self._pump_pool(pool, now)
        wake = self.desk.shaping.take_wake()
        if wake is not None and (self._wake_handle is None or wake < self._wake_at):
            # A member over its rate gets a token then: look at the lanes again.
            if self._wake_handle is not None:
                self._wake_handle.cancel()
            self._wake_at = wake
            self._wake_handle = asyncio.get_running_loop().call_later(
                max(0.0, wake - now), self._woken
            )

    def _woken(self) -> None:
        self._wake_handle = None
        self._schedule_pump()

    def _pump_pool(self, pool: PoolRuntime, now: float) -> None:
        # Providers whose every eligible member is at its limit for them: their jobs
        # wait in place, and jobs for other providers behind them go on (no head-of-
        # line blocking across providers). Busy members make everything wait.
        blocked: set[str] = set()
        for lane in pool.lanes:
            i = 0
            while i < len(lane) and i < SCAN_LIMIT:
                job = lane[i]
                if job.provider in blocked:
                    i += 1
                    continue
                held = self.hold(job) if self.hold is not None else None
                if held is not None:
                    del lane[i]
                    self.traces.add(job.message.queue_id, "deferred", pool.name, held[0].text)
                    self._defer(job, *held)
                    continue
                choice = pool.choose(job, now)
                if choice.waits:
                    if not waits_for_provider(choice.selection.candidates):
                        return  # busy: this lane and the lower ones wait for a free slot
                    blocked.add(job.provider)
                    i += 1
                    continue
                del lane[i]
                if choice.member is None:
                    reply = no_member_reply(choice.selection)
                    self.traces.add(job.message.queue_id, "deferred", pool.name, reply.text)
                    # A cap that frees at a known time (warm-up): no retry before then.
                    self._defer(job, reply, pool.frees_at(job, choice.selection, now))
                    continue
                self.traces.add(
                    job.message.queue_id,
                    "dispatch",
                    tuple(r.address for r in job.recipients),
                    pool.name,
                    job.priority,
                    choice.member.name,
                    pool.strategy_label(job),
                    choice.selection.reasons(choice.member),
                )
                self._start(job, choice.member, now)

    def _start(self, job: Job, member: Member, now: float) -> None:
        member.start(now)
        self.desk.started(job, member, now)
        self.active += 1
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(self._deliver(job, member))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one delivery --------------------------------------------------------------

    async def _deliver(self, job: Job, member: Member) -> None:
        msg = job.message
        rcpts = [r.address for r in job.recipients]
        started = self.clock.monotonic()
        result = _NOTHING_SENT
        overloaded = False
        try:
            destinations = await member.destinations(job.domain, self.resolver)
            delivered = await member.deliver(
                destinations,
                msg.sender,
                rcpts,
                msg.content,
                smtputf8=not _ascii(msg, rcpts),
                plain_lines=msg.plain_lines,
                max_messages=self.desk.max_messages(job),
            )
        except ResolveError as exc:
            reply = Reply(550 if exc.permanent else 451, exc.enhanced_code, str(exc))
            result = AttemptResult(self._settle(job, member, [reply] * len(rcpts)))
        except ConnectError as exc:
            seconds = self.clock.monotonic() - started
            now = self.clock.monotonic()
            ruled, overloaded, wait = self.desk.judge_failure(job, member, exc, now)
            if ruled:  # the provider limits this member: not a health failure
                result = AttemptResult(answered=True, seconds=seconds)
            else:
                result = AttemptResult(failure=exc.reason, seconds=seconds)
            self._failover(job, member, exc, wait=wait)
        except Exception as exc:  # a bug must not lose the job: defer it
            log.exception("delivery of %r on %r failed unexpectedly", job, member)
            self._defer(job, Reply(451, "4.3.0", f"internal error: {type(exc).__name__}"))
        else:
            tr = delivered.result
            replies, overloaded = self.desk.judge(
                job,
                member,
                transaction_outcomes(tr.mail, tr.rcpts, tr.data),
                self.clock.monotonic(),
            )
            states = self._settle(job, member, replies, delivered.upstream, delivered.latency)
            if self.on_outcome is not None:
                self.on_outcome(member, job, replies)
            accepted = tr.data is not None and tr.data.is_positive
            result = AttemptResult(states, True, None, delivered.latency, accepted)
        finally:
            self._finish(job, member, result, overloaded)

    def _finish(self, job: Job, member: Member, result: AttemptResult, overloaded: bool) -> None:
        """The attempt goes back to its member (health, counters) in one call."""
        now = self.clock.monotonic()
        self.desk.finished(job, member, now, overloaded=overloaded)
        pool = self.pools.get(job.pool)
        if pool is not None:
            if not result.answered:  # nothing sent: give back what the pick reserved
                pool.release(member, job, now)
            transition = pool.record(member, result, now, self.max_ejection_percent, job)
        else:  # the pool was removed by a reload meanwhile
            transition = member.record(result, now)
        if transition is not None:
            self.member_event(member, transition.event, transition.reason)
            if transition.event == "member_up":
                self.wake()
        self.active -= 1
        if not self.active:
            self._idle.set()
        self._schedule_pump()

    def _failover(self, job: Job, member: Member, exc: ConnectError, *, wait: bool = False) -> None:
        """Back to the front of the lane without counting an attempt: for the next
        member, or (``wait``) for this one once it has a free connection."""
        if wait:
            why = f"{exc.reason}: {exc}; waits for a connection to {job.provider}"
            self.traces.add(job.message.queue_id, "failover", member.name, why)
        else:
            self._log_job(job, "failover", member=member, response=f"{exc.reason}: {exc}")
            self.traces.add(job.message.queue_id, "failover", member.name, f"{exc.reason}: {exc}")
            job.tried.add(member.name)
        pool = self.pools.get(job.pool)
        if pool is not None:
            pool.lanes[job.priority].appendleft(job)  # no attempt counted: try the next member
        else:
            self._defer(job, Reply(451, "4.4.1", str(exc)))

    def _settle(
        self,
        job: Job,
        member: Member | None,
        replies: Sequence[Reply],
        upstream: str = "",
        latency: float = 0.0,
        not_before: float | None = None,
    ) -> list[RecipientState]:
        """Each recipient's fate from its reply; ``member`` None: no member was tried;
        ``not_before``: a deferred recipient's next attempt is no earlier (wall time).
        Returns the recipients' new states, in order."""
        now = self.clock.wall()
        states: list[RecipientState] = []
        results: list[RecipientResult] = []
        bounced: list[FailedRecipient] = []
        expired: list[FailedRecipient] = []
        elsewhere: list[ClaimedRecipient] = []
        for rcpt, reply in zip(job.recipients, replies, strict=True):
            attempt = rcpt.attempts + 1
            kind = (
                None
                if reply.is_positive
                else classify_bounce(reply.code, reply.enhanced_code, reply.text)
            )
            if member is not None and self._judge(job, member, reply, kind):
                # A block of this member says nothing about the address: another one tries.
                elsewhere.append(rcpt)
                states.append(RecipientState.DEFERRED)
                self._log_rcpt(job, rcpt, "failover", reply, member=member, upstream=upstream)
                if job.experiment is not None and self.experiments is not None:
                    # The variant's path was blocked: that is its outcome for this recipient
                    # (its guardrail must see it); the retry goes to the whole pool, outside
                    # the experiment, so the recipient is not counted twice.
                    blocked = RecipientState.BOUNCED
                    self.experiments.observe(observation(job, rcpt, blocked, reply, now, latency))
                continue
            state, next_attempt = next_state(
                reply, attempt, now, job.message.expires_at, self.schedule, self._rng
            )
            if not_before is not None and state is RecipientState.DEFERRED:
                next_attempt = max(next_attempt, min(not_before, job.message.expires_at))
            states.append(state)
            results.append(
                RecipientResult(
                    rcpt.rid,
                    state,
                    next_attempt,
                    member is not None,
                    reply.code,
                    reply.enhanced_code,
                    reply.text,
                    member.name if member else "",
                )
            )
            if state is RecipientState.BOUNCED:
                bounced.append(failed_recipient(rcpt.address, reply, upstream))
                if (
                    self.on_hard_bounce is not None
                    and member is not None
                    and kind is not None
                    and kind.is_hard
                ):
                    self.on_hard_bounce(rcpt.address, str(reply))
            elif state is RecipientState.EXPIRED:
                expired.append(failed_recipient(rcpt.address, reply, upstream, expired=True))
            if job.experiment is not None and self.experiments is not None and state.is_final:
                self.experiments.observe(
                    observation(job, rcpt, state, reply, now, latency if member else None)
                )
            self._log_rcpt(
                job,
                rcpt,
                state.name.lower(),
                reply,
                member=member,
                upstream=upstream,
                latency=latency,
                attempt=attempt,
            )
        if member is not None:
            outcomes = tuple(zip((r.address for r in job.recipients), replies, strict=True))
            self.traces.add(job.message.queue_id, "attempt", member.name, upstream, outcomes)
        if elsewhere and member is not None:
            self._elsewhere(job, member, elsewhere)
        self._record(results)
        self._notify(job.message, bounced, expired=False)
        self._notify(job.message, expired, expired=True)
        return states

    def _defer(self, job: Job, reply: Reply, not_before: float | None = None) -> None:
        """No member took the job: every recipient waits (or expires) with ``reply``,
        until ``not_before`` at least (wall time) when given.

        Waiting for a member is not the recipient's failure: no attempt is counted."""
        self._settle(job, None, [reply] * len(job.recipients), not_before=not_before)

    # -- results, DSNs, logs -------------------------------------------------------

    def _record(self, results: list[RecipientResult]) -> None:
        self.held -= len(results)
        if self.backlog and self.held < self.max_in_flight // 2:
            self._feed.set()
        self._pending_results.extend(results)
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_results())

    async def _flush_results(self) -> None:
        while self._pending_results:
            batch, self._pending_results = self._pending_results, []
            try:
                await self.spool.record(batch)
            except Exception:
                # The recipients stay INFLIGHT on disk and come back at the next start.
                log.exception("could not record %d delivery results", len(batch))

    def _notify(self, msg: ClaimedMessage, failed: list[FailedRecipient], *, expired: bool) -> None:
        if not failed or not msg.sender or msg.is_dsn or self.on_bounce is None:
            return
        notice = BounceNotice(
            msg.queue_id, msg.sender, msg.content, msg.received_at, failed, expired
        )
        task = asyncio.get_running_loop().create_task(self.on_bounce(notice))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _log_rcpt(
        self,
        job: Job,
        rcpt: ClaimedRecipient,
        event: str,
        reply: Reply,
        *,
        member: Member | None = None,
        upstream: str = "",
        latency: float = 0.0,
        attempt: int = 0,
    ) -> None:
        self.log.write(
            rcpt_record(job, rcpt, event, reply, member, upstream, latency, attempt, self.clock)
        )

    def _log_job(self, job: Job, event: str, *, member: Member, response: str) -> None:
        for record in job_records(job, event, member, response):
            self.log.write(record)

    def _judge(self, job: Job, member: Member, reply: Reply, kind: Classification | None) -> bool:
        """Count the reply (of class ``kind``) in the member's reputation; True when it is
        a policy block (5.7.x, a provider's block text) and another member may try."""
        if self.reputation is not None:
            if kind is None:
                outcome = Outcome.DELIVERED
            elif kind.is_policy:
                outcome = Outcome.POLICY
            elif kind.is_hard:
                outcome = Outcome.HARD
            else:
                outcome = Outcome.BOUNCED if reply.is_permanent else Outcome.DEFERRED
            self.reputation.record(member.name, job.domain, outcome)
        if kind is None or not kind.is_policy:
            return False
        pool = self.pools.get(job.pool)
        return pool is not None and any(
            m.name != member.name and m.name not in job.tried for m in pool.members
        )

    def _elsewhere(self, job: Job, member: Member, rcpts: list[ClaimedRecipient]) -> None:
        retry = Job(
            job.message, rcpts, job.pool, job.priority, job.domain, {*job.tried, member.name}
        )
        self.traces.add(job.message.queue_id, "failover", member.name, "policy block")
        pool = self.pools.get(job.pool)
        if pool is not None:
            pool.lanes[job.priority].appendleft(retry)  # tried at once, no attempt counted

    def reputation_event(self, change: Change) -> None:
        """A member (× provider) changed reputation state: an event in the log."""
        new = change.new
        event = "reputation_ok" if new.state is Reputation.OK else new.state.value
        pool = next(
            (p.name for p in self.pools.values() for m in p.members if m.name == change.member),
            None,
        )
        log.warning("member %s (%s): %s (%s)", change.member, change.provider, event, new.reason)
        self.log.write(reputation_record(change, event, pool))
        if new.state is not Reputation.QUARANTINED:
            self.wake()

    def member_event(self, member: Member, event: str, reason: str) -> None:
        log.info("member %s: %s (%s)", member.name, event, reason)
        self.log.write(member_record(event, member.pool, member.name, reason))

    # -- background loops ----------------------------------------------------------

    async def run(self) -> None:
        """Feed from the spool and sweep expired mail until :meth:`stop`."""
        self._running = True
        sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())
        try:
            await self._feed_loop()
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    def any_member_available(self) -> bool:
        now = self.clock.monotonic()
        return any(p.any_available(now) for p in self.pools.values())

    async def _feed_loop(self) -> None:
        while self._running:
            room = self.max_in_flight - self.held
            # With every member down or paused, claiming due mail would only defer it
            # again (a write and a log record each, for nothing); wait for a member.
            if room > 0 and self.any_member_available():
                batch = min(room, 500)
                try:
                    claimed = await self.spool.claim_ready(self.clock.wall(), batch)
                except SpoolError as exc:  # a full disk: look again when it may have room
                    log.warning("cannot claim from the spool: %s", exc)
                    claimed = []
                for message in claimed:
                    self.submit(message)
                self.backlog = sum(len(m.recipients) for m in claimed) >= batch
                if self.backlog:
                    await asyncio.sleep(0)
                    continue
            due = None
            with contextlib.suppress(SpoolError):  # not opened yet (full disk): wait
                due = await self.spool.next_due()
            wait = 1.0 if due is None else min(1.0, max(0.02, due - self.clock.wall()))
            self._feed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._feed.wait(), wait)

    def wake(self) -> None:
        """Look at the spool again now (after a retry or a member coming back)."""
        self.backlog = True
        self._feed.set()
        self._schedule_pump()

    def note_overflow(self) -> None:
        """Intake stored mail on disk only (no room in memory): the feeder claims it."""
        self.backlog = True

    async def _sweep_loop(self) -> None:
        while self._running:
            try:
                await self.sweep_expired()
            except SpoolError as exc:
                log.warning("cannot expire from the spool: %s", exc)
            await self.clock.sleep(self.sweep_interval)

    async def sweep_expired(self) -> int:
        return await self.expiry.sweep()

    async def stop(self, grace: float = 30.0) -> None:
        """Stop feeding, let deliveries in progress finish, give the rest back to the spool."""
        self._running = False
        self._feed.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        # Jobs still waiting for an MX lookup go back to their lanes (and so to the spool).
        for task in list(self._recognising):
            task.cancel()
        if self._recognising:
            await asyncio.wait(list(self._recognising))
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        give_back: list[RecipientResult] = []
        for pool in self.pools.values():
            for lane in pool.lanes:
                while lane:
                    job = lane.popleft()
                    give_back += [
                        RecipientResult(r.rid, RecipientState.QUEUED, self.clock.wall(), False)
                        for r in job.recipients
                    ]
        if give_back:
            self._record(give_back)
        if self._flush_task is not None:
            await self._flush_task
        for pool in self.pools.values():
            for member in pool.members:
                member.close_idle(0)

    def __repr__(self) -> str:
        waiting = sum(p.waiting() for p in self.pools.values())
        return f"Dispatcher({self.active} delivering, {waiting} waiting, {self.held} held)"


def _ascii(msg: ClaimedMessage, rcpts: list[str]) -> bool:
    return msg.sender.isascii() and all(r.isascii() for r in rcpts)
