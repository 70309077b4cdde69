"""SIGHUP: re-read the config file and hand the new settings to the running parts.

Pools, members, routes, static routes, retry settings, provider shaping, SMTP
limits, relay_networks, DKIM keys and the complaint budget's thresholds change
in place; listeners (and turning the budget on or off) need a restart. A config
that does not load, or a DKIM key that does not, keeps the running config and keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from smtplb.balancing.eligibility import Eligibility
from smtplb.config import Config, load_config
from smtplb.delivery.bounces import DsnWriter
from smtplb.delivery.dispatcher import Dispatcher
from smtplb.delivery.member import Member
from smtplb.delivery.mx import MxResolver
from smtplb.delivery.pools import PausedMembers, PoolRuntime, Warmup, build_pools, retry_schedule
from smtplb.experiments import Experiments
from smtplb.intake.pipeline import IntakePipeline
from smtplb.mailauth.keys import load_keyring
from smtplb.reputation.book import ReputationBook
from smtplb.reputation.complaint_budget import BudgetPolicy, ComplaintBudget
from smtplb.reputation.feedback import FeedbackHandler
from smtplb.reputation.rules import RuleBook
from smtplb.routing.providers import ProviderTable

log = logging.getLogger("smtplb")


class Reloadable(Protocol):
    """The parts of a running node (:class:`smtplb.service.Service`) a reload reaches."""

    config: Config
    config_path: Path | None
    workers: int
    intake: IntakePipeline
    pools: dict[str, PoolRuntime]
    paused: PausedMembers
    warmup: Warmup
    budget: ComplaintBudget | None
    experiments: Experiments
    eligibility: Eligibility
    book: ReputationBook
    feedback_handler: FeedbackHandler
    resolver: MxResolver
    dispatcher: Dispatcher
    dsn: DsnWriter

    def members(self) -> Iterator[Member]: ...


def reload_config(node: Reloadable) -> None:
    """Re-read ``node.config_path`` and apply it (see the module's docstring)."""
    if node.config_path is None:
        log.info("SIGHUP: no config file to reload")
        return
    try:
        new = load_config(node.config_path)
        keyring = load_keyring(new.dkim)  # a bad key keeps the old config and keys
    except Exception as exc:
        log.error("reload failed, keeping the running config: %s", exc)
        return
    existing = {m.name: m for m in node.members()}
    node.config = new
    node.intake.reconfigure(new)
    node.intake.signer.keyring = keyring
    node.pools.clear()
    node.warmup.reconfigure(new)
    if node.budget is not None:  # new thresholds; turning it on or off needs a restart
        node.budget.reconfigure(BudgetPolicy.of(new))
    node.experiments.configure(new.experiments)
    node.pools.update(
        build_pools(
            new,
            existing,
            node.paused.load(),
            node.workers,
            node.dispatcher.clock,
            node.eligibility,
        )
    )
    node.book.reconfigure(new.reputation)
    node.feedback_handler.scope = new.suppression.scope
    node.dispatcher.desk.shaping.providers = ProviderTable.build(new.providers)
    node.dispatcher.desk.shaping.rules = RuleBook(new.providers)
    node.resolver.static = MxResolver(new.static_routes).static
    node.dispatcher.schedule = retry_schedule(new)
    node.dsn.reporting_mta = new.hostname
    log.info("configuration reloaded from %s", node.config_path)
    node.dispatcher.wake()
