"""The service's warm pools: one per model and worker shape, shared by the jobs that need it.

A pool grows to what its jobs ask for and what the cluster holds beside the other pools (idle pools
are released to make room); a pool no job has claimed for `idle_release_s` is released. Jobs lease a
pool's dispatcher for their generation (`lease`), which keeps the pool from release meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import ray

from orchestrator.run.dispatch import OnCounts, PoolDispatcher
from orchestrator.run.driver import Tracker
from orchestrator.run.pool import WorkerPool, workers_that_fit
from orchestrator.service.metrics import Metrics
from orchestrator.spec.job import JobSpec, Resources
from orchestrator.spec.model import ModelSpec

log = logging.getLogger(__name__)


def pool_key(model: ModelSpec, resources: Resources) -> str:
    """Pools are shared by jobs with the same model, engine arguments and worker shape."""
    shape = (model.model_dump_json(), resources.gpus_per_worker, resources.cpus_per_worker)
    return hashlib.sha256(repr(shape).encode()).hexdigest()[:16]


@dataclass
class PoolEntry:
    pool: WorkerPool
    dispatcher: PoolDispatcher
    loop: asyncio.Task[None]
    idle_since: float = field(default_factory=time.monotonic)
    claims: int = 0  # jobs between taking this pool and finishing with it (growing it included)
    wanted: int = 0  # the largest `resources.workers` of the jobs holding it
    growing: asyncio.Task[None] | None = None  # a `regrow` under way


class PoolManager:
    """The pools of one service, keyed by `pool_key`; `given` pools (adopted at start) are never closed."""

    def __init__(self, metrics: Metrics, on_counts: OnCounts, idle_release_s: float,
                 given: list[WorkerPool] | None = None):
        self.metrics, self.on_counts, self.idle_release_s = metrics, on_counts, idle_release_s
        self.entries: dict[str, PoolEntry] = {}
        self.given = given or []

    def start(self) -> None:
        for pool in self.given:
            self._adopt(pool)

    def close_dispatchers(self) -> None:
        """Stop dispatching: every job's running attempts are cancelled (committed shards stay)."""
        for entry in self.entries.values():
            entry.dispatcher.close()

    async def stop(self) -> None:
        """After `close_dispatchers`: wait for the dispatch loops, close the pools this service made."""
        for entry in self.entries.values():
            if entry.growing is not None:
                entry.growing.cancel()
        await asyncio.gather(*(e.loop for e in self.entries.values()), return_exceptions=True)
        for entry in self.entries.values():
            if entry.pool not in self.given:
                entry.pool.close()

    def _adopt(self, pool: WorkerPool) -> PoolEntry:
        dispatcher = PoolDispatcher(pool, on_counts=self.on_counts)
        entry = PoolEntry(pool, dispatcher, asyncio.ensure_future(dispatcher.run()))
        self.entries[pool_key(pool.model, pool.resources)] = entry
        return entry

    def entry_for(self, spec: JobSpec) -> PoolEntry | None:
        return self.entries.get(pool_key(spec.model, spec.resources))

    def can_start(self, spec: JobSpec) -> bool:
        """A job can start when its pool exists or at least one of its workers fits (after releasing idle pools)."""
        return self.capacity(spec) >= 1 or self.entry_for(spec) is not None

    def _used(self, except_key: str) -> dict[str, float]:
        """GPUs and CPUs the workers of every other pool hold."""
        used = {"GPU": 0.0, "CPU": 0.0}
        for key, entry in self.entries.items():
            if key != except_key:
                r, n = entry.pool.resources, len(entry.pool.workers)
                used["GPU"] += r.gpus_per_worker * n
                used["CPU"] += r.cpus_per_worker * n
        return used

    def capacity(self, spec: JobSpec) -> int:
        """Workers of this shape that fit beside the other pools (releasing idle ones if none does)."""
        key, cluster = pool_key(spec.model, spec.resources), ray.cluster_resources()
        fits = workers_that_fit(spec.resources, cluster, self._used(key))
        if fits < 1:
            self.release_idle(force=True, keep=key)
            fits = workers_that_fit(spec.resources, cluster, self._used(key))
        return fits

    def release_idle(self, *, force: bool = False, keep: str | None = None) -> None:
        now = time.monotonic()
        for key, entry in list(self.entries.items()):
            if entry.claims or entry.dispatcher.busy or key == keep:
                entry.idle_since = now
                continue
            if entry.pool in self.given:
                continue
            if force or now - entry.idle_since > self.idle_release_s:
                log.info("releasing idle pool for %s", entry.pool.model.name)
                entry.dispatcher.close()
                entry.pool.close()
                del self.entries[key]
                for state in ("busy", "idle"):
                    self.metrics.workers.labels(entry.pool.model.name, state).set(0)

    async def _grow(self, entry: PoolEntry, spec: JobSpec) -> None:
        if entry.growing is not None:  # a regrow under way: the workers it adds count
            await asyncio.gather(entry.growing, return_exceptions=True)
        await self._grow_to(entry, min(spec.resources.workers, len(entry.pool.workers) + self.capacity(spec)))

    async def _grow_to(self, entry: PoolEntry, want: int) -> None:
        if len(entry.pool.workers) < want:
            before = set(entry.pool.workers)
            await entry.pool.grow(want)
            for wid, worker in entry.pool.workers.items():
                if wid not in before and worker.info is not None:
                    self.metrics.engine_load.labels(entry.pool.model.name).observe(worker.info.load_seconds)
            entry.dispatcher.wake()  # its new workers take attempts now

    def regrow(self) -> None:
        """Grow the pools of running jobs that have fewer workers than those jobs want, as far as the
        cluster now has room: an autoscaler's nodes arrive after the job started on the first ones."""
        cluster: dict[str, float] | None = None
        for key, entry in self.entries.items():
            have = len(entry.pool.workers)
            if not entry.claims or have >= entry.wanted or (entry.growing is not None and not entry.growing.done()):
                continue
            cluster = cluster or ray.cluster_resources()
            shape = entry.pool.resources.model_copy(update={"workers": entry.wanted})
            want = workers_that_fit(shape, cluster, self._used(key))
            if want > have:
                log.info("growing the pool of %s from %d to %d workers", entry.pool.model.name, have, want)
                entry.growing = asyncio.ensure_future(self._regrow(entry, want))

    async def _regrow(self, entry: PoolEntry, want: int) -> None:
        try:
            await self._grow_to(entry, want)
        except Exception as e:  # noqa: BLE001 - its jobs go on with the workers they have
            log.warning("the pool of %s could not grow to %d workers: %s", entry.pool.model.name, want, e)

    @asynccontextmanager
    async def lease(self, spec: JobSpec, tracker: Tracker) -> AsyncIterator[PoolDispatcher]:
        """The dispatcher of the pool for `spec` (made and grown as needed), held from idle release
        until the lease ends."""
        entry = self.entry_for(spec) or self._adopt(WorkerPool(spec.model, spec.resources))
        entry.claims += 1
        entry.wanted = max(entry.wanted, spec.resources.workers)
        try:
            await self._grow(entry, spec)
            yield entry.dispatcher
        finally:
            entry.claims -= 1
            entry.idle_since = time.monotonic()
            if not entry.claims:
                entry.wanted = 0

    def update_gauges(self) -> None:
        for entry in self.entries.values():
            load = entry.dispatcher.load
            busy = sum(1 for wid in entry.pool.workers if load.get(wid, 0) > 0)
            self.metrics.workers.labels(entry.pool.model.name, "busy").set(busy)
            self.metrics.workers.labels(entry.pool.model.name, "idle").set(len(entry.pool.workers) - busy)
