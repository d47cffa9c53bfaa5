"""Retries, replacement and failure reporting of the dispatcher, on real Ray with the sleeping
fake engine (orchestration only: vLLM's own paths are covered in test_e2e.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray

from orchestrator import defaults
from orchestrator.errors import JobFailedError
from orchestrator.results import read_table
from orchestrator.run.driver import Progress, run_job
from orchestrator.run.pool import WorkerPool
from orchestrator.spec.job import JobSpec
from orchestrator.spec.load import parse_spec


def fake_spec(out: Path, workers: int = 2, in_flight: int = 3, **engine_args: Any) -> JobSpec:
    return parse_spec({
        "name": "fake",
        "model": {"path": "fake-model", "engine": "fake", "engine_args": {"tokens_per_s": 4000, **engine_args}},
        "prompts": {"template": {"text": "row {{ i }}", "seeds": {"i": list(range(40))}}},
        "sampling": {"max_tokens": 8},
        "output": {"uri": str(out), "rows_per_shard": 4},
        "resources": {"workers": workers, "gpus_per_worker": 0, "cpus_per_worker": 0, "max_attempts": 3,
                      "shards_in_flight": in_flight},
    })


def _row_ids(uri: str) -> list[str]:
    table = read_table(uri)
    assert table is not None
    return table.column("row_id").to_pylist()


def test_a_failed_shard_is_retried_and_every_row_lands_once(ray_runtime: None, tmp_path: Path) -> None:
    once = tmp_path / "once"
    once.mkdir()
    result = run_job(fake_spec(tmp_path / "out", fail_rows=[5, 21], once_dir=str(once)))
    assert result.retries == 2 and result.workers_replaced == 0
    ids = _row_ids(result.uri)
    assert len(ids) == len(set(ids)) == 40


def test_an_engine_death_replaces_the_worker_and_the_job_completes(ray_runtime: None, tmp_path: Path) -> None:
    once = tmp_path / "once"
    once.mkdir()
    result = run_job(fake_spec(tmp_path / "out", die_rows=[9], once_dir=str(once)))
    assert result.workers_replaced == 1 and result.retries >= 1
    ids = _row_ids(result.uri)
    assert len(ids) == len(set(ids)) == 40


def test_a_shard_failing_every_attempt_fails_the_job_but_keeps_the_rest(ray_runtime: None, tmp_path: Path) -> None:
    spec = fake_spec(tmp_path / "out", fail_rows=[13])
    with pytest.raises(JobFailedError) as failure:
        run_job(spec)
    assert failure.value.failed_shards == [3]
    message = str(failure.value)  # says what failed and that a rerun alone will not fix it
    assert "last error: ShardError: injected failure on row 13" in message and "fix its cause first" in message
    job = tmp_path / "out" / spec.job_id
    assert len(list((job / "data").iterdir())) == 9 and not (job / "_manifest.json").exists()


def test_a_single_worker_retries_on_itself(ray_runtime: None, tmp_path: Path) -> None:
    once = tmp_path / "once"
    once.mkdir()
    result = run_job(fake_spec(tmp_path / "out", workers=1, fail_rows=[0], once_dir=str(once)))
    assert result.retries == 1 and len(_row_ids(result.uri)) == 40


def test_a_job_finishes_when_its_last_shard_completes_before_the_stream_is_seen_to_end(
        ray_runtime: None, tmp_path: Path) -> None:
    result = run_job(fake_spec(tmp_path / "out", workers=1, in_flight=1))
    assert result.shards == 10 and len(_row_ids(result.uri)) == 40


def _kill_after_first_commit(pool: WorkerPool, kills: int, *, unplaceable: bool = False,
                             then: Callable[[], None] | None = None) -> Callable[[Progress], None]:
    """Kill `kills` of the pool's workers once the job has committed a shard. `unplaceable` first makes
    the pool's further workers ask for a GPU, which no node of the local cluster has: Ray keeps such
    an actor pending for ever."""
    killed: list[int] = []

    def kill(p: Progress) -> None:
        if not killed and p.rows_done and len(pool.workers) >= kills:
            if then is not None:
                then()
            if unplaceable:
                pool.resources = pool.resources.model_copy(update={"gpus_per_worker": 1.0})
            for wid, worker in list(pool.workers.items())[:kills]:
                killed.append(wid)
                ray.kill(worker.actor, no_restart=True)

    return kill


def _pending_actors() -> int:
    return sum(a["State"] == "PENDING_CREATION" for a in ray._private.state.actors().values())


def _run_in_thread(fn: Callable[[], Any], timeout: float) -> Any:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(_outcome(fn)), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except BaseException as e:
        return e


def test_a_worker_killed_mid_job_is_replaced_and_every_row_lands_once(ray_runtime: None, tmp_path: Path) -> None:
    spec = fake_spec(tmp_path / "out", tokens_per_s=400)
    pool = WorkerPool(spec.model, spec.resources)
    try:
        result = run_job(spec, pool=pool, on_progress=_kill_after_first_commit(pool, 1))
        assert result.workers_replaced == 1
        ids = _row_ids(result.uri)
        assert len(ids) == len(set(ids)) == 40
        # A replacement still starting as the job ended may be dropped; the pool's next job has it whole.
        run_job(fake_spec(tmp_path / "next", tokens_per_s=400), pool=pool)
        assert len(pool.workers) == 2
    finally:
        pool.close()


def test_a_replacement_ray_cannot_place_does_not_hold_up_the_finished_job(ray_runtime: None, tmp_path: Path) -> None:
    spec = fake_spec(tmp_path / "out", tokens_per_s=400)
    pool = WorkerPool(spec.model, spec.resources)
    try:
        result = _run_in_thread(lambda: run_job(
            spec, pool=pool, on_progress=_kill_after_first_commit(pool, 1, unplaceable=True)), 120)
        assert result.workers_replaced == 1 and len(pool.workers) == 1
        ids = _row_ids(result.uri)
        assert len(ids) == len(set(ids)) == 40
        assert _pending_actors() == 0  # the replacement's actor was killed, not left waiting for a node
    finally:
        pool.close()


def test_losing_every_worker_with_no_room_for_one_fails_the_job_naming_the_resources(
        ray_runtime: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = fake_spec(tmp_path / "out", workers=1, in_flight=1, tokens_per_s=100)
    pool = WorkerPool(spec.model, spec.resources)
    kill = _kill_after_first_commit(pool, 1, unplaceable=True,  # the first worker had the default limit
                                    then=lambda: monkeypatch.setattr(defaults, "PLACEMENT_TIMEOUT_S", 3.0))
    try:
        with pytest.raises(JobFailedError, match=r"no live workers left .*needing 1 GPUs and 0 CPUs on any node in 3 s"):
            _run_in_thread(lambda: run_job(spec, pool=pool, on_progress=kill), 120)
        assert _pending_actors() == 0
        assert 0 < len(list((tmp_path / "out" / spec.job_id / "data").iterdir())) < 10  # committed shards stay
    finally:
        pool.close()
