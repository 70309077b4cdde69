"""Which variant a recipient (or message) belongs to: a stable hash and the shares.

The key (the lower-cased recipient address, or the queue id with
``split = "message"``) is hashed with the experiment's name, so that two
experiments split independently and a key keeps its variant for as long as the
experiment and its shares stay the same — across restarts, workers and nodes
(BLAKE2b, not Python's salted ``hash``). The hash picks a bucket of 10 000;
each variant owns a run of buckets in proportion to its share. The traffic of a
stopped variant returns to control (the first variant); the other variants keep
their keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class VariantShare:
    name: str
    share: float  # percent


def bucket(experiment: str, key: str) -> int:
    """The key's bucket, 0 … BUCKETS-1, stable across processes and releases."""
    digest = hashlib.blake2b(f"{experiment}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class Assignment:
    """The variant for a key, given the variants in config order (control first)."""

    __slots__ = ("_bounds", "experiment", "variants")

    def __init__(self, experiment: str, variants: Sequence[VariantShare]) -> None:
        if not variants:
            raise ValueError("an experiment needs at least one variant")
        self.experiment = experiment
        self.variants = list(variants)
        total = sum(v.share for v in variants)
        bounds: list[int] = []
        acc = 0.0
        for v in variants:
            acc += v.share
            bounds.append(round(acc / total * BUCKETS) if total > 0 else BUCKETS)
        bounds[-1] = BUCKETS
        self._bounds = bounds

    def assign(self, key: str, stopped: Collection[str] = ()) -> str:
        """The variant name of ``key``; a stopped variant's keys go to control."""
        b = bucket(self.experiment, key)
        for v, bound in zip(self.variants, self._bounds, strict=True):
            if b < bound:
                return self.variants[0].name if v.name in stopped else v.name
        return self.variants[0].name  # unreachable: the last bound is BUCKETS

    @property
    def control(self) -> str:
        return self.variants[0].name

    def __repr__(self) -> str:
        shares = ", ".join(f"{v.name}={v.share:g}%" for v in self.variants)
        return f"Assignment({self.experiment!r}: {shares})"
