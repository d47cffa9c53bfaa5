"""Autoscaling from the queue without a cluster: the bundles a queue asks for (computed by hand here),
the request sent only when it changes and emptied when nothing is wanted, the jobs counted (running,
then the queued ones that start next), and a running job's pool growing as nodes arrive."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.service import pools as pools_module
from orchestrator.service.coordinator import Coordinator
from orchestrator.service.demand import Demand, bundles
from orchestrator.service.metrics import Metrics
from orchestrator.service.pools import PoolEntry, PoolManager
from orchestrator.service.records import JobRecord, JobState
from orchestrator.spec.job import JobSpec, Resources
from tests.unit.aio import on_loop
from tests.unit.specs import make_spec


def job(model: str, workers: int, gpus: float = 1, cpus: float = 8, name: str = "unit") -> JobSpec:
    return make_spec(name=name, model={"id": model},
                     resources={"workers": workers, "gpus_per_worker": gpus, "cpus_per_worker": cpus})


GPU8, GPU2x16 = {"GPU": 1, "CPU": 8}, {"GPU": 2, "CPU": 16}


def test_each_pool_asks_once_for_the_largest_of_its_jobs_workers() -> None:
    specs = [job("org/a", 4), job("org/a", 6, name="other"), job("org/b", 2, gpus=2, cpus=16),
             job("org/a", 3, gpus=0, cpus=2),  # the same model on CPUs: another pool
             job("org/c", 5, gpus=0, cpus=0)]  # needs no node: no bundle
    assert bundles(specs) == [GPU8] * 6 + [GPU2x16] * 2 + [{"CPU": 2}] * 3
    assert bundles([]) == []


def test_the_request_is_sent_when_it_changes_and_emptied_once_nothing_is_wanted() -> None:
    sent: list[list[dict[str, float]]] = []
    demand = Demand(sent.append)
    demand.update([])  # nothing asked before: nothing to take back
    demand.update([job("org/a", 2)])
    demand.update([job("org/a", 2)])
    demand.update([job("org/a", 2), job("org/b", 1, gpus=2, cpus=16)])
    demand.release()
    demand.release()
    assert sent == [[GPU8] * 2, [GPU8] * 2 + [GPU2x16], []]


def test_a_failing_request_is_logged_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def flaky(wanted: list[dict[str, float]]) -> None:
        calls.append(len(wanted))
        if len(calls) == 1:
            raise ConnectionError("GCS unreachable")

    demand = Demand(flaky)
    with caplog.at_level(logging.ERROR):
        demand.update([job("org/a", 3)])
        demand.update([job("org/a", 3)])
    assert calls == [3, 3] and demand.standing == [GPU8] * 3
    assert "could not be made" in caplog.text


def test_the_coordinator_wants_its_running_jobs_and_the_queued_ones_that_start_next(tmp_path: Any) -> None:
    coordinator = Coordinator(str(tmp_path / "state"), max_running_jobs=3, autoscale=True)
    specs = {name: job(f"org/{name}", 1, name=name) for name in ("run", "low", "high", "early", "late")}
    states = {"run": JobState.IN_PROGRESS, "done": JobState.COMPLETED}
    for seq, (name, priority) in enumerate([("run", 0), ("late", 0), ("low", -1), ("high", 5), ("early", 0)]):
        record = JobRecord(id=name, spec=specs[name], priority=priority, sequence=seq)
        record.move(states.get(name, JobState.QUEUED))
        coordinator.jobs[name] = record
    coordinator.running["run"] = None  # type: ignore[assignment]
    # Running first; then two of the queue (3 slots, 1 taken): by priority, then submission order.
    assert [s.name for s in coordinator._wanted(coordinator._queued())] == ["run", "high", "late"]
    coordinator.max_running = 1
    assert [s.name for s in coordinator._wanted(coordinator._queued())] == ["run"]


class FakePool:
    def __init__(self, workers: int, resources: Resources, model: Any):
        self.workers = {i: SimpleNamespace(info=None) for i in range(workers)}
        self.resources, self.model = resources, model
        self.grown: list[int] = []

    async def grow(self, n: int) -> None:
        self.grown.append(n)
        self.workers.update({i: SimpleNamespace(info=None) for i in range(len(self.workers), n)})


class FakeDispatcher:
    busy = False
    woken = 0

    def wake(self) -> None:
        self.woken += 1


@on_loop
async def test_a_running_jobs_pool_grows_as_nodes_arrive_up_to_what_its_jobs_want(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = job("org/a", 5)
    cluster = {"GPU": 2.0, "CPU": 64.0}
    monkeypatch.setattr(pools_module.ray, "cluster_resources", lambda: dict(cluster))
    manager = PoolManager(Metrics(), lambda counts: None, idle_release_s=600)
    pool, dispatcher = FakePool(2, spec.resources.model_copy(update={"workers": 2}), spec.model), FakeDispatcher()
    entry = PoolEntry(pool, dispatcher, asyncio.ensure_future(asyncio.sleep(0)), claims=1, wanted=5)  # type: ignore[arg-type]
    manager.entries["a"] = entry
    manager.regrow()  # the cluster holds only the 2 it has
    assert entry.growing is None
    cluster["GPU"] = 4.0  # a node with 2 GPUs joined
    manager.regrow()
    assert entry.growing is not None
    await entry.growing
    cluster["GPU"] = 16.0  # more than the jobs want
    manager.regrow()
    await entry.growing
    assert pool.grown == [4, 5] and len(pool.workers) == 5 and dispatcher.woken == 2
    entry.claims = 0  # no job holds it: it never grows
    cluster["GPU"] = 32.0
    entry.wanted = 8
    manager.regrow()
    assert pool.grown == [4, 5]
