"""Experiment counts shared by every node: the
:class:`~smtplb.experiments.counters.CounterStore` of a cluster, in Redis.

The store's protocol is blocking (the runtime calls it in a thread, a batch at a
time), so this one uses redis-py's synchronous client. Per experiment: a list of
results in arrival order (``…:results``, one JSON row each: the report's sequential
p-values need the order), running totals (``…:counts``, field ``variant|outcome``)
written in the same MULTI as the rows, the run state (``…:run``), the stopped
variants (``…:stopped``, HSETNX: exactly one stop wins) and the events (``…:events``).
A Redis that does not answer raises :class:`~smtplb.experiments.counters.StoreError`:
the runtime keeps its batch and tries again, as it does for a full disk.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis

from smtplb.cluster.link import PREFIX, TIMEOUT
from smtplb.experiments.counters import Event, Observation, Row, StoreError

T = TypeVar("T")


class RedisExperimentStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.redis = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True
        )

    def __repr__(self) -> str:
        return f"RedisExperimentStore({self.url.rpartition('@')[2]})"

    @staticmethod
    def _key(experiment: str, part: str) -> str:
        return f"{PREFIX}experiment:{experiment}:{part}"

    def _do(self, op: Callable[[], T]) -> T:
        try:
            return op()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreError(f"Redis at {self.url.rpartition('@')[2]}: {exc}") from exc

    def add(self, observations: Iterable[Observation]) -> int:
        obs = list(observations)
        if not obs:
            return 0

        def write() -> int:
            with self.redis.pipeline(transaction=True) as pipe:
                for o in obs:
                    row = [o.variant, o.provider, o.outcome, o.deferred_ever]
                    row += [o.time_to_deliver, o.latency, o.at]
                    pipe.rpush(self._key(o.experiment, "results"), json.dumps(row))
                totals = Counter((o.experiment, o.variant, o.outcome) for o in obs)
                for (experiment, variant, outcome), n in totals.items():
                    pipe.hincrby(self._key(experiment, "counts"), f"{variant}|{outcome}", n)
                pipe.execute()
            return len(obs)

        return self._do(write)

    def rows(self, experiment: str) -> list[Row]:
        raw: Any = self._do(lambda: self.redis.lrange(self._key(experiment, "results"), 0, -1))
        out = []
        for text in raw:
            v, p, o, d, t, lat, at = json.loads(text)
            out.append(Row(v, p, o, bool(d), t, lat, at))
        return out

    def counts(self, experiment: str) -> dict[tuple[str, str], int]:
        raw: Any = self._do(lambda: self.redis.hgetall(self._key(experiment, "counts")))
        out = {}
        for field, n in raw.items():
            variant, _, outcome = field.rpartition("|")
            out[(variant, outcome)] = int(n)
        return out

    def running(self, experiment: str, default: bool = True) -> bool:
        raw: Any = self._do(lambda: self.redis.hget(self._key(experiment, "run"), "running"))
        return default if raw is None else raw == "1"

    def set_running(self, experiment: str, running: bool, at: float, detail: str = "") -> None:
        event = Event(experiment, None, "started" if running else "stopped", detail, at)

        def write() -> None:
            with self.redis.pipeline(transaction=True) as pipe:
                run = self._key(experiment, "run")
                pipe.hset(run, mapping={"running": "1" if running else "0", "changed_at": at})
                if running:  # a restart gives the stopped variants their traffic back
                    pipe.delete(self._key(experiment, "stopped"))
                pipe.rpush(self._key(experiment, "events"), _event(event))
                pipe.execute()

        self._do(write)

    def stopped_variants(self, experiment: str) -> dict[str, tuple[float, str]]:
        raw: Any = self._do(lambda: self.redis.hgetall(self._key(experiment, "stopped")))
        out = {}
        for variant, value in raw.items():
            at, reason = json.loads(value)
            out[variant] = (float(at), str(reason))
        return out

    def stop_variant(self, experiment: str, variant: str, at: float, reason: str) -> bool:
        """Stop one variant; False if it already was (HSETNX: one stop wins)."""

        def write() -> bool:
            key = self._key(experiment, "stopped")
            if not self.redis.hsetnx(key, variant, json.dumps([at, reason])):
                return False
            event = Event(experiment, variant, "variant_stopped", reason, at)
            self.redis.rpush(self._key(experiment, "events"), _event(event))
            return True

        return self._do(write)

    def events(self, experiment: str) -> list[Event]:
        raw: Any = self._do(lambda: self.redis.lrange(self._key(experiment, "events"), 0, -1))
        return [Event(*json.loads(text)) for text in raw]

    def close(self) -> None:
        self.redis.close()


def _event(e: Event) -> str:
    return json.dumps([e.experiment, e.variant, e.event, e.detail, e.at])
