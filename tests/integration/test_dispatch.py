"""Retries, replacement and failure reporting of the dispatcher, on real Ray with the sleeping
fake engine (orchestration only: vLLM's own paths are covered in test_e2e.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.coordinator import run_job
from orchestrator.errors import JobFailedError
from orchestrator.results import read_table
from orchestrator.spec import JobSpec, parse_spec


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
