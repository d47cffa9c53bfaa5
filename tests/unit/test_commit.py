"""Shard commits: the data file is written once, carries its errors and stats, and finalize totals them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from orchestrator.commit import layout, schemas
from orchestrator.commit.shards import (
    ShardStats,
    ShardTables,
    StatsLedger,
    commit_shard,
    committed_shards,
    decode_footer,
    recover_shard,
)
from orchestrator.finalize.finish import finalize
from orchestrator.plan.planner import Plan, make_plan
from orchestrator.results import read_table
from orchestrator.spec.job import JobSpec
from orchestrator.storage import LocalStore, MemoryStore, S3Store, Store
from tests.unit.specs import template_spec

NUM_SHARDS = 3


@pytest.fixture()
def spec() -> JobSpec:
    return template_spec({"topic": ["a", "b"], "n": [1, 2, 3]}, text="{{ topic }} {{ n }}", rows_per_shard=2)


def delete(store: Store, key: str) -> None:
    """Remove an object behind the store's back, as a crash between writes would leave it missing."""
    if isinstance(store, MemoryStore):
        del store.objects[key]
    elif isinstance(store, LocalStore):
        (store.root / key).unlink()
    else:
        assert isinstance(store, S3Store)
        boto3.client("s3").delete_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
    assert not store.exists(key)


def lineage(spec: JobSpec) -> dict[str, object]:
    return {"spec_hash": spec.content_hash(), "model": spec.model.name, "model_revision": "rev-1",
            "template_hash": "t", "seed": 1, "sampling": "{}"}


def tables(spec: JobSpec, index: int, ok: int, failed: int, text: str = "out") -> ShardTables:
    """`ok` data rows and `failed` error rows for shard `index`."""
    base = [{"row_id": f"r{index}-{i}", "prompt": f"p{i}", "topic": "a", "n": i, "lineage": lineage(spec)}
            for i in range(ok + failed)]
    data = [{**b, "sample_index": 0, "completion": f"{text}{i}", "finish_reason": "stop",
             "prompt_tokens": 3, "completion_tokens": 5} for i, b in enumerate(base[:ok])]
    errors = [{**b, "error_code": "template_error", "error_message": "boom"} for b in base[ok:]]
    return ShardTables(pa.Table.from_pylist(data, schema=schemas.data_schema(spec)),
                       pa.Table.from_pylist(errors, schema=schemas.errors_schema(spec)),
                       schemas.rejected_schema(spec).empty_table())


def stats(index: int, ok: int, failed: int, attempt: int = 1) -> ShardStats:
    return ShardStats(index=index, attempt=attempt, rows_ok=ok, rows_failed=failed, prompt_tokens=3 * (ok + failed),
                      completion_tokens=5 * ok, seconds=0.25, model_revision="rev-1")


def commit(store: Store, spec: JobSpec, index: int, ok: int = 2, failed: int = 1, *, text: str = "out",
           attempt: int = 1, num_shards: int = NUM_SHARDS):  # type: ignore[no-untyped-def]
    return commit_shard(store, num_shards, tables(spec, index, ok, failed, text), stats(index, ok, failed, attempt))


def read_parquet(blob: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(blob))


# --- commit_shard -----------------------------------------------------------------------------

def test_the_first_commit_of_a_shard_wins(store: Store, spec: JobSpec) -> None:
    outcome = commit(store, spec, 0)
    assert outcome.won is True
    assert store.exists(layout.data_key(0, NUM_SHARDS))
    assert outcome.stats.bytes == store.size(layout.data_key(0, NUM_SHARDS))


def test_a_second_commit_of_the_same_shard_loses_and_changes_nothing(store: Store, spec: JobSpec) -> None:
    commit(store, spec, 0, text="first")
    before = {k: store.get(k) for k in store.list()}
    outcome = commit(store, spec, 0, ok=1, failed=2, text="second", attempt=2)
    assert outcome.won is False
    assert {k: store.get(k) for k in store.list()} == before
    assert read_parquet(store.get(layout.data_key(0, NUM_SHARDS)))["completion"].to_pylist() == ["first0", "first1"]


def test_the_data_file_holds_only_the_data_rows(store: Store, spec: JobSpec) -> None:
    commit(store, spec, 1, ok=2, failed=1)
    table = read_parquet(store.get(layout.data_key(1, NUM_SHARDS)))
    assert table["row_id"].to_pylist() == ["r1-0", "r1-1"]
    assert table.schema.remove_metadata() == schemas.data_schema(spec)


def test_error_rows_are_written_to_the_errors_folder(store: Store, spec: JobSpec) -> None:
    commit(store, spec, 2, ok=1, failed=2)
    errors = read_parquet(store.get(layout.errors_key(2, NUM_SHARDS)))
    assert errors["row_id"].to_pylist() == ["r2-1", "r2-2"]
    assert errors["error_code"].to_pylist() == ["template_error"] * 2


def test_a_shard_without_failures_writes_no_errors_file(store: Store, spec: JobSpec) -> None:
    commit(store, spec, 0, ok=2, failed=0)
    assert list(store.list(layout.ERRORS_DIR + "/")) == []


def test_the_shard_record_holds_the_final_stats(store: Store, spec: JobSpec) -> None:
    outcome = commit(store, spec, 0)
    record = ShardStats.from_json(json.loads(store.get(layout.shard_record_key(0))))
    assert record == outcome.stats
    assert record.sha256 and record.bytes > 0


def test_the_footer_carries_the_stats_and_error_rows(spec: JobSpec) -> None:
    store = MemoryStore()
    commit(store, spec, 0, ok=2, failed=1)
    footer_stats, errors, rejected = decode_footer(store.get(layout.data_key(0, NUM_SHARDS)))
    assert footer_stats == stats(0, 2, 1)
    assert errors.equals(tables(spec, 0, 2, 1).errors)
    assert rejected.num_rows == 0


def test_committed_shards_lists_the_indices_of_data_files(store: Store, spec: JobSpec) -> None:
    assert committed_shards(store) == set()
    commit(store, spec, 0)
    commit(store, spec, 2)
    assert committed_shards(store) == {0, 2}


# --- recovery ---------------------------------------------------------------------------------

def test_recover_shard_rebuilds_errors_and_record_lost_in_a_crash(store: Store, spec: JobSpec) -> None:
    won = commit(store, spec, 1, ok=2, failed=2).stats
    errors_before = store.get(layout.errors_key(1, NUM_SHARDS))
    delete(store, layout.errors_key(1, NUM_SHARDS))
    delete(store, layout.shard_record_key(1))
    assert recover_shard(store, 1, NUM_SHARDS) == won
    assert read_parquet(store.get(layout.errors_key(1, NUM_SHARDS))).equals(read_parquet(errors_before))
    assert ShardStats.from_json(json.loads(store.get(layout.shard_record_key(1)))) == won


def test_recover_shard_rebuilds_an_errors_file_missing_behind_its_record(store: Store, spec: JobSpec) -> None:
    won = commit(store, spec, 0, ok=1, failed=1).stats
    delete(store, layout.errors_key(0, NUM_SHARDS))
    assert recover_shard(store, 0, NUM_SHARDS) == won
    assert store.exists(layout.errors_key(0, NUM_SHARDS))


def test_recover_shard_of_an_intact_shard_reads_its_record(store: Store, spec: JobSpec) -> None:
    won = commit(store, spec, 0).stats
    keys = list(store.list())
    assert recover_shard(store, 0, NUM_SHARDS) == won
    assert list(store.list()) == keys


# --- finalize ---------------------------------------------------------------------------------

@pytest.fixture()
def plan(spec: JobSpec) -> Plan:
    plan = make_plan(spec)
    assert plan.num_shards == NUM_SHARDS
    return plan


def commit_all(store: Store, spec: JobSpec) -> dict[int, ShardStats]:
    shape = {0: (2, 0), 1: (1, 1), 2: (0, 2)}
    return {i: commit(store, spec, i, ok=ok, failed=failed).stats for i, (ok, failed) in shape.items()}


def test_finalize_writes_a_manifest_whose_totals_sum_the_shards(store: Store, spec: JobSpec, plan: Plan) -> None:
    known = commit_all(store, spec)
    manifest = finalize(store, spec, plan, known, started_at=0.0)
    assert json.loads(store.get(layout.MANIFEST)) == manifest.json_dict()
    for key in ("rows_ok", "rows_failed", "prompt_tokens", "completion_tokens", "bytes"):
        assert getattr(manifest, key) == sum(getattr(s, key) for s in known.values()), key
    assert (manifest.rows_ok, manifest.rows_failed, manifest.input_rows) == (3, 3, 6)
    assert (manifest.job_id, manifest.num_shards) == (plan.job_id, NUM_SHARDS)


def test_finalize_writes_the_success_marker(store: Store, spec: JobSpec, plan: Plan) -> None:
    finalize(store, spec, plan, commit_all(store, spec), started_at=0.0)
    assert store.get(layout.SUCCESS) == b""


def test_the_manifest_lists_every_shard_with_its_paths(store: Store, spec: JobSpec, plan: Plan) -> None:
    manifest = finalize(store, spec, plan, commit_all(store, spec), started_at=0.0)
    entries = [(s.index, s.path, s.errors_path) for s in manifest.shards]
    assert entries == [(0, layout.data_key(0, 3), None), (1, layout.data_key(1, 3), layout.errors_key(1, 3)),
                       (2, layout.data_key(2, 3), layout.errors_key(2, 3))]


def test_finalize_recovers_shards_committed_by_earlier_runs(store: Store, spec: JobSpec, plan: Plan) -> None:
    known = commit_all(store, spec)
    delete(store, layout.shard_record_key(2))
    manifest = finalize(store, spec, plan, {0: known[0]}, started_at=0.0)
    assert [s.sha256 for s in manifest.shards] == [known[i].sha256 for i in range(3)]


def test_a_second_finalize_keeps_the_first_manifest(store: Store, spec: JobSpec, plan: Plan) -> None:
    known = commit_all(store, spec)
    first = finalize(store, spec, plan, known, started_at=1.0)
    second = finalize(store, spec, plan, known, started_at=2.0)
    assert second == first
    assert json.loads(store.get(layout.MANIFEST))["started_at"] == 1.0


def test_the_data_folder_reads_back_with_pyarrow_dataset(tmp_path: Path, spec: JobSpec, plan: Plan) -> None:
    store = LocalStore(tmp_path / "job")
    manifest = finalize(store, spec, plan, commit_all(store, spec), started_at=0.0)
    (tmp_path / "job" / "data" / "_SUCCESS").write_bytes(b"")  # '_' files are not data
    table = ds.dataset(tmp_path / "job" / "data", format="parquet").to_table()
    assert table.num_rows == manifest.rows_ok
    assert sorted(table["row_id"].to_pylist()) == ["r0-0", "r0-1", "r1-0"]


def test_a_shard_without_data_rows_reads_with_hf_datasets(tmp_path: Path, spec: JobSpec) -> None:
    """Its data file has no row group: HF datasets fails on a file whose one row group has no rows."""
    import datasets

    store = LocalStore(tmp_path / "job")
    commit(store, spec, 0, ok=2, failed=0)
    commit(store, spec, 1, ok=0, failed=2)
    empty = tmp_path / "job" / layout.data_key(1, NUM_SHARDS)
    assert pq.ParquetFile(empty).num_row_groups == 0 and decode_footer(empty.read_bytes())[0] == stats(1, 0, 2)
    rows = datasets.load_dataset("parquet", data_files=str(tmp_path / "job" / "data" / "*.parquet"), split="train",
                                 cache_dir=str(tmp_path / "cache"))
    assert sorted(rows["row_id"]) == ["r0-0", "r0-1"]


def test_read_table_returns_the_committed_data_and_error_rows(tmp_path: Path, spec: JobSpec, plan: Plan) -> None:
    store = LocalStore(tmp_path / "job")
    finalize(store, spec, plan, commit_all(store, spec), started_at=0.0)
    data, errors = read_table(str(tmp_path / "job")), read_table(str(tmp_path / "job"), errors=True)
    assert data is not None and errors is not None
    assert data["row_id"].to_pylist() == ["r0-0", "r0-1", "r1-0"]
    assert errors["row_id"].to_pylist() == ["r1-1", "r2-0", "r2-1"]


def test_a_losing_commit_reports_the_stats_it_tried(spec: JobSpec) -> None:
    store = MemoryStore()
    commit(store, spec, 0)
    outcome = commit(store, spec, 0, attempt=2)
    assert outcome.won is False
    assert outcome.stats == replace(stats(0, 2, 1), attempt=2)


def test_the_ledger_gives_back_each_shards_stats_exactly_as_committed() -> None:
    stats = [ShardStats(i, 2, 10, 1, 50, 70, 1.5, "rev-a", 999, "ab" * 32, 3, {"filler": 3}, {"timeout": 1},
                        {"timeout": "took too long"}, {"7": 10}, 5, 2, 9, 1) for i in (4, 0, 17)]
    stats.append(ShardStats(9, 1, 256, 0, 5000, 65536, 12.5, "fake"))
    ledger = StatsLedger()
    for s in stats:
        ledger.add(s.index, s)
    assert dict(ledger) == {s.index: s for s in stats} and len(ledger) == 4
    assert ledger.get(3) is None and 17 in ledger and 3 not in ledger
