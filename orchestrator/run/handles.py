"""What the dispatcher needs of a pool and its workers, and what an attempt's outcome means.

The dispatcher schedules, retries and replaces; it never talks to Ray. A pool hands it one
`WorkerHandle` per live worker (on Ray, a `Channel`: orchestrator/run/channel.py) and stores each
job's spec and plan once (`put`); an attempt comes back as a typed `AttemptResult` (succeeded,
failed for a stated reason, cancelled), so how Ray reports a dead actor or a dead engine is decided
here, once, and a test can stand in for Ray with in-memory handles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError

from orchestrator.commit.shards import CommitOutcome
from orchestrator.errors import EngineDeadError
from orchestrator.plan.planner import Shard
from orchestrator.spec.job import Resources
from workers.shard import WorkerCounts

Reason = Literal["worker_lost", "engine_dead", "attempt_failed"]


@dataclass(frozen=True)
class Succeeded:
    """The worker ran the shard; `outcome` says whether its commit won (None: nothing to commit)."""

    outcome: CommitOutcome | None


@dataclass(frozen=True)
class Failed:
    """The attempt raised: `error` is the cause the worker raised (not Ray's wrapper of it)."""

    reason: Reason
    error: BaseException

    @property
    def worker_gone(self) -> bool:
        """The worker (its actor or its engine) cannot run another attempt: replace it."""
        return self.reason != "attempt_failed"


@dataclass(frozen=True)
class Cancelled:
    """The attempt was stopped on purpose (its job was cancelled): nothing to retry."""


AttemptResult = Succeeded | Failed | Cancelled


@dataclass
class Call:
    """One attempt under way on a worker: its result (never raises) and how to stop it."""

    result: asyncio.Future[AttemptResult]
    cancel: Callable[[], None]


class WorkerHandle(Protocol):
    """One live worker as the dispatcher sees it."""

    def process(self, spec_ref: Any, plan_ref: Any, shard: Shard, attempt: int) -> Call:
        """Start attempt number `attempt` of `shard`; the refs are what the pool's `put` returned."""
        ...


class Pool(Protocol):
    """A pool of workers as the dispatcher sees it (`WorkerPool` in production)."""

    @property
    def resources(self) -> Resources: ...

    @property
    def workers(self) -> Mapping[int, object]: ...

    @property
    def unplaced(self) -> AbstractSet[asyncio.Task[Any]]:
        """Starts (tasks running `add`) that have no node yet."""
        ...

    def add(self) -> Awaitable[object]:
        """Start one worker; done once it can take attempts."""
        ...

    def remove(self, worker_id: int) -> None: ...

    def handle(self, worker_id: int) -> WorkerHandle: ...

    def put(self, value: Any) -> Any:
        """Store a job's spec or plan once, so each attempt sends a reference instead of the object."""
        ...

    def drain_counts(self) -> Awaitable[WorkerCounts]:
        """The workers' token and storage counts since the last call, merged (one call per process)."""
        ...


def classify(error: BaseException) -> AttemptResult:
    """What an attempt's error means, raised in the worker or by the Ray call that carried it: the
    actor died (worker_lost), its engine died (engine_dead, maybe wrapped by Ray), the attempt
    itself failed, or it was cancelled."""
    if isinstance(error, (TaskCancelledError, asyncio.CancelledError)):
        return Cancelled()
    cause = error.cause if isinstance(error, RayTaskError) else error
    if isinstance(error, RayActorError):
        reason: Reason = "worker_lost"
    elif isinstance(cause, EngineDeadError):
        reason = "engine_dead"
    else:
        reason = "attempt_failed"
    return Failed(reason, cause or error)


async def drained(calls: list[Any]) -> WorkerCounts:
    """The counts some `drain_counts` calls return, merged; a process that cannot answer is skipped."""
    merged = WorkerCounts({}, {})
    for result in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(result, WorkerCounts):
            merged = merged.merge(result)
    return merged

