"""A worker's side of dispatch: attempts arrive in batches, their results leave in batches.

One Ray call per shard costs the coordinator about a millisecond of CPU whatever it carries, which
caps a coordinator near a thousand shards a second. So the coordinator's `Channel`
(orchestrator/run/channel.py) sends a worker every attempt it assigned it in one loop turn as one
`step` call, and a `step` returns every result finished by then: the busier the fleet, the more a
call carries. A step waits until at least one attempt has finished, so while attempts run one call
is always waiting for their results (the channel keeps one out), and no attempt's result waits on
another attempt: results leave as they finish, never a batch at a time.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ray import cloudpickle

from orchestrator import defaults
from orchestrator.plan.planner import Plan, Shard
from orchestrator.run.handles import AttemptResult, Cancelled, Failed, Succeeded, classify
from orchestrator.spec.job import JobSpec


@dataclass(frozen=True)
class Work:
    """Attempt `attempt` of `shard` of the job `job` (a key into the step's `jobs`); `key` is the
    coordinator's name for this attempt, which its result carries back."""

    key: int
    job: str
    shard: Shard
    attempt: int


Results = list[tuple[int, AttemptResult]]
Run = Callable[[JobSpec, Plan, Shard, int], Awaitable[Any]]


class Jobs:
    """The specs and plans a worker's attempts read, fetched once per job from the references the
    coordinator stored them under (the most recent `size` jobs are kept)."""

    def __init__(self, size: int = 64):
        self.size = size
        self._items: OrderedDict[str, asyncio.Future[tuple[JobSpec, Plan]]] = OrderedDict()

    async def get(self, key: str, refs: tuple[Any, Any]) -> tuple[JobSpec, Plan]:
        fetch = self._items.get(key)
        if fetch is None or (fetch.done() and fetch.exception() is not None):  # a failed fetch is tried again
            fetch = self._items[key] = asyncio.ensure_future(self._fetch(refs))
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        return await asyncio.shield(fetch)  # one attempt cancelled never cancels the others' fetch

    @staticmethod
    async def _fetch(refs: tuple[Any, Any]) -> tuple[JobSpec, Plan]:
        return await refs[0], await refs[1]


def sendable(result: AttemptResult) -> AttemptResult:
    """`result` as it can cross to the coordinator: an error that does not pickle becomes its text."""
    if isinstance(result, Failed):
        try:
            cloudpickle.dumps(result.error)
        except Exception:  # noqa: BLE001 - any error an engine raised: keep its name and message
            return Failed(result.reason, RuntimeError(f"{type(result.error).__name__}: {result.error}"))
    return result


class Inboxes:
    """An engine's inboxes, one per coordinator session (`Channel._open`): a session's results go only
    to its own steps, so a coordinator gone with attempts under way never takes a later one's."""

    def __init__(self, jobs: Jobs, linger_s: float = defaults.STEP_LINGER_S):
        self.jobs, self.linger_s = jobs, linger_s
        self._sessions: dict[str, Inbox] = {}

    async def step(self, session: str, jobs: dict[str, tuple[Any, Any]], work: list[Work], cancels: list[int],
                   run: Run) -> Results:
        inbox = self._sessions.get(session) or self._sessions.setdefault(session, Inbox(self.jobs, self.linger_s))
        try:
            return await inbox.step(jobs, work, cancels, run)
        finally:
            if inbox.idle:
                self._sessions.pop(session, None)


class Inbox:
    """The attempts of one session under way on one engine and the results not yet collected."""

    def __init__(self, jobs: Jobs, linger_s: float = defaults.STEP_LINGER_S):
        self.jobs, self.linger_s = jobs, linger_s
        self.running: dict[int, asyncio.Task[Any]] = {}
        self.done: Results = []
        self._changed = asyncio.Event()
        self._waiters = 0  # steps waiting for results

    @property
    def idle(self) -> bool:
        return not (self.running or self.done or self._waiters)

    async def step(self, jobs: dict[str, tuple[Any, Any]], work: list[Work], cancels: list[int], run: Run) -> Results:
        """Start `work` with `run`, stop the attempts in `cancels`, and return the results finished
        (waiting for one unless this step carried work or cancels while another waits, or nothing runs)."""
        for w in work:
            self._start(w.key, self._attempt(jobs[w.job], w, run))
        for key in cancels:
            task = self.running.get(key)
            if task is not None:
                task.cancel()
        if self._waiters and (work or cancels):
            return self._take()
        self._waiters += 1
        try:
            while True:
                while not self.done and self.running:
                    self._changed.clear()
                    await self._changed.wait()
                # a moment for attempts finishing together to leave in this call, not one call each
                await asyncio.sleep(self.linger_s if self.running else 0)
                if self.done or not self.running:  # another step may have taken them meanwhile
                    return self._take()
        finally:
            self._waiters -= 1

    async def _attempt(self, refs: tuple[Any, Any], w: Work, run: Run) -> Any:
        spec, plan = await self.jobs.get(w.job, refs)
        return await run(spec, plan, w.shard, w.attempt)

    def _start(self, key: int, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.running[key] = task
        task.add_done_callback(lambda t: self._finish(key, t))

    def _finish(self, key: int, task: asyncio.Task[Any]) -> None:
        self.running.pop(key, None)
        if task.cancelled():
            result: AttemptResult = Cancelled()
        elif (error := task.exception()) is not None:
            result = sendable(classify(error))
        else:
            result = Succeeded(task.result())
        self.done.append((key, result))
        self._changed.set()

    def _take(self) -> Results:
        taken, self.done = self.done, []
        return taken
