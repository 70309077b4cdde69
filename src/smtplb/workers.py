"""Several worker processes on one node (SPEC §2.8): throughput scales with cores.

``workers = N`` makes ``smtplb run`` a supervisor of N workers. Each worker is
a whole smtplb: an SO_REUSEPORT SMTP listener (the kernel spreads connections),
its own spool shard, dispatcher and member connections. Worker 0 also serves
the HTTP API; it answers for the whole node by reading the other shards and the
state snapshot each peer writes every half second to ``data_dir/run/``.
Operator changes reach the peers through files they watch: the paused-members
list and the drain flag (:class:`PeerLink`). So does member health: only worker 0
runs the active checks (once per node, not per worker) and writes its verdicts
to ``run/health.json``; the peers follow them. The supervisor forwards
SIGTERM/SIGHUP and restarts a worker that dies. The merging of the peers'
views into the node's (members, overview, metrics) is here too, as pure functions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("smtplb.workers")

SNAPSHOT_EVERY = 0.5
STALE_AFTER = 5.0
# Gauges that describe one shared thing (a member's state), not a share of work:
# merged with max, not summed.
_MAX_GAUGES = {
    "smtplb_member_up",
    "smtplb_member_health",
    "smtplb_member_effective_weight",
    "smtplb_queue_oldest_age_seconds",
    # read from the counts the workers share: each reports the node's value
    "smtplb_warmup_cap",
    "smtplb_warmup_sent",
    # each worker's own link to the cluster's Redis: the node is up if any worker is
    "smtplb_cluster_redis_up",
    "smtplb_cluster_fallback",
}


def run_dir(data_dir: Path) -> Path:
    return data_dir / "run"


def write_snapshot(data_dir: Path, worker: int, snapshot: dict[str, Any]) -> None:
    directory = run_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".worker-{worker}.json.tmp"
    tmp.write_text(json.dumps({"ts": time.time(), **snapshot}))
    tmp.replace(directory / f"worker-{worker}.json")


def read_snapshots(data_dir: Path, workers: int) -> list[dict[str, Any]]:
    """Fresh snapshots of workers 1…N-1 (a stale or missing one is left out)."""
    out = []
    for worker in range(1, workers):
        path = run_dir(data_dir) / f"worker-{worker}.json"
        try:
            snap = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if time.time() - snap.get("ts", 0) <= STALE_AFTER:
            out.append(snap)
    return out


def health_file(data_dir: Path) -> Path:
    return run_dir(data_dir) / "health.json"


def write_health(data_dir: Path, verdicts: dict[str, dict[str, Any]]) -> None:
    """Worker 0 publishes its health checks' verdicts (member name → up, reason)."""
    path = health_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".health.json.tmp")
    tmp.write_text(json.dumps(verdicts))
    tmp.replace(path)


def read_health(data_dir: Path) -> dict[str, dict[str, Any]]:
    """The verdicts worker 0 published ({} before its first)."""
    try:
        verdicts: dict[str, dict[str, Any]] = json.loads(health_file(data_dir).read_text())
    except (OSError, ValueError):
        return {}
    return verdicts


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns / 1e9
    except OSError:
        return 0.0


def drain_flag(data_dir: Path) -> Path:
    return run_dir(data_dir) / "draining"


def set_drain_flag(data_dir: Path, draining: bool) -> None:
    """Tell the peers to drain (or to take mail again)."""
    flag = drain_flag(data_dir)
    if draining:
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.touch()
    else:
        flag.unlink(missing_ok=True)


# Member fields that count work (summed across workers); the rest describe the
# member itself, and worker 0's own view of them stands.
_ADDITIVE = (
    "active",
    "idle_connections",
    "delivered",
    "deferred",
    "bounced",
    "failures",
    "per_minute",
)


def merge_members(
    mine: list[dict[str, Any]], snapshots: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Worker 0's member views with the peers' counters and connection shares added."""
    by_name = {m["name"]: m for m in mine}
    for snap in snapshots:
        for peer in snap["members"]:
            member = by_name.get(peer["name"])
            if member is not None:
                for key in _ADDITIVE:
                    member[key] = (member.get(key) or 0) + (peer.get(key) or 0)
                member["max_connections"] += peer["max_connections"]
                # Each worker judges its own traffic: the node shows the worst judgement.
                theirs = peer.get("reputation")
                if theirs and _REPUTATION_ORDER.get(theirs["state"], 0) > _REPUTATION_ORDER.get(
                    member.get("reputation", {}).get("state", "ok"), 0
                ):
                    member["reputation"] = theirs
    return mine


_REPUTATION_ORDER = {"ok": 0, "probation": 1, "throttled": 2, "quarantined": 3}


def merge_live(
    totals: dict[str, Any],
    series: dict[str, Any],
    errors: list[dict[str, Any]],
    waiting: dict[str, int],
    snapshots: Iterable[dict[str, Any]],
) -> None:
    """Add the peers' dashboard data (totals, chart series, errors, waiting jobs)
    into worker 0's, in place; errors end newest first."""
    for snap in snapshots:
        for key, value in snap["totals"].items():
            totals[key] = totals.get(key, 0) + value
        for key, values in snap["series"].items():
            if isinstance(values, list) and len(values) == len(series.get(key, [])):
                series[key] = [a + b for a, b in zip(series[key], values, strict=True)]
        errors += snap["errors"]
        for pool, count in snap["waiting"].items():
            waiting[pool] = waiting.get(pool, 0) + count
    errors.sort(key=lambda e: -e["ts"])


class PeerLink:
    """Workers 1…N-1: publish this worker's snapshot every half second, and follow
    worker 0: the paused-members file, the drain flag and the health verdicts."""

    def __init__(
        self,
        data_dir: Path,
        worker: int,
        *,
        snapshot: Callable[[], Awaitable[dict[str, Any]]],
        paused_mtime: Callable[[], float],
        on_paused_change: Callable[[], None],
        on_drain_change: Callable[[bool], None],
        on_health: Callable[[dict[str, dict[str, Any]]], None] = lambda _verdicts: None,
    ) -> None:
        self.data_dir = data_dir
        self.worker = worker
        self.snapshot = snapshot
        self.paused_mtime = paused_mtime
        self.on_paused_change = on_paused_change
        self.on_drain_change = on_drain_change
        self.on_health = on_health
        self._seen_mtime = 0.0
        self._health_mtime = 0.0
        self._draining = False

    async def step(self) -> None:
        write_snapshot(self.data_dir, self.worker, await self.snapshot())
        mtime = self.paused_mtime()
        if mtime != self._seen_mtime:
            self._seen_mtime = mtime
            self.on_paused_change()
        draining = drain_flag(self.data_dir).exists()
        if draining != self._draining:
            self._draining = draining
            self.on_drain_change(draining)
        health_mtime = _mtime(health_file(self.data_dir))
        if health_mtime != self._health_mtime:
            self._health_mtime = health_mtime
            self.on_health(read_health(self.data_dir))

    async def run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(SNAPSHOT_EVERY)

    def __repr__(self) -> str:
        return f"PeerLink(worker {self.worker}, {'draining' if self._draining else 'accepting'})"


def merge_metrics(texts: Iterable[str]) -> str:
    """One exposition from several workers': counters and histograms add up."""
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            name, kind = family.name, family.type
            _, _, samples = families.setdefault(name, (kind, family.documentation, {}))
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if name in _MAX_GAUGES:
                    samples[key] = max(samples.get(key, sample.value), sample.value)
                else:
                    samples[key] = samples.get(key, 0.0) + sample.value
    lines = []
    for name, (kind, doc, samples) in families.items():
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        for (sample_name, labels), value in samples.items():
            label_text = ",".join(
                f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                for k, v in labels
            )
            lines.append(
                f"{sample_name}{{{label_text}}} {value!r}" if labels else f"{sample_name} {value!r}"
            )
    return "\n".join(lines) + "\n"


class Supervisor:
    """Starts N workers, forwards signals, restarts one that dies."""

    def __init__(self, config_path: Path | None, workers: int) -> None:
        self.config_path = config_path
        self.workers = workers
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def _spawn(self, worker: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "smtplb", "run", "--worker", str(worker)]
        if self.config_path is not None:
            cmd += ["-c", str(self.config_path)]
        return subprocess.Popen(cmd)

    def run(self) -> int:
        def forward(signum: int, _frame: object) -> None:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, forward)
        for worker in range(self.workers):
            self.procs[worker] = self._spawn(worker)
        restarts: dict[int, float] = {}
        while True:
            time.sleep(0.2)
            codes = {w: p.poll() for w, p in self.procs.items()}
            if self.stopping:
                if all(code is not None for code in codes.values()):
                    return max(abs(code or 0) for code in codes.values())
                continue
            for worker, code in codes.items():
                if code is None:
                    continue
                log.error("worker %d exited with status %d; restarting it", worker, code)
                if time.monotonic() - restarts.get(worker, 0.0) < 1.0:
                    time.sleep(1.0)  # a worker that dies at once must not spin the supervisor
                restarts[worker] = time.monotonic()
                self.procs[worker] = self._spawn(worker)
