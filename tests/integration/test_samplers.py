"""Sampled seed variables as jobs on real Ray (the fake engine, which echoes its prompt): the same spec
writes the same rows on any shard size and worker count, typed columns, each row's drawn temperature
in its lineage, and the drift check measured against the planned (weighted) mix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml

from orchestrator.commit import layout
from orchestrator.run.driver import run_job
from orchestrator.spec.job import JobSpec
from orchestrator.spec.load import parse_spec
from tests.integration.conftest import MODEL_ARGS, RESOURCES

EXAMPLES = Path(__file__).parents[2] / "examples"

SEEDS = {"topic": {"weighted": {"common": 8, "mid": 1, "rare": 1}}, "age": {"uniform_int": [1, 3]},
         "x": {"uniform": [0, 1]}, "tags": {"choice": {"values": ["a", "b", "c"], "k": 2}}, "lang": ["en", "fr"]}


def sampled_fake(out: Path, *, rows_per_shard: int = 50, workers: int = 2, **sections: Any) -> JobSpec:
    return parse_spec({
        "name": "sampled",
        "model": {"path": "fake-model", "engine": "fake", "engine_args": {"tokens_per_s": 2000, "echo": True}},
        "prompts": {"template": {"text": "{{ topic }} {{ age }} {{ lang }} {{ tags | join(',') }} {{ x }}",
                                 "seeds": SEEDS, "rows": 400}},
        "sampling": {"max_tokens": 2, "temperature": {"uniform": [0.5, 1.0]}},
        "output": {"uri": str(out), "rows_per_shard": rows_per_shard},
        "resources": {"workers": workers, "gpus_per_worker": 0, "cpus_per_worker": 0},
        **sections,
    })


def table(job: Path) -> pa.Table:
    return ds.dataset(job / "data", format="parquet").to_table()


def test_the_same_sampled_spec_writes_the_same_rows_on_any_shards_and_workers(ray_runtime: None,
                                                                             tmp_path: Path) -> None:
    a = run_job(sampled_fake(tmp_path / "a"))
    b = run_job(sampled_fake(tmp_path / "b", rows_per_shard=7, workers=1))
    assert a.job_id == b.job_id and a.rows_ok == b.rows_ok == 400
    ta, tb = table(Path(a.uri)), table(Path(b.uri))
    types = {name: str(ta.schema.field(name).type) for name in ("topic", "age", "x", "tags", "lang")}
    assert types == {"topic": "string", "age": "int64", "x": "double", "tags": "list<element: string>",
                     "lang": "string"}
    columns = ["row_id", "topic", "age", "x", "tags", "lang", "completion", "lineage"]
    assert sorted(ta.select(columns).to_pylist(), key=str) == sorted(tb.select(columns).to_pylist(), key=str)
    for r in ta.to_pylist():
        assert r["completion"].startswith(f"{r['topic']} {r['age']} {r['lang']} {','.join(r['tags'])} {r['x']}")
        assert 1 <= r["age"] <= 3 and 0 < r["x"] < 1 and len(set(r["tags"])) == 2
    temperatures = [json.loads(r["lineage"]["sampling"])["temperature"] for r in ta.to_pylist()]
    assert all(0.5 < t < 1.0 for t in temperatures) and len(set(temperatures)) == 400


def drift(job: Path) -> dict[str, Any]:
    return json.loads((job / layout.MANIFEST).read_text())["quality"]["drift"]


def test_drift_compares_kept_rows_with_the_planned_weights(ray_runtime: None, tmp_path: Path) -> None:
    """An 8:1:1 mix kept whole is no drift; the gates dropping the rare topic is, and only it is flagged."""
    kept = drift(Path(run_job(sampled_fake(tmp_path / "kept")).uri))
    assert kept["flagged_variables"] == [] and set(kept["variables"]) == {"topic", "age", "lang"}
    planned = {v["value"]: v["planned"] for v in kept["variables"]["topic"]["values"]}
    assert sum(planned.values()) == 400 and 280 < planned["common"] < 360
    dropped = drift(Path(run_job(sampled_fake(tmp_path / "dropped", filters={"deny": ["^rare"]})).uri))
    assert dropped["flagged_variables"] == ["topic"]
    assert [v["value"] for v in dropped["variables"]["topic"]["values"] if v["flagged"]] == ["rare"]


def test_the_seed_samplers_example_runs_on_real_vllm(pool: Any, tiny_model: Path, tmp_path: Path) -> None:
    data = yaml.safe_load((EXAMPLES / "seed-samplers.yaml").read_text())
    data["prompts"]["template"]["rows"] = 24
    data |= {"model": {"path": str(tiny_model), **MODEL_ARGS}, "output": {"uri": str(tmp_path), "rows_per_shard": 8},
             "resources": RESOURCES, "sampling": {**data["sampling"], "max_tokens": 8}}
    spec = parse_spec(data)
    result = run_job(spec, pool=pool)
    rows = table(Path(result.uri)).to_pylist()
    assert result.rows_ok == len(rows) == 24
    subtopics = data["prompts"]["template"]["seeds"]["subtopic"]["conditional"]["values"]
    for r in rows:
        assert r["subtopic"] in subtopics[r["topic"]] and 8 <= r["age"] <= 16 and len(r["styles"]) == 2
        assert f"about {r['subtopic']} ({r['topic']})" in r["messages"][0]["content"]
        assert 0.6 < json.loads(r["lineage"]["sampling"])["temperature"] < 1.1


def persona_file(path: Path, rows: int) -> Path:
    pq.write_table(pa.table({"id": list(range(rows)), "name": [f"p{i}" for i in range(rows)],
                             "age": [20 + i % 50 for i in range(rows)]}), path, row_group_size=64)
    return path


def test_a_seed_file_gives_each_row_a_distinct_file_row_on_any_shards_and_workers(ray_runtime: None,
                                                                                 tmp_path: Path) -> None:
    """A persona file of 1,000 rows (every row names itself): 300 rows drawn without replacement, the
    same on 50-row shards over two workers and 7-row shards on one, each row the file's row whole."""
    personas = {"from_file": {"uri": str(persona_file(tmp_path / "personas.parquet", 1000)),
                              "columns": ["id", "name", "age"]}}

    def job(out: str, rows_per_shard: int, workers: int) -> JobSpec:
        spec = sampled_fake(tmp_path / out, rows_per_shard=rows_per_shard, workers=workers)
        template = spec.prompts.template.model_dump(exclude_none=True) | {  # type: ignore[union-attr]
            "text": "{{ persona.name }} is {{ persona.age }}; {{ topic }}", "rows": 300,
            "seeds": {"persona": personas, "topic": SEEDS["topic"]}}
        return parse_spec(spec.model_dump(mode="json", exclude_none=True) | {"prompts": {"template": template}})

    a, b = run_job(job("a", 50, 2)), run_job(job("b", 7, 1))
    assert a.job_id == b.job_id and a.rows_ok == b.rows_ok == 300
    ta, tb = table(Path(a.uri)), table(Path(b.uri))
    assert str(ta.schema.field("persona").type) == "string"  # the row's columns as JSON text
    rows = sorted(ta.select(["row_id", "persona", "topic", "completion"]).to_pylist(), key=str)
    assert rows == sorted(tb.select(["row_id", "persona", "topic", "completion"]).to_pylist(), key=str)
    personas_drawn = [json.loads(r["persona"]) for r in rows]
    assert len({p["id"] for p in personas_drawn}) == 300
    for r, p in zip(rows, personas_drawn, strict=True):
        assert p == {"id": p["id"], "name": f"p{p['id']}", "age": 20 + p["id"] % 50}
        assert r["completion"].startswith(f"p{p['id']} is {p['age']}; {r['topic']}")
