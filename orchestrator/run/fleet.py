"""A simulated fleet as a `Pool`: N sleeping engines hosted by a few `SimulatedFleet` processes, each
engine a worker the dispatcher schedules, replaces and polls as it does a `GenerationWorker`.

It lets one machine measure and test the coordinator at the scale of a real fleet (1,000 simulated
GPUs cost `processes` processes, not 1,000); `engine_args(worker_id)` gives each engine its own rate
and faults, and `commit=False` measures the coordinator alone (see workers/fleet.py). Production pools
are `WorkerPool`s.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import ray

from orchestrator.run.channel import Channel
from orchestrator.run.handles import drained
from orchestrator.spec.job import Resources
from orchestrator.spec.model import FakeEngineArgs, ModelSpec
from workers.fleet import SimulatedFleet
from workers.shard import WorkerCounts


class FleetPool:
    """Workers that are engines of `processes` SimulatedFleet actors, assigned round-robin."""

    def __init__(self, model: ModelSpec, resources: Resources, *, processes: int = 2,
                 engine_args: Callable[[int], FakeEngineArgs] | None = None, commit: bool = True):
        if model.engine != "fake":
            raise ValueError("a simulated fleet runs `model.engine: fake` specs")
        self.model, self.resources = model, resources
        default = FakeEngineArgs.model_validate(model.engine_args)
        self.engine_args = engine_args or (lambda _: default)
        self.actors = [SimulatedFleet.options(num_cpus=0, max_concurrency=1_000_000).remote(model.name, commit)  # type: ignore[attr-defined]
                       for _ in range(processes)]
        self.workers: dict[int, tuple[int, int, Channel]] = {}  # worker id -> (actor, engine, its handle)
        self.unplaced: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count()

    async def add(self) -> int:
        wid = next(self._ids)
        actor = wid % len(self.actors)
        engine = await self.actors[actor].add_engine.remote(self.engine_args(wid))
        self.workers[wid] = (actor, engine, Channel(functools.partial(self.actors[actor].step.remote, engine)))
        return wid

    async def grow(self, n: int) -> None:
        await asyncio.gather(*(self.add() for _ in range(n - len(self.workers))))

    def remove(self, worker_id: int) -> None:
        placed = self.workers.pop(worker_id, None)
        if placed is not None:
            actor, engine, _ = placed
            self.actors[actor].remove_engine.remote(engine)

    def handle(self, worker_id: int) -> Channel:
        return self.workers[worker_id][2]

    def put(self, value: Any) -> Any:
        return ray.put(value)

    def drain_counts(self) -> Awaitable[WorkerCounts]:
        return drained([a.drain_counts.remote() for a in self.actors])

    def requests(self) -> int:
        return sum(ray.get([a.requests.remote() for a in self.actors]))

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.workers.clear()
