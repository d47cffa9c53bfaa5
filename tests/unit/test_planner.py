"""The planner: a spec becomes fixed, reproducible shards of row ranges, streamed, never holding rows."""

from __future__ import annotations

import itertools
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.errors import RowErrorCode, SpecError
from orchestrator.plan.planner import Plan, make_plan, row_id, row_seed, template_variables
from orchestrator.spec.job import JobSpec
from tests.unit.specs import file_spec, template_spec
from workers.prompts import shard_rows

JSONL = (b'{"prompt": "p0"}\n'
         b"\n"
         b'{"prompt": "p1"}\n'
         b'{"prompt": "p2"}\n'
         b"   \n"
         b'{"prompt": "p3"}\n'
         b'{"prompt": "p4"}\n'
         b"\n\n"
         b'{"prompt": "p5"}\n'
         b'{"prompt": "p6"}\n'
         b'{"prompt": "p7"}\n'
         b'{"prompt": "p8"}\n'
         b'{"prompt": "p9"}')  # no trailing newline
JSONL_PROMPTS = [f"p{i}" for i in range(10)]


def spans(plan: Plan) -> list[tuple[int, int, int | None, int | None]]:
    return [(s.start, s.end, s.byte_start, s.byte_end) for s in plan.shards()]


def all_prompts(spec: JobSpec, plan: Plan) -> list[str | None]:
    return [row.prompt for shard in plan.shards() for row in shard_rows(spec, plan, shard)]


def combos(spec: JobSpec, plan: Plan) -> list[tuple[Any, ...]]:
    source = spec.prompts.template
    assert source is not None
    return [tuple(template_variables(source, i)[n] for n in sorted(source.seeds)) for i in range(plan.total_rows)]


# --- shards -----------------------------------------------------------------------------------

def test_the_same_spec_gives_identical_plans_and_shards() -> None:
    a, b = template_spec({"x": list(range(7))}, rows_per_shard=3), template_spec({"x": list(range(7))},
                                                                                  rows_per_shard=3)
    assert make_plan(a) == make_plan(b)
    assert list(make_plan(a).shards()) == list(make_plan(b).shards())


def test_shards_are_fixed_contiguous_ranges_covering_every_row_once() -> None:
    plan = make_plan(template_spec({"x": list(range(7))}, rows_per_shard=3))
    shards = list(plan.shards())
    assert [(s.index, s.start, s.end) for s in shards] == [(0, 0, 3), (1, 3, 6), (2, 6, 7)]
    assert plan.num_shards == 3
    assert sum(s.rows for s in shards) == plan.total_rows == 7


def test_a_shard_can_be_rebuilt_from_its_index_alone() -> None:
    plan = make_plan(template_spec({"x": list(range(10))}, rows_per_shard=4))
    assert [plan.shard(i) for i in range(plan.num_shards)] == list(plan.shards())


def test_plan_carries_the_job_identity() -> None:
    spec = template_spec({"x": [1]})
    plan = make_plan(spec)
    assert (plan.job_id, plan.spec_hash) == (spec.job_id, spec.content_hash())


# --- rows -------------------------------------------------------------------------------------

def test_row_ids_are_deterministic_distinct_and_sortable() -> None:
    spec_hash = template_spec({"x": [1]}).content_hash()
    ids = [row_id(spec_hash, i) for i in range(1000)]
    assert ids == [row_id(spec_hash, i) for i in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)


def test_row_seeds_are_deterministic_distinct_and_fit_int64() -> None:
    seeds = [row_seed(7, i) for i in range(10_000)]
    assert seeds == [row_seed(7, i) for i in range(10_000)]
    assert len(set(seeds)) == 10_000
    assert all(0 <= s < 2**63 for s in seeds)


def test_row_seeds_depend_on_the_base_seed() -> None:
    assert [row_seed(1, i) for i in range(100)] != [row_seed(2, i) for i in range(100)]


# --- template products ------------------------------------------------------------------------

def test_template_rows_are_the_full_product_of_the_seeds() -> None:
    assert make_plan(template_spec({"a": [1, 2], "b": list("xyz"), "c": [True, False, None, 0]})).total_rows == 24


def test_a_template_without_seeds_is_one_row() -> None:
    assert make_plan(template_spec({}, text="hello")).total_rows == 1


def test_mixed_radix_variables_enumerate_every_combination_exactly_once() -> None:
    seeds = {"b": list("xyz"), "a": [1, 2], "c": [10, 20, 30, 40]}
    spec = template_spec(seeds)
    got = combos(spec, make_plan(spec))
    assert sorted(got, key=repr) == sorted(itertools.product([1, 2], list("xyz"), [10, 20, 30, 40]), key=repr)
    assert len(set(got)) == 24


def test_template_variables_are_a_pure_function_of_the_row() -> None:
    source = template_spec({"a": [1, 2], "b": list("xyz")}).prompts.template
    assert source is not None
    assert [template_variables(source, i) for i in range(6)] == [template_variables(source, i) for i in range(6)]


def test_sample_draws_n_distinct_combinations() -> None:
    spec = template_spec({"a": list(range(10)), "b": list(range(10)), "c": list(range(10))},
                         sample={"n": 300, "seed": 3})
    plan = make_plan(spec)
    assert plan.total_rows == 300
    assert len(set(combos(spec, plan))) == 300


def test_sample_of_the_whole_product_is_a_permutation() -> None:
    seeds = {"a": list(range(6)), "b": list(range(4))}
    spec = template_spec(seeds, sample={"n": 24, "seed": 9})
    assert sorted(combos(spec, make_plan(spec))) == sorted(itertools.product(range(6), range(4)))


def test_the_same_sample_seed_draws_the_same_rows() -> None:
    seeds = {"a": list(range(50)), "b": list(range(40))}
    a, b = template_spec(seeds, sample={"n": 20, "seed": 5}), template_spec(seeds, sample={"n": 20, "seed": 5})
    assert combos(a, make_plan(a)) == combos(b, make_plan(b))


def test_a_different_sample_seed_draws_different_rows() -> None:
    seeds = {"a": list(range(50)), "b": list(range(40))}
    a, b = template_spec(seeds, sample={"n": 20, "seed": 5}), template_spec(seeds, sample={"n": 20, "seed": 6})
    assert set(combos(a, make_plan(a))) != set(combos(b, make_plan(b)))


# --- streaming --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def huge_spec() -> JobSpec:
    """25^5 = 9,765,625 rows from five 25-value variables."""
    return template_spec({name: list(range(25)) for name in "abcde"}, rows_per_shard=4)


def test_a_ten_million_row_product_plans_instantly(huge_spec: JobSpec) -> None:
    started = time.perf_counter()
    plan = make_plan(huge_spec)
    assert time.perf_counter() - started < 1.0
    assert plan.total_rows == 25**5
    assert plan.num_shards == 2_441_407


def test_shards_are_a_generator_not_a_list(huge_spec: JobSpec) -> None:
    shards = make_plan(huge_spec).shards()
    assert isinstance(shards, Iterator)
    assert not isinstance(shards, list | tuple)


def test_iterating_the_first_shards_of_a_huge_plan_allocates_little(huge_spec: JobSpec) -> None:
    plan = make_plan(huge_spec)
    tracemalloc.start()
    try:
        first = [s.index for s in itertools.islice(plan.shards(), 1000)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert first == list(range(1000))
    assert peak < 5 * 1024 * 1024


def test_the_last_row_of_a_huge_product_is_its_last_combination(huge_spec: JobSpec) -> None:
    source = huge_spec.prompts.template
    assert source is not None
    assert template_variables(source, 25**5 - 1) == {name: 24 for name in "abcde"}


# --- JSONL prompt files -----------------------------------------------------------------------

@pytest.fixture()
def jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(JSONL)
    return path


@pytest.mark.parametrize("per_shard", [1, 3, 5, 10, 64])
def test_jsonl_shards_return_every_line_exactly_once_in_order(jsonl: Path, per_shard: int) -> None:
    spec = file_spec(str(jsonl), rows_per_shard=per_shard)
    plan = make_plan(spec)
    assert plan.total_rows == 10
    assert all_prompts(spec, plan) == JSONL_PROMPTS


def test_jsonl_row_indices_follow_shard_ranges(jsonl: Path) -> None:
    spec = file_spec(str(jsonl), rows_per_shard=3)
    plan = make_plan(spec)
    for shard in plan.shards():
        assert [row.index for row in shard_rows(spec, plan, shard)] == list(range(shard.start, shard.end))


def test_jsonl_shard_byte_ranges_tile_the_file(jsonl: Path) -> None:
    plan = make_plan(file_spec(str(jsonl), rows_per_shard=4))
    ranges = [(s.byte_start, s.byte_end) for s in plan.shards()]
    assert ranges[0][0] == 0 and ranges[-1][1] == len(JSONL)
    assert all(end == nxt for (_, end), (nxt, _) in zip(ranges, ranges[1:]))


def test_jsonl_trailing_blank_lines_do_not_add_rows(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "b"}\n\n  \n')
    spec = file_spec(str(path), rows_per_shard=2)
    plan = make_plan(spec)
    assert (plan.total_rows, plan.num_shards) == (2, 1)
    assert all_prompts(spec, plan) == ["a", "b"]


def test_an_empty_jsonl_file_plans_zero_rows_in_one_empty_shard(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n")
    spec = file_spec(str(path))
    plan = make_plan(spec)
    assert (plan.total_rows, plan.num_shards) == (0, 1)
    assert all_prompts(spec, plan) == []


def test_a_missing_jsonl_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        make_plan(file_spec(str(tmp_path / "absent.jsonl")))


def test_changing_the_input_file_changes_its_fingerprint_not_the_job_id(jsonl: Path) -> None:
    spec = file_spec(str(jsonl))
    before = make_plan(spec)
    jsonl.write_bytes(JSONL + b'\n{"prompt": "p10"}\n')
    after = make_plan(spec)
    assert before.job_id == after.job_id
    assert before.source_fingerprint != after.source_fingerprint


def test_the_same_jsonl_on_s3_plans_identically_to_the_local_copy(jsonl: Path, bucket: str) -> None:
    boto3.client("s3").put_object(Bucket=bucket, Key="in/prompts.jsonl", Body=JSONL)
    local_spec = file_spec(str(jsonl), rows_per_shard=3)
    s3_spec = file_spec(f"s3://{bucket}/in/prompts.jsonl", rows_per_shard=3)
    local, remote = make_plan(local_spec), make_plan(s3_spec)
    assert (remote.total_rows, remote.line_offsets, remote.first_lines) == (local.total_rows, local.line_offsets,
                                                                         local.first_lines)
    assert spans(remote) == spans(local)
    assert all_prompts(s3_spec, remote) == JSONL_PROMPTS


# --- Parquet prompt files ---------------------------------------------------------------------

def write_parquet(path: Path, rows: int, row_group_size: int) -> Path:
    table = pa.table({"prompt": [f"q{i}" for i in range(rows)], "custom_id": [f"c{i}" for i in range(rows)]})
    pq.write_table(table, path, row_group_size=row_group_size)
    assert pq.ParquetFile(path).num_row_groups == -(-rows // row_group_size)
    return path


@pytest.mark.parametrize("per_shard", [1, 3, 4, 5, 100])
def test_parquet_shards_return_every_row_exactly_once_across_row_groups(tmp_path: Path, per_shard: int) -> None:
    path = write_parquet(tmp_path / "p.parquet", rows=11, row_group_size=4)
    spec = file_spec(str(path), rows_per_shard=per_shard)
    plan = make_plan(spec)
    assert plan.total_rows == 11
    assert plan.line_offsets is None and plan.first_lines is None
    assert all_prompts(spec, plan) == [f"q{i}" for i in range(11)]


def test_parquet_rows_carry_their_custom_id(tmp_path: Path) -> None:
    spec = file_spec(str(write_parquet(tmp_path / "p.parquet", rows=5, row_group_size=2)), rows_per_shard=2)
    plan = make_plan(spec)
    ids = [row.custom_id for shard in plan.shards() for row in shard_rows(spec, plan, shard)]
    assert ids == [f"c{i}" for i in range(5)]


def test_parquet_on_s3_reads_the_same_rows(tmp_path: Path, bucket: str) -> None:
    path = write_parquet(tmp_path / "p.parquet", rows=9, row_group_size=2)
    boto3.client("s3").put_object(Bucket=bucket, Key="p.parquet", Body=path.read_bytes())
    spec = file_spec(f"s3://{bucket}/p.parquet", rows_per_shard=4)
    assert all_prompts(spec, make_plan(spec)) == [f"q{i}" for i in range(9)]


# --- file line numbers ------------------------------------------------------------------------

def test_jsonl_plans_record_the_file_line_where_each_shard_begins(jsonl: Path) -> None:
    plan = make_plan(file_spec(str(jsonl), rows_per_shard=3))
    assert plan.first_lines == (1, 5, 11, 14, 15)  # blank lines 2, 5, 8, 9 count; p9 is on line 14
    assert [s.first_line for s in plan.shards()] == [1, 5, 11, 14]


def test_jsonl_plans_hold_one_line_number_per_shard_offset(jsonl: Path) -> None:
    for per_shard in (1, 3, 5, 10, 64):
        plan = make_plan(file_spec(str(jsonl), rows_per_shard=per_shard))
        assert plan.first_lines is not None and plan.line_offsets is not None
        assert len(plan.first_lines) == len(plan.line_offsets) == plan.num_shards + 1


@pytest.mark.parametrize("per_shard", [1, 2, 3, 5, 64])
def test_every_row_error_names_its_own_file_line_however_the_file_is_sharded(tmp_path: Path, per_shard: int) -> None:
    lines = [b"", b"[1]", b"  ", b"", b"[2]", b"[3]", b"\t", b"[4]", b"", b"[5]", b"[6]", b""]
    path = tmp_path / "arrays.jsonl"
    path.write_bytes(b"\r\n".join(lines))
    spec = file_spec(str(path), rows_per_shard=per_shard)
    plan = make_plan(spec)
    messages = [row.failure.message for shard in plan.shards() for row in shard_rows(spec, plan, shard)
                if row.failure is not None]
    assert messages == [f"line {n}: not a JSON object" for n, line in enumerate(lines, start=1) if line.strip()]


def test_a_line_of_invalid_utf8_is_planned_as_one_row_and_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "p0"}\n{"prompt": "p1"}\n\n{"prompt": "caf\xe9"}\n'
                     b'{"prompt": "p3"}\n{"prompt": "p4"}\n')
    spec = file_spec(str(path), rows_per_shard=2)
    plan = make_plan(spec)
    assert plan.total_rows == 5
    rows = [row for shard in plan.shards() for row in shard_rows(spec, plan, shard)]
    assert [row.prompt for row in rows] == ["p0", "p1", None, "p3", "p4"]
    assert rows[2].failure is not None and rows[2].failure.code == RowErrorCode.INVALID_REQUEST
    assert rows[2].failure.message.startswith("line 4: not valid UTF-8")
