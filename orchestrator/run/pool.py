"""A pool of GenerationWorker actors sharing one model, each with its engine loaded once."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import ray

from orchestrator import defaults
from orchestrator.errors import JobFailedError, Problem, SpecError
from orchestrator.run.channel import Channel
from orchestrator.run.handles import drained
from orchestrator.spec.job import Resources
from orchestrator.spec.model import ModelSpec
from workers.actor import GenerationWorker
from workers.engine import EngineInfo
from workers.shard import WorkerCounts

log = logging.getLogger(__name__)


class PlacementError(RuntimeError):
    """Ray could not put a worker on any node."""

@dataclass
class Worker:
    id: int
    actor: Any
    channel: Channel  # the dispatcher's handle on it
    info: EngineInfo | None = None


def workers_that_fit(resources: Resources, cluster: Mapping[str, float], used: Mapping[str, float] | None = None) -> int:
    """Workers of this shape the cluster's GPUs and CPUs hold beside what `used` takes, at most the
    job's `resources.workers` (0 when none fits)."""
    used = used or {}
    fits = [resources.workers]
    for resource, per in (("GPU", resources.gpus_per_worker), ("CPU", resources.cpus_per_worker)):
        if per:
            fits.append(int((cluster.get(resource, 0) - used.get(resource, 0)) // per))
    return max(0, min(fits))


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) >= 1


def fitting_workers(resources: Resources) -> int:
    """How many workers the cluster can hold; fails fast when not even one fits."""
    total = ray.cluster_resources()
    n = workers_that_fit(resources, total)
    if n < 1:
        raise SpecError([Problem("resources", f"the Ray cluster ({total.get('GPU', 0):g} GPUs, "
                                 f"{total.get('CPU', 0):g} CPUs) cannot hold one worker needing "
                                 f"{resources.gpus_per_worker:g} GPUs and {resources.cpus_per_worker:g} CPUs; "
                                 "set resources.gpus_per_worker: 0 to run on CPUs")])
    if n < resources.workers:
        log.warning("cluster fits %d of the %d workers asked for", n, resources.workers)
    return n


class WorkerPool:
    """Workers for one model and resource shape; reusable across jobs on the same model."""

    def __init__(self, model: ModelSpec, resources: Resources):
        self.model, self.resources = model, resources
        self.workers: dict[int, Worker] = {}
        self.unplaced: set[asyncio.Task[Any]] = set()  # starts (tasks running `add`) Ray has not placed yet
        self._ids = itertools.count()
        self._closed = False

    async def add(self) -> Worker:
        """Start one worker and wait until its engine is loaded; PlacementError if Ray cannot place it
        on a node within `defaults.PLACEMENT_TIMEOUT_S`."""
        r = self.resources
        threads = max(1, int(r.cpus_per_worker)) if not r.gpus_per_worker else None
        actor = GenerationWorker.options(num_gpus=r.gpus_per_worker, num_cpus=r.cpus_per_worker,
                                         max_concurrency=10_000).remote(self.model, bool(r.gpus_per_worker), threads)
        worker = Worker(next(self._ids), actor, Channel(actor.step.remote))
        task = asyncio.current_task()
        if task is not None:
            self.unplaced.add(task)
        try:
            try:
                await asyncio.wait_for(actor.__ray_ready__.remote(), defaults.PLACEMENT_TIMEOUT_S)
            except TimeoutError:
                raise PlacementError(f"Ray placed no worker needing {r.gpus_per_worker:g} GPUs and "
                                     f"{r.cpus_per_worker:g} CPUs on any node in {defaults.PLACEMENT_TIMEOUT_S:g} s: "
                                     "the cluster has no room for it (free resources, or add a node)") from None
            finally:
                self.unplaced.discard(task)  # type: ignore[arg-type]
            worker.info = await actor.start.remote()
            if self._closed:
                raise PlacementError("the pool was closed while this worker started")
        except BaseException:  # a failed start, or one cancelled (its job is done, Ctrl-C)
            ray.kill(actor, no_restart=True)
            raise
        self.workers[worker.id] = worker
        return worker

    async def grow(self, n: int) -> None:
        results = await asyncio.gather(*(self.add() for _ in range(n - len(self.workers))), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors and not self.workers:
            cause = getattr(errors[0], "cause", None) or errors[0]
            raise JobFailedError(f"no worker could load the model {self.model.name}: {cause}", []) from None
        for e in errors:
            log.warning("a worker failed to start: %s", e)

    def remove(self, worker_id: int) -> None:
        worker = self.workers.pop(worker_id, None)
        if worker is not None:
            ray.kill(worker.actor, no_restart=True)

    def handle(self, worker_id: int) -> Channel:
        """The dispatcher's handle on a live worker."""
        return self.workers[worker_id].channel

    def put(self, value: Any) -> Any:
        """Store a job's spec or plan in Ray once; each attempt then sends its reference."""
        return ray.put(value)

    def drain_counts(self) -> Awaitable[WorkerCounts]:
        return drained([w.actor.drain_counts.remote() for w in self.workers.values()])

    def close(self) -> None:
        self._closed = True
        for wid in list(self.workers):
            self.remove(wid)

    def stats(self, key: str) -> int:
        """Sum of a worker statistic (`requests`, `engine_loads`) over the live workers."""
        return sum(s[key] for s in ray.get([w.actor.stats.remote() for w in self.workers.values()]))

    def requests(self) -> int:
        """Engine requests made by the live workers (a test's window into regeneration)."""
        return self.stats("requests")
