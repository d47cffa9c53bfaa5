"""SimulatedFleet: one Ray actor hosting many sleeping fake engines, each a worker to the coordinator.

A thousand simulated GPUs as a thousand actor processes would measure process scheduling on two
cores, not synthfleet. Here a handful of processes each host hundreds of engines, every one with its
own `FakeEngineArgs` (rate, faults), and each shard runs the worker's real shard code (render,
generate, assemble, the exactly-once commit) on its engine. For benchmarks and tests of the
coordinator at scale: production runs one `GenerationWorker` per engine.

With `commit=False` a shard only takes its simulated generation time and reports a win without
rendering or writing anything: a benchmark of the coordinator's own capacity (dispatch, Ray, the
tracker), which real commits (about 10 ms of CPU a shard here) would otherwise hide. Nothing is
finalized from such a run.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from typing import Any

import ray

from orchestrator.commit.shards import CommitOutcome, ShardStats
from orchestrator.errors import EngineDeadError
from orchestrator.plan.planner import Plan, Shard
from orchestrator.spec.job import JobSpec
from orchestrator.spec.model import FakeEngineArgs
from orchestrator.storage import Store, open_store
from workers.engine import Engine
from workers.fake_engine import sleeping_engine
from workers.inbox import Inboxes, Jobs, Results, Work
from workers.shard import WorkerCounts, run_shard


@ray.remote
class SimulatedFleet:
    """Engines added and removed one at a time; `step` runs a batch of shards on one of them."""

    def __init__(self, model_name: str, commit: bool = True):
        self.model_name, self.commit = model_name, commit
        self.args: dict[int, FakeEngineArgs] = {}
        self.engines: dict[int, Engine] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.stores: dict[tuple[str, str], Store] = {}
        self.jobs = Jobs()
        self.inboxes: dict[int, Inboxes] = {}
        self._ids = itertools.count()

    def add_engine(self, args: FakeEngineArgs) -> int:
        index = next(self._ids)
        self.engines[index], self.args[index] = sleeping_engine(self.model_name, args), args
        self.inboxes[index] = Inboxes(self.jobs)
        return index

    def remove_engine(self, index: int) -> None:
        self.engines.pop(index, None)
        self.args.pop(index, None)
        self.inboxes.pop(index, None)

    async def step(self, index: int, session: str, jobs: dict[str, tuple[Any, Any]], work: list[Work],
                   cancels: list[int]) -> Results:
        """A `GenerationWorker.step` for engine `index` (its attempts after removal fail: engine dead)."""
        inboxes = self.inboxes.get(index) or Inboxes(self.jobs)
        return await inboxes.step(session, jobs, work, cancels, functools.partial(self.process, index))

    async def process(self, index: int, spec: JobSpec, plan: Plan, shard: Shard, attempt: int) -> CommitOutcome | None:
        engine = self.engines.get(index)
        if engine is None:
            raise EngineDeadError(f"simulated engine {index} was removed")
        if not self.commit:
            tokens = spec.sampling.max_tokens * shard.rows
            seconds = spec.sampling.max_tokens / self.args[index].tokens_per_s
            await asyncio.sleep(seconds)
            return CommitOutcome(ShardStats(shard.index, attempt, shard.rows, 0, 0, tokens, seconds, "fake"), won=True)
        key = (spec.output.uri, plan.job_id)
        store = self.stores.get(key) or self.stores.setdefault(key, open_store(spec.output.uri).child(plan.job_id))
        counts = self.counts.setdefault(plan.job_id, {})
        return await run_shard(engine, store, spec, plan, shard, attempt, counts)

    def drain_counts(self) -> WorkerCounts:
        return WorkerCounts.drain(self.counts)

    def requests(self) -> int:
        return sum(e.requests for e in self.engines.values())  # type: ignore[attr-defined]
