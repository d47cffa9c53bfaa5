"""GenerationWorker: a Ray actor holding one warm engine and running many shards on it at once."""

from __future__ import annotations

import os
import stat
import sys
from typing import Any, Literal

import ray

from orchestrator.commit.shards import CommitOutcome
from orchestrator.plan.planner import Plan, Shard
from orchestrator.run import reaper
from orchestrator.spec.job import JobSpec
from orchestrator.spec.model import FakeEngineArgs, ModelSpec
from orchestrator.storage import open_store
from workers import placement
from workers.engine import Engine, EngineInfo, root_cause
from workers.inbox import Inboxes, Jobs, Results, Work
from workers.pipeline import run_staged_shard
from workers.shard import WorkerCounts, run_shard


class _OwnLogs:
    """What this process (and the engine processes it starts, which inherit its stdout and stderr)
    writes to its log files from now on: under Ray these are the worker's `.out`/`.err` files, where
    vLLM puts the root cause of a failed start."""

    def __init__(self) -> None:
        self.marks: dict[int, tuple[str, int]] = {}
        for fd in (1, 2):
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                self.marks[fd] = (os.readlink(f"/proc/self/fd/{fd}"), st.st_size)

    def since(self) -> str:
        sys.stdout.flush()
        sys.stderr.flush()
        text = []
        for path, offset in self.marks.values():
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    text.append(f.read(4 << 20).decode("utf-8", "replace"))
            except OSError:
                continue
        return "\n".join(text)


def _start_failure(e: Exception, logs: _OwnLogs) -> RuntimeError:
    """An engine start failure as one message with vLLM's own error line, not "See root cause above"."""
    text = f"{type(e).__name__}: {e}"
    chain = "\n".join(f"{type(c).__name__}: {c}" for c in _chain(e))
    cause = root_cause(chain) or root_cause(logs.since())
    return RuntimeError(cause if cause and cause not in text else text)


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return seen[::-1]


def _make_engine(model: ModelSpec, on_gpu: bool) -> Engine:
    if model.engine == "fake":  # in-process: no process to outlive the worker
        from workers.fake_engine import sleeping_engine

        return sleeping_engine(model.name, FakeEngineArgs.model_validate(model.engine_args))
    from workers.engine import VllmEngine

    if on_gpu:
        return VllmEngine(model, on_gpu=True)
    with placement.all_cores():  # the worker's process is the engine's: the model's cores for the model
        return VllmEngine(model, on_gpu=False)


@ray.remote
class GenerationWorker:
    """Loads the engine once (`start`), then `step` runs batches of shards concurrently on it."""

    def __init__(self, model: ModelSpec, on_gpu: bool, threads: int | None = None):
        self.model, self.on_gpu = model, on_gpu
        if threads and not on_gpu:
            # Ray pins OMP_NUM_THREADS to the actor's CPU count; the CPU engine needs the real count.
            os.environ["OMP_NUM_THREADS"] = str(threads)
        self.engine: Engine | None = None
        self.models: dict[str, Engine] = {}  # judge and stage models other than the worker's own, loaded on first use
        self.counts: dict[str, dict[str, int]] = {}
        self.engine_loads = 0
        self.reaper: Any = None
        self.inboxes = Inboxes(Jobs())

    def _make_engine(self, model: ModelSpec) -> Engine:
        if model.engine != "fake" and self.reaper is None:
            self.reaper = reaper.start()  # vLLM's engine processes never outlive this worker
        return _make_engine(model, self.on_gpu)

    async def start(self) -> EngineInfo:
        if self.engine is None:
            logs = _OwnLogs()
            try:
                self.engine = self._make_engine(self.model)
                self.engine_loads += 1
            except Exception as e:  # engine errors may not pickle; send their text
                raise _start_failure(e, logs) from None
        return self.engine.info

    async def step(self, session: str, jobs: dict[str, tuple[Any, Any]], work: list[Work],
                   cancels: list[int]) -> Results:
        """Start a batch of attempts, stop some, and collect the results finished (workers/inbox.py)."""
        assert self.engine is not None, "start() the worker first"
        return await self.inboxes.step(session, jobs, work, cancels, self.process)

    async def process(self, spec: JobSpec, plan: Plan, shard: Shard, attempt: int) -> CommitOutcome | None:
        """One attempt of `shard`: generate its rows on the engine and commit them."""
        assert self.engine is not None, "start() the worker first"
        store = open_store(spec.output.uri).child(plan.job_id)
        counts = self.counts.setdefault(plan.job_id, {})
        if spec.stages is not None:
            return await run_staged_shard(self.engine_for, store, spec, plan, shard, attempt, counts)
        judge = None if spec.judge is None or spec.judge.model == "self" else self.engine_for(spec.judge.model)
        return await run_shard(self.engine, store, spec, plan, shard, attempt, counts, judge)

    def engine_for(self, model: Literal["self"] | ModelSpec) -> Engine:
        """The engine of a stage's or judge's model: the worker's own for `self`, any other loaded on first use."""
        if model == "self":
            assert self.engine is not None
            return self.engine
        key = model.model_dump_json()
        if key not in self.models:
            self.models[key] = self._make_engine(model)
            self.engine_loads += 1
        return self.models[key]

    def drain_counts(self) -> WorkerCounts:
        """Token counts per job and storage calls since the last call (polled for metrics)."""
        return WorkerCounts.drain(self.counts)

    def stats(self) -> dict[str, Any]:
        engines = [self.engine, *self.models.values()] if self.engine else []
        return {"requests": sum(e.requests for e in engines), "engine_loads": self.engine_loads,
                "pid": os.getpid()}
