"""Dispatch shards to a worker pool: several in flight per worker, bounded retries elsewhere,
dead workers replaced. The plan streams in: only in-flight and retrying shards are held."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from orchestrator import defaults
from orchestrator.commit import CommitOutcome
from orchestrator.errors import EngineDeadError
from orchestrator.planner import Plan, Shard
from orchestrator.pool import WorkerPool
from orchestrator.spec import JobSpec

log = logging.getLogger(__name__)


@dataclass
class Attempt:
    shard: Shard
    number: int = 1
    avoid: int | None = None  # the worker it last failed on


@dataclass
class DispatchReport:
    failed: list[int] = field(default_factory=list)
    retries: int = 0
    workers_replaced: int = 0


OnDone = Callable[[Shard, CommitOutcome | None], None]


class Dispatcher:
    def __init__(self, spec: JobSpec, plan: Plan, pool: WorkerPool, todo: Iterator[Shard], on_done: OnDone):
        self.spec, self.plan, self.pool, self.on_done = spec, plan, pool, on_done
        self.todo, self.retry_queue = todo, deque[Attempt]()
        self.in_flight: dict[asyncio.Future[Any], tuple[str, Any]] = {}
        self.load: dict[int, int] = {}
        self.report = DispatchReport()
        self.refs: dict[asyncio.Future[Any], ray.ObjectRef] = {}
        self._exhausted = False

    def _next(self, worker_id: int) -> Attempt | None:
        for i, attempt in enumerate(self.retry_queue):
            if attempt.avoid != worker_id or len(self.pool.workers) == 1:
                del self.retry_queue[i]
                return attempt
        if self._exhausted:
            return None
        shard = next(self.todo, None)
        if shard is None:
            self._exhausted = True
            return None
        return Attempt(shard)

    def _fill(self, spec_ref: Any, plan_ref: Any) -> None:
        per_worker = self.spec.resources.shards_in_flight
        for wid, worker in list(self.pool.workers.items()):
            while self.load.get(wid, 0) < per_worker:
                attempt = self._next(wid)
                if attempt is None:
                    break
                ref = worker.actor.process.remote(spec_ref, plan_ref, attempt.shard, attempt.number)
                fut = asyncio.wrap_future(ref.future())
                self.in_flight[fut] = ("shard", (attempt, wid))
                self.refs[fut] = ref
                self.load[wid] = self.load.get(wid, 0) + 1

    def _retry(self, attempt: Attempt, wid: int, error: BaseException) -> None:
        if attempt.number >= self.spec.resources.max_attempts:
            log.error("shard %d failed after %d attempts: %s", attempt.shard.index, attempt.number, error)
            self.report.failed.append(attempt.shard.index)
            return
        self.report.retries += 1
        log.warning("shard %d attempt %d failed (%s); retrying", attempt.shard.index, attempt.number, error)
        delay = min(defaults.RETRY_BACKOFF_S * 2 ** (attempt.number - 1), defaults.RETRY_BACKOFF_MAX_S)
        retry = Attempt(attempt.shard, attempt.number + 1, wid)
        fut = asyncio.ensure_future(asyncio.sleep(delay, retry))
        self.in_flight[fut] = ("retry", retry)

    def _replace(self, wid: int) -> None:
        if wid in self.pool.workers:
            self.pool.remove(wid)
            self.report.workers_replaced += 1
            fut = asyncio.ensure_future(self.pool.add())
            self.in_flight[fut] = ("worker", wid)

    def _handle(self, fut: asyncio.Future[Any]) -> None:
        kind, payload = self.in_flight.pop(fut)
        self.refs.pop(fut, None)
        if kind == "retry":
            self.retry_queue.append(payload)
            return
        if kind == "worker":
            if fut.exception() is not None:
                log.error("a replacement worker failed to start: %s", fut.exception())
            return
        attempt, wid = payload
        self.load[wid] -= 1
        error = fut.exception()
        if error is None:
            self.on_done(attempt.shard, fut.result())
            return
        cause = error.cause if isinstance(error, RayTaskError) else error
        if isinstance(error, RayActorError) or isinstance(cause, EngineDeadError):
            self._replace(wid)
        self._retry(attempt, wid, cause or error)

    async def run(self) -> DispatchReport:
        spec_ref, plan_ref = ray.put(self.spec), ray.put(self.plan)
        try:
            while True:
                self._fill(spec_ref, plan_ref)
                if not self.in_flight:
                    if self.retry_queue:
                        raise RuntimeError("no live workers left to retry shards on")
                    return self.report
                done, _ = await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    self._handle(fut)
        finally:
            await self._cancel_in_flight()

    async def _cancel_in_flight(self) -> None:
        """Abort running attempts and wait until they have stopped (a commit under way finishes),
        so that when dispatch returns nothing of this job is still running anywhere."""
        for ref in self.refs.values():
            ray.cancel(ref)
        shards = [f for f in self.refs if not f.done()]
        if shards:
            await asyncio.wait(shards, timeout=defaults.CANCEL_GRACE_S)
        for fut in self.in_flight:
            fut.cancel()
