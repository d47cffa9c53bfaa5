"""Seed files (`from_file`) against planted truth: files whose every row names itself (`id` = its row),
so which rows a job drew, and how often, is read off the values themselves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from orchestrator.errors import SpecError
from orchestrator.plan import seed_files
from orchestrator.plan.planner import Shard, make_plan, shard_variables
from orchestrator.run.preflight import spec_problems
from orchestrator.spec.load import parse_spec
from orchestrator.spec.samplers import FromFile

ALPHA = 1e-4  # a test of a correct sampler fails once in 10,000 runs


def jsonl(path: Path, rows: int, *, blank_every: int = 0) -> Path:
    with path.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": i, "name": f"p{i}", "extra": "x" * (i % 5)}) + "\n")
            if blank_every and i % blank_every == 0:
                f.write("\n")
    return path


def parquet(path: Path, rows: int, group: int) -> Path:
    ids = list(range(rows))
    pq.write_table(pa.table({"id": ids, "name": [f"p{i}" for i in ids]}), path, row_group_size=group)
    return path


def drawn(path: Path, rows: int, *, replace: bool = False, seed: int = 0, shard: int | None = None) -> list[int]:
    f = seed_files.index_file("p", FromFile(uri=str(path), columns=["id", "name"], replace=replace), rows, seed)
    step = shard or rows
    values = [v for start in range(0, rows, step)
              for v in seed_files.file_values(f, replace, seed, start, min(rows, start + step))]
    assert all(v["name"] == f"p{v['id']}" for v in values)  # each value is the file's row, whole
    return [v["id"] for v in values]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seed_files, "BLOCK_ROWS", 64)  # many blocks in a small file


def test_without_replacement_every_row_drawn_is_a_distinct_row_of_the_file(tmp_path: Path) -> None:
    ids = drawn(jsonl(tmp_path / "s.jsonl", 5000, blank_every=97), 3000)
    assert len(ids) == len(set(ids)) == 3000 and all(0 <= i < 5000 for i in ids)
    all_rows = drawn(jsonl(tmp_path / "all.jsonl", 700), 700)
    assert sorted(all_rows) == list(range(700))  # rows = the file's: a permutation, every row once


def test_the_same_rows_on_any_shard_size(tmp_path: Path) -> None:
    path = parquet(tmp_path / "s.parquet", 4000, group=300)
    whole = drawn(path, 1500)
    assert drawn(path, 1500, shard=7) == drawn(path, 1500, shard=256) == whole
    assert drawn(path, 1500, seed=1) != whole  # the seed chooses the rows


@pytest.mark.parametrize("replace", [False, True])
def test_every_row_of_the_file_is_equally_likely(tmp_path: Path, replace: bool) -> None:
    """Over many seeds each file row's draw count matches its exact expectation N*R/M: a chi-square test."""
    rows, size, seeds = 100, 500, 400
    path = jsonl(tmp_path / "s.jsonl", size)
    counts = np.zeros(size)
    for seed in range(seeds):
        ids = drawn(path, rows, replace=replace, seed=seed)
        np.add.at(counts, ids, 1)
    expected = rows * seeds / size
    variance = expected * (1 - rows / size) if not replace else expected * (1 - 1 / size)
    statistic = float(((counts - expected) ** 2 / variance).sum())
    assert stats.chi2.sf(statistic, size - 1) > ALPHA
    assert counts.sum() == rows * seeds


def test_with_replacement_rows_may_exceed_the_file(tmp_path: Path) -> None:
    ids = drawn(parquet(tmp_path / "s.parquet", 50, group=16), 400, replace=True)
    assert len(ids) == 400 and len(set(ids)) <= 50 and len(set(ids)) > 40


def spec(tmp_path: Path, uri: str, columns: list[str], rows: int = 20, **extra: Any) -> Any:
    return parse_spec({
        "name": "seeded", "model": {"path": "fake-model", "engine": "fake"},
        "prompts": {"template": {"text": "Write as number {{ p.id }}.",
                                 "seeds": {"p": {"from_file": {"uri": uri, "columns": columns, **extra}}},
                                 "rows": rows}},
        "output": {"uri": str(tmp_path / "out")},
    })


def test_a_job_draws_its_rows_from_the_plan(tmp_path: Path) -> None:
    job = spec(tmp_path, str(jsonl(tmp_path / "s.jsonl", 300)), ["id", "name"], rows=40)
    plan = make_plan(job)
    assert plan.source_fingerprint is not None and len(plan.seed_files) == 1
    values = shard_variables(job.prompts.template, Shard(0, 10, 20), plan.seed_files)
    assert [set(v) for v in values] == [{"p"}] * 10 and all(v["p"]["name"] == f"p{v['p']['id']}" for v in values)
    assert spec_problems(job, check_output=False) == []


def test_a_seed_file_without_the_named_columns_is_refused(tmp_path: Path) -> None:
    for path in (jsonl(tmp_path / "s.jsonl", 10), parquet(tmp_path / "s.parquet", 10, group=4)):
        problems = spec_problems(spec(tmp_path, str(path), ["id", "persona"]), check_output=False)
        assert [p.path for p in problems] == ["prompts.template.seeds.p.from_file.columns"]
        assert "'persona'" in problems[0].message and "name" in problems[0].message
        with pytest.raises(SpecError, match="has no column 'persona'"):
            make_plan(spec(tmp_path, str(path), ["id", "persona"]))


def test_more_rows_than_the_file_without_replacement_is_refused(tmp_path: Path) -> None:
    path = str(jsonl(tmp_path / "s.jsonl", 10))
    with pytest.raises(SpecError, match="rows: 20 exceeds the 10 rows") as e:
        make_plan(spec(tmp_path, path, ["id"]))
    assert e.value.problems[0].path == "prompts.template.seeds.p.from_file.replace"
    assert len(make_plan(spec(tmp_path, path, ["id"], replace=True)).seed_files[0].picks) == 1


def test_a_missing_seed_file_is_named(tmp_path: Path) -> None:
    problems = spec_problems(spec(tmp_path, str(tmp_path / "none.jsonl"), ["id"]), check_output=False)
    assert [p.path for p in problems] == ["prompts.template.seeds.p.from_file.uri"]
    assert "does not exist" in problems[0].message


RSS_SCRIPT = """
import json, resource, sys
from orchestrator.plan import seed_files
from orchestrator.spec.samplers import FromFile
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base = peak()
f = seed_files.index_file("p", FromFile(uri=sys.argv[1], columns=["id", "name"]), 200_000, 0)
planned = peak()
shard = seed_files.file_values(f, False, 0, 100_000, 100_256)
print(json.dumps({"base": base, "planned": planned, "read": peak(), "shard": shard}))
"""


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_a_million_row_seed_file_is_planned_and_read_with_flat_memory(tmp_path: Path, kind: str) -> None:
    """Peak RSS of a fresh process planning 200,000 rows from a 1,000,000-row file (~70 MB as JSONL)
    and reading a 256-row shard of them grows by a few MB, not by the file."""
    import subprocess
    import sys

    path = tmp_path / f"big.{kind}"
    ids = range(1_000_000)
    if kind == "jsonl":
        with path.open("w") as f:
            f.writelines(f'{{"id": {i}, "name": "p{i}", "bio": "{"b" * 40}"}}\n' for i in ids)
    else:
        pq.write_table(pa.table({"id": list(ids), "name": [f"p{i}" for i in ids], "bio": ["b" * 40] * len(ids)}),
                       path, row_group_size=1_000_000)  # one row group: read a batch at a time
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path)], check=False, capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert len(got["shard"]) == 256 and all(v["name"] == f"p{v['id']}" for v in got["shard"])
    assert len({v["id"] for v in got["shard"]}) == 256
    grown = (got["read"] - got["base"]) / 2**20
    assert grown < 30, f"peak RSS grew {grown:.0f} MB for a {path.stat().st_size / 2**20:.0f} MB file"


def test_a_relative_seed_file_resolves_against_the_spec_and_keeps_the_job_id(tmp_path: Path) -> None:
    import yaml

    from orchestrator.spec.load import load_spec

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        jsonl(tmp_path / folder / "personas.jsonl", 30)
        (tmp_path / folder / "job.yaml").write_text(yaml.safe_dump({
            "name": "seeded", "model": {"path": "fake-model", "engine": "fake"},
            "prompts": {"template": {"text": "{{ p.id }}", "rows": 5, "seeds": {
                "p": {"from_file": {"uri": "personas.jsonl", "columns": ["id"]}}}}},
            "output": {"uri": "out"}}))
    a, b = load_spec(tmp_path / "a" / "job.yaml"), load_spec(tmp_path / "b" / "job.yaml")
    assert a.prompts.template.seeds["p"].from_file.uri == str(tmp_path / "a" / "personas.jsonl")
    assert a.job_id == b.job_id
    assert len(make_plan(a).seed_files) == 1
