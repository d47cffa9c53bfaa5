"""The coordinator's side of one worker: attempts as the dispatcher starts them, Ray calls in batches.

The dispatcher starts attempts one at a time (`process`, the `WorkerHandle` interface); a `Channel`
sends all those a loop turn gave its worker as one `step` call (workers/inbox.py), with the
cancels of that turn, and resolves each attempt's future from the results a call brings back.
While attempts run, one call is always out to collect them; when it fails (the actor died) every
attempt under way on the worker gets that failure, as separate calls each would have.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable
from typing import Any

from orchestrator.plan.planner import Shard
from orchestrator.run.handles import AttemptResult, Call, Cancelled, classify
from workers.inbox import Results, Work

# step(session, jobs, work, cancels) -> the Ray reference of its result
Send = Callable[[str, dict[str, tuple[Any, Any]], list[Work], list[int]], Any]

_keys = itertools.count()


def job_key(spec_ref: Any, plan_ref: Any) -> str:
    """The name a worker caches a job's spec and plan under: their references' ids."""
    return f"{spec_ref.hex()}:{plan_ref.hex()}"


class Channel:
    """One worker's `WorkerHandle`: `process` queues an attempt, the next loop turn sends the queue."""

    def __init__(self, send: Send):
        self.send = send
        self.sent = 0  # steps ever sent (a test's window into batching)
        self._open(None)

    def _open(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """A session on `loop`: a pool outlives a service (given pools, `Client.local`), and what an
        earlier loop left (steps out, a flush scheduled, attempts it waits for) never reaches this one;
        the worker routes each session's results to that session's own steps."""
        self._loop, self.session = loop, uuid.uuid4().hex
        self.pending: dict[int, asyncio.Future[AttemptResult]] = {}  # attempts sent or queued, by key
        self.calls = 0  # steps out
        self._work: list[Work] = []
        self._jobs: dict[str, tuple[Any, Any]] = {}
        self._cancels: list[int] = []
        self._flushing = False

    def process(self, spec_ref: Any, plan_ref: Any, shard: Shard, attempt: int) -> Call:
        if asyncio.get_running_loop() is not self._loop:
            self._open(asyncio.get_running_loop())
        key = next(_keys)
        job = job_key(spec_ref, plan_ref)
        result: asyncio.Future[AttemptResult] = asyncio.get_running_loop().create_future()
        self.pending[key] = result
        self._work.append(Work(key, job, shard, attempt))
        self._jobs[job] = (spec_ref, plan_ref)
        result.add_done_callback(lambda f: self._stop(key) if f.cancelled() else None)
        self._schedule()
        return Call(result, lambda: self._stop(key))

    def _stop(self, key: int) -> None:
        """Cancel an attempt: dropped if not sent yet, else the worker is told in the next step."""
        queued = next((w for w in self._work if w.key == key), None)
        if queued is not None:
            self._work.remove(queued)
            self._resolve(key, Cancelled())
        elif key in self.pending:
            self._cancels.append(key)
            self._schedule()

    def _schedule(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        if not (self._work or self._cancels or (self.pending and not self.calls)):
            return
        jobs = {w.job: self._jobs[w.job] for w in self._work}
        work, cancels = self._work, self._cancels
        self._work, self._cancels, self._jobs = [], [], {}
        try:
            ref = self.send(self.session, jobs, work, cancels)
        except Exception as e:  # noqa: BLE001 - the actor is gone already: as its failed call
            self._fail(e)
            return
        self.calls += 1
        self.sent += 1
        asyncio.wrap_future(ref.future()).add_done_callback(self._returned)

    def _returned(self, call: asyncio.Future[Results]) -> None:
        self.calls -= 1
        if call.cancelled():
            self._fail(asyncio.CancelledError())
        elif call.exception() is not None:
            self._fail(call.exception())  # type: ignore[arg-type]
        else:
            for key, result in call.result():
                self._resolve(key, result)
        if self.pending and not self.calls:
            self._schedule()  # attempts still run: keep a step out to collect them

    def _fail(self, error: BaseException) -> None:
        """The worker's call failed: so did every attempt it had (`classify` says how)."""
        result = classify(error)
        for key in list(self.pending):
            self._resolve(key, result)
        self._work.clear()
        self._jobs.clear()

    def _resolve(self, key: int, result: AttemptResult) -> None:
        future = self.pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(result)
