"""Batched dispatch without Ray: a `Channel` (the coordinator's side) sending to an `Inbox` (the
worker's side) in the same loop, as Ray would carry the calls. Each attempt's future gets its own
result, whatever call carried it; a slow attempt never holds a fast one's result; a dead worker fails
everything it had; cancels reach the running attempt."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest
from ray.exceptions import RayActorError

from orchestrator.errors import EngineDeadError, ShardError
from orchestrator.plan.planner import Plan, Shard
from orchestrator.run.channel import Channel
from orchestrator.run.handles import AttemptResult, Cancelled, Failed, Succeeded
from tests.unit.aio import on_loop
from tests.unit.specs import make_spec
from workers.inbox import Inbox, Inboxes, Jobs, Work, sendable


class Ref:
    """A stored object as the worker gets its reference: awaitable, named by `hex`."""

    fetches: Counter[str] = Counter()

    def __init__(self, name: str, value: Any):
        self.name, self.value = name, value

    def hex(self) -> str:
        return self.name

    def __await__(self) -> Any:
        Ref.fetches[self.name] += 1
        yield from asyncio.sleep(0).__await__()
        return self.value


class Call:
    """What `actor.step.remote` returns: its result as a future."""

    def __init__(self, task: asyncio.Future[Any]):
        self.task = task

    def future(self) -> asyncio.Future[Any]:
        return self.task


class Worker:
    """An inbox behind a `send`: each call runs `step`; `gates[shard]` holds that shard until set."""

    def __init__(self, linger_s: float = 0.0):
        self.inboxes = Inboxes(Jobs(), linger_s)
        self.calls: list[tuple[list[int], list[int]]] = []  # (shards sent, keys cancelled) per call
        self.sessions: list[str] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.errors: dict[int, BaseException] = {}
        self.dead = False

    async def run(self, spec: Any, plan: Plan, shard: Shard, attempt: int) -> str:
        if shard.index in self.gates:
            await self.gates[shard.index].wait()
        if shard.index in self.errors:
            raise self.errors[shard.index]
        return f"{plan.job_id}/{shard.index}/{attempt}"

    def send(self, session: str, jobs: dict[str, Any], work: list[Work], cancels: list[int]) -> Call:
        self.calls.append(([w.shard.index for w in work], cancels))
        self.sessions.append(session)
        if self.dead:
            task: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            task.set_exception(RayActorError())
            return Call(task)
        return Call(asyncio.ensure_future(self.inboxes.step(session, jobs, work, cancels, self.run)))


SPEC, PLAN = Ref("spec", make_spec()), Ref("plan", Plan("J", "hash", 100, 1))


def start(channel: Channel, shards: range) -> list[asyncio.Future[AttemptResult]]:
    return [channel.process(SPEC, PLAN, Shard(i, i, i + 1), 1).result for i in shards]


@pytest.fixture(autouse=True)
def fresh_fetches() -> None:
    Ref.fetches.clear()


@on_loop
async def test_attempts_of_one_turn_go_in_one_call_and_each_gets_its_own_result() -> None:
    worker = Worker()
    channel = Channel(worker.send)
    results = await asyncio.gather(*start(channel, range(10)))
    assert results == [Succeeded(f"J/{i}/1") for i in range(10)]  # type: ignore[arg-type]
    assert worker.calls[0] == (list(range(10)), [])  # one call carried all ten
    assert channel.sent == len(worker.calls) <= 2 and not channel.pending and channel.calls == 0
    assert Ref.fetches == {"spec": 1, "plan": 1}  # the job's spec and plan fetched once, not per attempt


@on_loop
async def test_a_slow_attempt_never_holds_the_result_of_a_fast_one() -> None:
    worker = Worker()
    worker.gates[0] = asyncio.Event()
    channel = Channel(worker.send)
    slow, fast = start(channel, range(2))
    assert await asyncio.wait_for(fast, 1) == Succeeded("J/1/1")  # type: ignore[arg-type]
    assert not slow.done() and channel.calls == 1  # a call stays out to collect the slow one
    more = start(channel, range(2, 4))  # sent while that call waits: returned at once, not held
    assert await asyncio.wait_for(asyncio.gather(*more), 1) == [Succeeded("J/2/1"), Succeeded("J/3/1")]  # type: ignore[list-item]
    worker.gates[0].set()
    assert await asyncio.wait_for(slow, 1) == Succeeded("J/0/1")  # type: ignore[arg-type]


@on_loop
async def test_results_finishing_together_come_back_in_one_call() -> None:
    worker = Worker(linger_s=0.05)
    gate = asyncio.Event()
    worker.gates.update({i: gate for i in range(20)})
    channel = Channel(worker.send)
    futures = start(channel, range(20))
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*futures)
    assert len(worker.calls) == 1  # twenty results, one call


@on_loop
async def test_a_dead_worker_fails_every_attempt_it_had_as_worker_lost() -> None:
    worker = Worker()
    gate = asyncio.Event()
    worker.gates.update({0: gate, 1: gate})
    channel = Channel(worker.send)
    futures = start(channel, range(2))
    await asyncio.sleep(0.01)
    worker.dead = True
    later = start(channel, range(2, 3))  # the call carrying it fails: so do the two already sent
    results = await asyncio.wait_for(asyncio.gather(*futures, *later), 1)
    assert [r.reason for r in results] == ["worker_lost"] * 3  # type: ignore[union-attr]
    assert not channel.pending


@on_loop
async def test_a_cancel_stops_the_running_attempt_and_an_unsent_one_never_leaves() -> None:
    worker = Worker()
    worker.gates[0] = asyncio.Event()
    channel = Channel(worker.send)
    running = channel.process(SPEC, PLAN, Shard(0, 0, 1), 1)
    await asyncio.sleep(0.01)
    unsent = channel.process(SPEC, PLAN, Shard(1, 1, 2), 1)
    unsent.cancel()
    running.cancel()
    assert await asyncio.wait_for(asyncio.gather(running.result, unsent.result), 1) == [Cancelled(), Cancelled()]
    assert [shards for shards, _ in worker.calls] == [[0], []]  # shard 1 was never sent
    assert worker.calls[1][1] and not worker.inboxes._sessions  # nothing left under way on the worker


@on_loop
async def test_errors_come_back_typed_and_always_picklable() -> None:
    class Unpicklable(Exception):
        def __reduce__(self) -> Any:
            raise TypeError("cannot pickle")

    worker = Worker()
    dead, bad = EngineDeadError("engine died"), ShardError("bad row")
    worker.errors.update({0: dead, 1: bad, 2: Unpicklable("a lock inside")})
    channel = Channel(worker.send)
    r0, r1, r2 = await asyncio.gather(*start(channel, range(3)))
    assert r0 == Failed("engine_dead", dead) and r1 == Failed("attempt_failed", bad)
    assert isinstance(r2, Failed) and r2.reason == "attempt_failed"
    assert type(r2.error) is RuntimeError and str(r2.error) == "Unpicklable: a lock inside"
    assert sendable(Failed("attempt_failed", ValueError(threading.Lock()))).error.__class__ is RuntimeError  # type: ignore[union-attr]


@on_loop
async def test_a_step_with_nothing_running_returns_at_once() -> None:
    inbox = Inbox(Jobs())
    assert await asyncio.wait_for(inbox.step({}, [], [], Worker().run), 1) == []


@on_loop
async def test_a_session_gone_with_a_step_out_never_takes_a_later_sessions_results() -> None:
    worker = Worker()
    gate = asyncio.Event()
    worker.gates[0] = gate  # the old session's attempt runs on; its step waits for it, for nobody
    old = asyncio.ensure_future(worker.inboxes.step("old", {"j": (SPEC, PLAN)}, [Work(1, "j", Shard(0, 0, 1), 1)],
                                                    [], worker.run))
    await asyncio.sleep(0.01)
    new = await asyncio.wait_for(worker.inboxes.step("new", {"j": (SPEC, PLAN)}, [Work(2, "j", Shard(1, 1, 2), 1)],
                                                     [], worker.run), 1)
    assert new == [(2, Succeeded("J/1/1"))] and not old.done()  # type: ignore[arg-type]
    gate.set()
    assert await asyncio.wait_for(old, 1) == [(1, Succeeded("J/0/1"))]  # type: ignore[arg-type]
    assert not worker.inboxes._sessions  # both sessions idle: nothing kept


def test_a_channel_used_from_a_new_event_loop_starts_afresh() -> None:
    """A pool outlives a service (`Client.local` with given pools): a loop that ended with a step out
    and an attempt under way must not stall the next loop's attempts."""
    worker = Worker()
    worker.gates[0] = asyncio.Event()  # never set: shard 0 runs on after its loop is gone
    channel = Channel(lambda *args: worker.send(*args))

    async def first() -> None:
        start(channel, range(1))
        await asyncio.sleep(0.01)  # sent; its step waits for it

    async def second() -> list[AttemptResult]:
        worker.gates.clear()
        worker.gates[1] = asyncio.Event()  # finishes after the call that carried it returned
        futures = start(channel, range(1, 4))
        await asyncio.sleep(0.05)
        worker.gates[1].set()  # collected only if this loop keeps a step out of its own
        return await asyncio.wait_for(asyncio.gather(*futures), 2)

    asyncio.run(first())
    worker.inboxes = Inboxes(Jobs(), 0.0)  # the worker's own loop lives on in an actor; here, a fresh one
    assert asyncio.run(second()) == [Succeeded(f"J/{i}/1") for i in range(1, 4)]  # type: ignore[comparison-overlap]
    assert len(set(worker.sessions)) == 2  # the second loop's steps were a session of their own
