"""The dispatcher on in-memory workers: retries, worker loss, zombie attempts, fair share, cancel and
failure, each in milliseconds and without Ray (tests/integration/test_dispatch.py runs it on Ray)."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest
from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError

from orchestrator import defaults
from orchestrator.commit.shards import CommitOutcome, ShardStats
from orchestrator.errors import EngineDeadError, JobFailedError, ShardError
from orchestrator.plan.planner import Plan, Shard
from orchestrator.run.dispatch import JobRun, PoolDispatcher
from orchestrator.run.handles import (
    AttemptResult,
    Call,
    Cancelled,
    Failed,
    Succeeded,
    classify,
    drained,
)
from orchestrator.spec.job import JobSpec, Resources
from tests.unit.aio import on_loop
from tests.unit.specs import make_spec
from workers.shard import WorkerCounts


class Try(NamedTuple):
    """One attempt as a fake worker saw it."""
    job: str
    shard: int
    attempt: int
    worker: int


# What a fake attempt does: "ok" commits; "fail" raises; "lose" kills its worker (every attempt
# under way on it reports worker_lost); "commit_then_lose" commits, then kills its worker; "zombie"
# kills its worker but goes on, committing once another attempt has; "hang" runs until cancelled;
# "stubborn" runs for ever, cancelled or not.
Script = Callable[[Try], str]


def first_on_worker_0(action: str) -> Script:
    """`action` for shard 0's first attempt on worker 0, "ok" for every other attempt."""
    return lambda t: action if (t.shard, t.attempt, t.worker) == (0, 1, 0) else "ok"


@dataclass(frozen=True)
class Ref:
    """What the fake pool's `put` hands out: attempts must get this, not the object."""

    value: Any


class FakeStore:
    """Shard commits, exactly once as `commit_shard` makes them: the first attempt to commit wins."""

    def __init__(self) -> None:
        self.commits: dict[tuple[str, int], int] = {}  # (job, shard) -> the attempt that committed it
        self.landed: defaultdict[tuple[str, int], asyncio.Event] = defaultdict(asyncio.Event)

    def commit(self, t: Try) -> CommitOutcome:
        stats = ShardStats(t.shard, t.attempt, 1, 0, 1, 1, 0.0, "rev")
        if (t.job, t.shard) in self.commits:
            return CommitOutcome(stats, won=False)
        self.commits[(t.job, t.shard)] = t.attempt
        self.landed[(t.job, t.shard)].set()
        return CommitOutcome(stats, won=True)


class FakeWorker:
    """A worker in memory; each attempt runs as its pool's script says, a loop turn or more later."""

    def __init__(self, pool: FakePool, wid: int):
        self.pool, self.id = pool, wid
        self.dead = False
        self.running: dict[asyncio.Future[AttemptResult], Try] = {}

    def process(self, spec_ref: Any, plan_ref: Any, shard: Shard, attempt: int) -> Call:
        assert isinstance(spec_ref, Ref) and isinstance(plan_ref, Ref), "attempts send what `put` returned"
        t = Try(plan_ref.value.job_id, shard.index, attempt, self.id)
        action = "lose" if self.dead else self.pool.script(t)
        result: asyncio.Future[AttemptResult] = asyncio.get_running_loop().create_future()
        self.running[result] = t
        self.pool.started.append(t)
        self.pool.count(t.job, +1)
        result.add_done_callback(lambda _: (self.running.pop(result, None), self.pool.count(t.job, -1)))
        task = asyncio.ensure_future(self._run(t, action, result))

        def cancel() -> None:
            if result.done():
                return
            self.pool.cancels.append(t)
            if action != "stubborn":
                task.cancel()
                result.set_result(Cancelled())

        return Call(result, cancel)

    async def _run(self, t: Try, action: str, result: asyncio.Future[AttemptResult]) -> None:
        await asyncio.sleep(0)  # a remote call returns on a later turn of the loop
        if result.done():  # the worker died meanwhile
            return
        if action == "ok":
            result.set_result(Succeeded(self.pool.store.commit(t)))
        elif action == "fail":
            result.set_result(Failed("attempt_failed", ShardError(f"injected failure on shard {t.shard}")))
        elif action in ("lose", "commit_then_lose"):
            if action == "commit_then_lose":
                self.pool.store.commit(t)
            self.die()
        elif action == "zombie":
            self.die()
            await self.pool.store.landed[(t.job, t.shard)].wait()
            self.pool.late.append(self.pool.store.commit(t))
        else:  # hang, stubborn
            await asyncio.Event().wait()

    def die(self) -> None:
        """As a dead actor: every attempt under way on it, and every later one, reports worker_lost."""
        self.dead = True
        for result in list(self.running):
            if not result.done():
                result.set_result(Failed("worker_lost", ConnectionError(f"worker {self.id} lost")))

    async def counts(self) -> WorkerCounts:
        return WorkerCounts({"A": {"completion_tokens": 5}}, {"retries": 1})


class FakePool:
    """Hands out fake workers' handles and replaces a lost worker (unless `room` is False)."""

    def __init__(self, workers: int = 2, in_flight: int = 1, script: Script = lambda t: "ok"):
        self.resources = Resources(workers=workers, gpus_per_worker=0.0, cpus_per_worker=0.0,
                                   shards_in_flight=in_flight)
        self.script, self.store = script, FakeStore()
        self.workers: dict[int, FakeWorker] = {}
        self.unplaced: set[asyncio.Task[Any]] = set()
        self.room = True
        self.puts: list[Any] = []
        self.started: list[Try] = []
        self.cancels: list[Try] = []
        self.late: list[CommitOutcome] = []  # commits of zombie attempts, which nobody waits for
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._ids = itertools.count()
        for _ in range(workers):
            self._new()

    def _new(self) -> FakeWorker:
        worker = FakeWorker(self, next(self._ids))
        self.workers[worker.id] = worker
        return worker

    async def add(self) -> FakeWorker:
        await asyncio.sleep(0)
        if not self.room:
            raise RuntimeError("no room for a worker")
        return self._new()

    def remove(self, worker_id: int) -> None:
        worker = self.workers.pop(worker_id, None)
        if worker is not None:
            worker.die()

    def handle(self, worker_id: int) -> FakeWorker:
        return self.workers[worker_id]

    def put(self, value: Any) -> Ref:
        self.puts.append(value)
        return Ref(value)

    def drain_counts(self) -> Awaitable[WorkerCounts]:
        return drained([w.counts() for w in self.workers.values()])

    def count(self, job: str, step: int) -> None:
        self.in_flight[job] = self.in_flight.get(job, 0) + step
        self.peak[job] = max(self.peak.get(job, 0), self.in_flight[job])

    def tries(self, job: str, shard: int) -> list[tuple[int, int]]:
        """(attempt, worker) of every attempt of one shard, in order."""
        return [(t.attempt, t.worker) for t in self.started if (t.job, t.shard) == (job, shard)]


class Job:
    """A JobRun of `shards` one-row shards, with what its callbacks were told."""

    def __init__(self, name: str, shards: int, max_attempts: int = 3):
        self.spec: JobSpec = make_spec(resources={"max_attempts": max_attempts})
        self.plan = Plan(name, f"hash-{name}", shards, 1)
        self.done: list[tuple[int, CommitOutcome | None]] = []
        self.retries: list[str] = []
        self.run = JobRun(self.spec, self.plan, self.plan.shards(), self._done, self.retries.append)

    def _done(self, shard: Shard, outcome: CommitOutcome | None) -> None:
        self.done.append((shard.index, outcome))

    def outcome(self, shard: int) -> CommitOutcome | None:
        (outcome,) = [o for i, o in self.done if i == shard]
        return outcome

    @property
    def indices(self) -> list[int]:
        return sorted(i for i, _ in self.done)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "RETRY_BACKOFF_S", 0.0)


@asynccontextmanager
async def dispatching(pool: FakePool, **kwargs: Any) -> AsyncIterator[PoolDispatcher]:
    dispatcher = PoolDispatcher(pool, **kwargs)
    loop = asyncio.ensure_future(dispatcher.run())
    try:
        yield dispatcher
    finally:
        dispatcher.close()
        await asyncio.wait_for(loop, 1)  # a loop that does not end (an attempt never let go) fails the test


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0)


@on_loop
async def test_a_shard_on_a_lost_worker_is_retried_on_another_and_every_shard_is_done_once() -> None:
    pool = FakePool(workers=2, in_flight=2, script=first_on_worker_0("lose"))
    job = Job("A", 8)
    async with dispatching(pool) as d:
        report = await d.submit(job.run).finished
    assert job.indices == list(range(8))
    assert all(o is not None and o.won for _, o in job.done)
    # Shards 0 and 1 were under way on worker 0 when it died: both ran again elsewhere.
    assert pool.store.commits == {("A", i): 2 if i < 2 else 1 for i in range(8)}
    for shard in (0, 1):
        (first, second) = pool.tries("A", shard)
        assert first == (1, 0) and second[0] == 2 and second[1] != 0
    assert (report.retries, report.workers_replaced, report.failed, report.cancelled) == (2, 1, [], False)
    assert job.retries == ["worker_lost", "worker_lost"]
    assert sorted(pool.workers) == [1, 2]  # worker 0 replaced once, by worker 2
    assert pool.puts == [job.spec, job.plan]  # the job's payload stored once, not per attempt


@on_loop
async def test_a_zombie_attempt_finishing_after_the_retry_loses_its_commit() -> None:
    pool = FakePool(workers=2, script=first_on_worker_0("zombie"))
    job = Job("A", 4)
    async with dispatching(pool) as d:
        report = await d.submit(job.run).finished
    await until(lambda: bool(pool.late))
    assert job.indices == [0, 1, 2, 3]
    retried = job.outcome(0)
    assert retried is not None and retried.won and retried.stats.attempt == 2
    assert [(o.stats.index, o.stats.attempt, o.won) for o in pool.late] == [(0, 1, False)]
    assert pool.store.commits[("A", 0)] == 2
    assert (report.retries, report.workers_replaced) == (1, 1)


@on_loop
async def test_a_retry_of_a_shard_its_lost_attempt_had_committed_loses_and_the_shard_counts_once() -> None:
    pool = FakePool(workers=2, script=first_on_worker_0("commit_then_lose"))
    job = Job("A", 4)
    async with dispatching(pool) as d:
        report = await d.submit(job.run).finished
    assert job.indices == [0, 1, 2, 3]
    retried = job.outcome(0)  # on_done hears of shard 0 once, from the retry that lost
    assert retried is not None and not retried.won and retried.stats.attempt == 2
    assert pool.store.commits[("A", 0)] == 1  # the lost attempt's commit stands
    assert all(o is not None and o.won for i, o in job.done if i != 0)
    assert report.retries == 1 and job.retries == ["worker_lost"]


@on_loop
async def test_two_jobs_on_one_pool_take_its_slots_in_turn() -> None:
    pool = FakePool(workers=1, in_flight=2)
    a, b = Job("A", 4), Job("B", 4)
    async with dispatching(pool) as d:
        d.submit(a.run)
        d.submit(b.run)
        await asyncio.gather(a.run.finished, b.run.finished)
    assert [(t.job, t.shard) for t in pool.started] == [(j, i) for i in range(4) for j in "AB"]
    assert pool.peak == {"A": 1, "B": 1}  # two slots: one each, never both to one job
    assert a.indices == b.indices == [0, 1, 2, 3]
    assert pool.puts == [a.spec, a.plan, b.spec, b.plan]


@on_loop
async def test_a_cancelled_job_stops_its_attempts_and_gets_no_more_while_the_other_job_goes_on() -> None:
    pool = FakePool(workers=1, in_flight=2, script=lambda t: "hang" if t.job == "A" else "ok")
    a, b = Job("A", 4), Job("B", 4)
    async with dispatching(pool) as d:
        d.submit(a.run)
        d.submit(b.run)
        await until(lambda: len(pool.started) == 3)  # A0 and A1 hang in both slots; B0 is done
        for _ in range(10):
            await asyncio.sleep(0)
        assert [(t.job, t.shard) for t in pool.started] == [("A", 0), ("B", 0), ("A", 1)]
        d.cancel(a.run)
        report_a = await a.run.finished
        report_b = await b.run.finished
        assert a.run not in d.runs
    assert (report_a.cancelled, report_a.failed, report_a.retries) == (True, [], 0)
    assert sorted((t.job, t.shard) for t in pool.cancels) == [("A", 0), ("A", 1)]
    assert [(t.job, t.shard) for t in pool.started] == [("A", 0), ("B", 0), ("A", 1), ("B", 1), ("B", 2), ("B", 3)]
    assert a.done == [] and not pool.store.commits.keys() & {("A", 0), ("A", 1)}
    assert b.indices == [0, 1, 2, 3] and not report_b.cancelled


@on_loop
async def test_an_attempt_that_ignores_its_cancel_is_abandoned_after_the_grace_period(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "CANCEL_GRACE_S", 0.01)
    pool = FakePool(workers=1, script=lambda t: "stubborn")
    job = Job("A", 2)
    async with dispatching(pool) as d:
        d.submit(job.run)
        await until(lambda: len(pool.started) == 1)
        d.cancel(job.run)
        report = await job.run.finished
        assert report.cancelled and d.load == {0: 0} and job.run.in_flight == 0
    assert [(t.shard, t.attempt) for t in pool.cancels] == [(0, 1)] and len(pool.started) == 1


@on_loop
async def test_a_shard_failing_every_attempt_ends_in_failed_after_max_attempts() -> None:
    pool = FakePool(workers=2, script=lambda t: "fail" if t.shard == 2 else "ok")
    job = Job("A", 4, max_attempts=3)
    async with dispatching(pool) as d:
        report = await d.submit(job.run).finished
    assert report.failed == [2]
    assert report.last_error == "ShardError: injected failure on shard 2"
    assert (report.retries, report.workers_replaced, report.cancelled) == (2, 0, False)
    assert job.retries == ["attempt_failed"] * 2
    tries = pool.tries("A", 2)
    assert [n for n, _ in tries] == [1, 2, 3]
    assert all(w1 != w2 for (_, w1), (_, w2) in itertools.pairwise(tries))  # each retry on the other worker
    assert job.indices == [0, 1, 3] and sorted(pool.workers) == [0, 1]


@on_loop
async def test_losing_the_last_worker_with_no_room_for_another_fails_the_job() -> None:
    pool = FakePool(workers=1, script=lambda t: "lose")
    pool.room = False
    job = Job("A", 3)
    async with dispatching(pool) as d:
        with pytest.raises(JobFailedError, match=r"no live workers left \(the last replacement: "
                           r"RuntimeError: no room for a worker\)"):
            await d.submit(job.run).finished
    assert job.run.report.cancelled and job.run.report.workers_replaced == 1 and job.done == []


@on_loop
async def test_the_counts_of_every_worker_reach_on_counts_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "COUNTS_POLL_S", 0.0)
    pool = FakePool(workers=2, script=lambda t: "hang")
    seen: list[WorkerCounts] = []
    job = Job("A", 2)
    async with dispatching(pool, on_counts=seen.append) as d:
        d.submit(job.run)
        await until(lambda: bool(seen))
        d.cancel(job.run)
        await job.run.finished
    assert seen[0] == WorkerCounts({"A": {"completion_tokens": 10}}, {"retries": 2})


def test_ray_failures_map_to_typed_results() -> None:
    dead, shard, lost = EngineDeadError("engine died"), ShardError("bad row"), RayActorError()
    assert classify(RayTaskError("process", "tb", dead).as_instanceof_cause()) == Failed("engine_dead", dead)
    assert classify(RayTaskError("process", "tb", shard).as_instanceof_cause()) == Failed("attempt_failed", shard)
    assert classify(dead) == Failed("engine_dead", dead) and classify(shard) == Failed("attempt_failed", shard)
    assert classify(lost) == Failed("worker_lost", lost) and classify(TaskCancelledError()) == Cancelled()
    assert not Failed("attempt_failed", shard).worker_gone and Failed("engine_dead", dead).worker_gone


@on_loop
async def test_a_thousand_workers_two_jobs_and_failures_every_shard_once() -> None:
    """The dispatcher at fleet scale: 1,000 workers with 3 attempts each in flight, two jobs sharing
    them, first attempts of planted shards failing; every shard commits once, each failure once retried."""
    failing = {("A", i) for i in range(0, 4000, 97)} | {("B", i) for i in range(5, 4000, 89)}
    pool = FakePool(workers=1000, in_flight=3,
                    script=lambda t: "fail" if (t.job, t.shard) in failing and t.attempt == 1 else "ok")
    a, b = Job("A", 4000), Job("B", 4000)
    async with dispatching(pool) as d:
        d.submit(a.run), d.submit(b.run)
        reports = await asyncio.gather(a.run.finished, b.run.finished)
    assert a.indices == b.indices == list(range(4000))
    assert pool.store.commits == {(j, i): 2 if (j, i) in failing else 1 for j in "AB" for i in range(4000)}
    assert [r.retries for r in reports] == [len([k for k in failing if k[0] == j]) for j in "AB"]
    assert min(pool.peak.values()) >= 1000  # both jobs had a share of the pool at once
    retried = [(t.job, t.shard) for t in pool.started if t.attempt == 2]
    assert sorted(retried) == sorted(failing)


@on_loop
async def test_a_failing_counts_callback_never_stops_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "COUNTS_POLL_S", 0.0)
    pool = FakePool(workers=2)
    job, calls = Job("A", 50), []

    def broken(counts: WorkerCounts) -> None:
        calls.append(counts)
        raise ValueError("an exporter with the wrong labels")

    async with dispatching(pool, on_counts=broken) as d:
        await d.submit(job.run).finished
    assert calls and job.indices == list(range(50))
