"""Dispatch shards of one or more jobs to a pool of warm workers.

Several shards stay in flight per worker so the engine never drains; concurrent jobs on the same
pool take slots in turn (fair share); a failed attempt is retried on another worker with backoff,
up to the job's limit; a dead worker is replaced. Plans stream in: only in-flight and retrying
shards are held in memory. The pool's worker handles (`handles`) are the only way out to the
workers, so this loop runs the same on Ray and on in-memory fakes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from orchestrator import defaults
from orchestrator.commit.shards import CommitOutcome
from orchestrator.errors import JobFailedError
from orchestrator.plan.planner import Plan, Shard
from orchestrator.run.handles import Call, Cancelled, Failed, Pool, Succeeded, WorkerHandle
from orchestrator.spec.job import JobSpec
from workers.shard import WorkerCounts

log = logging.getLogger(__name__)

OnDone = Callable[[Shard, CommitOutcome | None], None]
OnCounts = Callable[[WorkerCounts], None]


@dataclass
class Attempt:
    shard: Shard
    number: int = 1
    avoid: int | None = None  # the worker it last failed on


@dataclass
class DispatchReport:
    failed: list[int] = field(default_factory=list)
    last_error: str = ""  # of the last shard that failed every attempt
    retries: int = 0
    workers_replaced: int = 0
    cancelled: bool = False


class JobRun:
    """One job's share of a pool: its shard stream, retries, in-flight attempts and outcome."""

    def __init__(self, spec: JobSpec, plan: Plan, todo: Iterator[Shard], on_done: OnDone,
                 on_retry: Callable[[str], None] | None = None):
        self.spec, self.plan, self.todo, self.on_done, self.on_retry = spec, plan, todo, on_done, on_retry
        self.retry_queue: deque[Attempt] = deque()
        self.in_flight = self.timers = 0
        self.exhausted = self.cancelled = False
        self.report = DispatchReport()
        self.error: BaseException | None = None
        self.finished: asyncio.Future[DispatchReport] = asyncio.get_running_loop().create_future()
        self.refs: tuple[Any, Any] = (None, None)  # the spec and plan as the pool stored them, set on submit

    def next_attempt(self, worker_id: int, workers: int) -> Attempt | None:
        if self.cancelled:
            return None
        for i, attempt in enumerate(self.retry_queue):
            if attempt.avoid != worker_id or workers == 1:
                del self.retry_queue[i]
                return attempt
        if self.exhausted:
            return None
        shard = next(self.todo, None)
        if shard is None:
            self.exhausted = True
            return None
        return Attempt(shard)

    @property
    def drained(self) -> bool:
        idle = self.in_flight == 0 and self.timers == 0
        return idle and (self.cancelled or (self.exhausted and not self.retry_queue))


# What a pending future of the loop means once it is done:


@dataclass
class AttemptDone:
    """An attempt of `run` on worker `worker_id` returned (its future gives the AttemptResult)."""

    run: JobRun
    attempt: Attempt
    worker_id: int
    call: Call  # to cancel it while it runs


@dataclass
class RetryDue:
    """The backoff before `attempt` (a retry of `run`) is over: it may be dispatched."""

    run: JobRun
    attempt: Attempt


@dataclass
class GraceOver:
    """A cancelled `run` has waited long enough for its attempts to stop."""

    run: JobRun


@dataclass
class WorkerStarted:
    """A replacement for worker `replaces` started, or failed to (its future says which)."""

    replaces: int


@dataclass
class CountsDue:
    """The workers' counts were collected (its future gives them merged)."""


Event = AttemptDone | RetryDue | GraceOver | WorkerStarted | CountsDue


class PoolDispatcher:
    """The scheduling loop of one pool; jobs join with `submit` and leave when drained.

    Its cost per finished attempt does not grow with the pool: each pending future reports itself done
    (a callback into `_ready`) instead of the loop waiting on all of them, and only workers with a
    free slot (`_hungry`) are offered work.
    """

    def __init__(self, pool: Pool, on_counts: OnCounts | None = None):
        self.pool, self.on_counts = pool, on_counts
        self.runs: list[JobRun] = []
        self.events: dict[asyncio.Future[Any], Event] = {}
        self.load: dict[int, int] = {}
        self._kinds: Counter[type] = Counter()  # pending events by kind
        self._ready: deque[asyncio.Future[Any]] = deque()  # done futures, in the order they finished
        self._hungry: dict[int, None] = {}  # workers that may have a free slot (an ordered set)
        self._size = -1  # the pool's size when all its workers were last offered work
        self._turn = itertools.count()
        self._wake = asyncio.Event()
        self._closed = False
        self._unpolled = False  # shards finished since the last poll was scheduled
        self._start_error = ""  # why the last replacement worker did not start

    def submit(self, run: JobRun) -> JobRun:
        run.refs = (self.pool.put(run.spec), self.pool.put(run.plan))
        self.runs.append(run)
        self._offer_all()
        self._wake.set()
        return run

    def wake(self) -> None:
        """Look at the pool again (it grew): its new workers are offered work."""
        self._wake.set()

    def _offer_all(self) -> None:
        """Offer work to every worker again: a job joined, a retry is due, the pool changed size."""
        self._hungry.update(dict.fromkeys(self.pool.workers))

    def _track(self, fut: asyncio.Future[Any], event: Event) -> None:
        self.events[fut] = event
        self._kinds[type(event)] += 1
        fut.add_done_callback(self._finished)

    def _untrack(self, fut: asyncio.Future[Any]) -> Event | None:
        event = self.events.pop(fut, None)
        if event is not None:
            self._kinds[type(event)] -= 1
        return event

    def _finished(self, fut: asyncio.Future[Any]) -> None:
        self._ready.append(fut)
        self._wake.set()

    def _pending(self, *kinds: type[Event]) -> bool:
        return any(self._kinds[k] > 0 for k in kinds)

    def cancel(self, run: JobRun, error: BaseException | None = None) -> None:
        """Stop dispatching `run`, abort its running attempts; committed shards stay."""
        run.cancelled, run.report.cancelled = True, True
        run.error = run.error or error
        run.retry_queue.clear()
        for event in list(self.events.values()):
            if isinstance(event, AttemptDone) and event.run is run:
                event.call.cancel()
        self._track(asyncio.ensure_future(asyncio.sleep(defaults.CANCEL_GRACE_S)), GraceOver(run))
        self._wake.set()

    def _abandon(self, run: JobRun) -> None:
        """After the grace period, stop waiting for a cancelled job's attempts that did not stop
        (a hung worker): a late commit of theirs is still exactly once."""
        for fut, event in list(self.events.items()):
            if isinstance(event, AttemptDone) and event.run is run:
                self._untrack(fut)
                self.load[event.worker_id] -= 1
                self._hungry[event.worker_id] = None
                run.in_flight -= 1

    def close(self) -> None:
        self._closed = True
        for run in self.runs:
            self.cancel(run)
        self._wake.set()

    @property
    def busy(self) -> bool:
        return bool(self.runs)

    def _pick(self, wid: int) -> tuple[JobRun, Attempt] | None:
        start = next(self._turn)
        for k in range(len(self.runs)):
            run = self.runs[(start + k) % len(self.runs)]
            attempt = run.next_attempt(wid, len(self.pool.workers))
            if attempt is not None:
                return run, attempt
        return None

    def _fill(self) -> None:
        """Give each worker with a free slot attempts until it is full or no job has one for it."""
        per_worker = self.pool.resources.shards_in_flight
        if len(self.pool.workers) != self._size:  # the pool grew (a lease, a replacement) or shrank
            self._size = len(self.pool.workers)
            self._offer_all()
        for wid in list(self._hungry):
            if not self.runs:
                return
            if wid not in self.pool.workers:
                del self._hungry[wid]
                continue
            handle: WorkerHandle | None = None
            while self.load.get(wid, 0) < per_worker:
                picked = self._pick(wid)
                if picked is None:
                    break
                run, attempt = picked
                handle = handle or self.pool.handle(wid)
                spec_ref, plan_ref = run.refs
                call = handle.process(spec_ref, plan_ref, attempt.shard, attempt.number)
                self._track(call.result, AttemptDone(run, attempt, wid, call))
                self.load[wid] = self.load.get(wid, 0) + 1
                run.in_flight += 1
            if self.load.get(wid, 0) >= per_worker:
                del self._hungry[wid]
            elif not any(run.retry_queue for run in self.runs):
                return  # no job has an attempt left for any worker (retries are the only per-worker work)

    def _retry(self, run: JobRun, attempt: Attempt, wid: int, error: BaseException, reason: str) -> None:
        if run.cancelled:
            return
        if attempt.number >= run.spec.resources.max_attempts:
            log.error("%s: shard %d failed after %d attempts: %s", run.plan.job_id, attempt.shard.index,
                      attempt.number, error)
            run.report.failed.append(attempt.shard.index)
            run.report.last_error = f"{type(error).__name__}: {error}"[: defaults.ERROR_MESSAGE_MAX_CHARS]
            return
        run.report.retries += 1
        if run.on_retry is not None:
            run.on_retry(reason)
        log.warning("%s: shard %d attempt %d failed (%s); retrying", run.plan.job_id, attempt.shard.index,
                    attempt.number, error)
        delay = min(defaults.RETRY_BACKOFF_S * 2 ** (attempt.number - 1), defaults.RETRY_BACKOFF_MAX_S)
        retry = Attempt(attempt.shard, attempt.number + 1, wid)
        self._track(asyncio.ensure_future(asyncio.sleep(delay)), RetryDue(run, retry))
        run.timers += 1

    def _replace(self, wid: int, run: JobRun) -> None:
        if wid in self.pool.workers:
            self.pool.remove(wid)
            run.report.workers_replaced += 1
            self._track(asyncio.ensure_future(self.pool.add()), WorkerStarted(wid))

    def _on_attempt(self, done: AttemptDone, fut: asyncio.Future[Any]) -> None:
        run, attempt, wid = done.run, done.attempt, done.worker_id
        self._unpolled = True
        self.load[wid] -= 1
        self._hungry[wid] = None
        run.in_flight -= 1
        match fut.result():
            case Succeeded(outcome):
                try:
                    run.on_done(attempt.shard, outcome)
                except Exception as e:  # noqa: BLE001 - the job's own callback asked to stop
                    self.cancel(run, e)
            case Failed() as failed:
                if failed.worker_gone:
                    self._replace(wid, run)
                self._retry(run, attempt, wid, failed.error, failed.reason)
            case Cancelled():
                pass

    def _handle(self, fut: asyncio.Future[Any]) -> None:
        event = self._untrack(fut)  # None: abandoned (GraceOver), or cancelled as the loop ended
        match event:
            case AttemptDone():
                self._on_attempt(event, fut)
            case RetryDue(run, attempt):
                run.timers -= 1
                if not run.cancelled:
                    run.retry_queue.append(attempt)
                    self._offer_all()
            case GraceOver(run):
                self._abandon(run)
            case WorkerStarted() if not fut.cancelled() and fut.exception() is not None:
                self._start_error = f"{type(fut.exception()).__name__}: {fut.exception()}"
                log.error("a replacement worker failed to start: %s", self._start_error)
            case CountsDue() if self.on_counts is not None and fut.exception() is None:
                try:
                    self.on_counts(fut.result())
                except Exception:  # metrics are best effort: a failing exporter never stops dispatch
                    log.exception("the workers' counts could not be recorded")

    def _settle(self) -> None:
        stuck = not self.pool.workers and not self._pending(WorkerStarted)
        for run in list(self.runs):
            if stuck and not run.drained:
                cause = f" (the last replacement: {self._start_error})" if self._start_error else ""
                self.cancel(run, JobFailedError(f"no live workers left{cause}; committed shards are kept: run "
                                                "the same spec again once the cluster has room", []))
            if run.drained:
                self.runs.remove(run)
                if run.finished.done():  # its waiter was cancelled (Ctrl-C, SIGTERM, service stop)
                    continue
                if run.error is not None:
                    run.finished.set_exception(run.error)
                else:
                    run.finished.set_result(run.report)

    def _poll(self) -> None:
        """Collect worker-side counts (tokens, rows) so metrics follow generation, not commits."""
        if self.on_counts is None or self._pending(CountsDue):
            return
        self._unpolled = False

        async def drain() -> WorkerCounts:
            await asyncio.sleep(defaults.COUNTS_POLL_S)
            return await self.pool.drain_counts()

        self._track(asyncio.ensure_future(drain()), CountsDue())

    def _drop_unplaced(self) -> None:
        """Once closed with no job left, stop waiting for replacements Ray has not placed (one may never
        be: its node is gone and no other has room); those already loading their engine complete."""
        if self._closed and not self.runs:
            for fut, event in self.events.items():
                if isinstance(event, WorkerStarted) and fut in self.pool.unplaced:
                    fut.cancel()

    async def run(self) -> None:
        """Run until closed and idle; a worker replacement placed and loading completes first."""
        while not (self._closed and not self.runs and not self._pending(AttemptDone, WorkerStarted)):
            self._drop_unplaced()
            self._fill()
            self._settle()  # filling is what finds a job's stream exhausted
            if self.runs or self._unpolled:
                self._poll()
            if not self._ready:
                self._wake.clear()
                await self._wake.wait()
            while self._ready:
                self._handle(self._ready.popleft())
            self._settle()
        for fut in self.events:
            fut.cancel()
