"""Reading a finished job through its manifest: a kind of row with no rows is an empty table with that
kind's columns, the same columns a job with such rows reads back with."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa

from orchestrator.commit import schemas
from orchestrator.finalize.finish import finalize
from orchestrator.results import read_table
from orchestrator.run.driver import prepare
from orchestrator.spec.job import JobSpec
from orchestrator.spec.load import parse_spec
from orchestrator.spec.model import FakeEngineArgs
from workers.fake_engine import sleeping_engine
from workers.shard import run_shard


def _spec(out: Path, text: str) -> JobSpec:
    return parse_spec({"name": "results", "model": {"path": "fake", "engine": "fake"},
                       "prompts": {"template": {"text": text, "seeds": {"i": [0, 1, 2, 3]}}},
                       "sampling": {"max_tokens": 4}, "output": {"uri": str(out), "rows_per_shard": 2},
                       "resources": {"gpus_per_worker": 0}})


def _finished_job(spec: JobSpec) -> str:
    """The job run as run_job runs it, with the shipped fake engine in this process instead of Ray."""
    job = prepare(spec)
    engine = sleeping_engine(spec.model.name, FakeEngineArgs(tokens_per_s=1e6))
    known = {}
    for shard in job.plan.shards():
        outcome = asyncio.run(run_shard(engine, job.store, spec, job.plan, shard, attempt=1))
        assert outcome is not None and outcome.won
        known[shard.index] = outcome.stats
    finalize(job.store, spec, job.plan, known, started_at=0.0)
    return job.store.uri


def _no_metadata(schema: pa.Schema) -> pa.Schema:
    return schema.remove_metadata()


def test_a_job_without_error_rows_reads_an_empty_table_with_the_error_columns(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "row {{ i }}")
    errors = read_table(_finished_job(spec), errors=True)
    assert isinstance(errors, pa.Table) and errors.num_rows == 0
    assert errors.schema == _no_metadata(schemas.errors_schema(spec))
    assert {"error_code", "error_message", "row_id", "i"} <= set(errors.column_names)


def test_the_empty_error_table_has_the_columns_a_job_with_errors_reads_back(tmp_path: Path) -> None:
    clean = read_table(_finished_job(_spec(tmp_path / "clean", "{{ 12 // (i + 1) }}")), errors=True)
    failing = read_table(_finished_job(_spec(tmp_path / "failing", "{{ 12 // i }}")), errors=True)  # i=0 fails
    assert clean.num_rows == 0 and failing.num_rows == 1
    assert failing.column("error_code").to_pylist() == ["template_error"]
    assert clean.schema == failing.schema


def test_a_job_without_rejected_rows_reads_an_empty_table_with_the_rejected_columns(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "row {{ i }}")
    rejected = read_table(_finished_job(spec), rejected=True)
    assert rejected.num_rows == 0 and rejected.schema == _no_metadata(schemas.rejected_schema(spec))


def test_data_rows_read_back_as_before(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "row {{ i }}")
    data = read_table(_finished_job(spec))
    assert sorted(data.column("i").to_pylist()) == [0, 1, 2, 3] and data.schema == _no_metadata(schemas.data_schema(spec))
