"""A/B experiments (SPEC §2.7): assignment, counters, statistics, report.

This package never imports delivery: the dispatcher asks it which variant a
recipient belongs to and hands it each finished recipient as an
:class:`Observation`.
"""

from __future__ import annotations

from smtplb.experiments.counters import Event, ExperimentStore, Observation
from smtplb.experiments.runtime import Experiments, log_events, variant_pool

__all__ = ["Event", "ExperimentStore", "Experiments", "Observation", "log_events", "variant_pool"]
