"""Whole jobs on real components: local Ray, vLLM CPU with the tiny model, a folder and S3."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from orchestrator.commit import layout
from orchestrator.plan.planner import make_plan, row_id
from orchestrator.results import read_table
from orchestrator.run.driver import Progress, run_job
from tests.integration.conftest import make_spec

TOPICS = {"template": {
    "messages": [{"role": "system", "content": "You write short facts."},
                 {"role": "user", "content": "Tell me about {{ topic }} for {{ reader }}."}],
    "seeds": {"topic": ["rain", "stars", "bees", "salt", "wind"], "reader": ["kids", "adults", "experts", "cats"]},
}}


def _all_rows(job_uri: str) -> tuple[pa.Table, pa.Table]:
    return read_table(job_uri), read_table(job_uri, errors=True)


def _assert_exactly_once(spec: Any, data: pa.Table, errors: pa.Table | None) -> None:
    plan = make_plan(spec)
    seen = data.column("row_id").to_pylist() + (errors.column("row_id").to_pylist() if errors else [])
    counts = Counter(seen)
    expected = {row_id(plan.spec_hash, i) for i in range(plan.total_rows)}
    assert set(counts) == expected
    assert max(counts.values()) == spec.sampling.n


def test_job_to_a_folder_reads_back_with_pyarrow_pandas_and_hf_datasets(pool: Any, tiny_model: Path,
                                                                         tmp_path: Path) -> None:
    import pandas as pd
    from datasets import load_dataset

    out = tmp_path / "out"
    spec = make_spec(tiny_model, str(out), TOPICS)
    result = run_job(spec, pool=pool)
    job = out / spec.job_id
    table = ds.dataset(job / "data", format="parquet").to_table()
    assert result.rows_ok == table.num_rows == 20 and result.rows_failed == 0
    # the README's other readers see the same rows: `_`-prefixed files are skipped by each of them
    ids = sorted(table.column("row_id").to_pylist())
    assert sorted(pd.read_parquet(job / "data")["row_id"]) == ids
    hf = load_dataset("parquet", data_dir=str(job / "data"), split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(hf["row_id"]) == ids and hf[0]["lineage"]["spec_hash"] == spec.content_hash()
    assert sorted(p.name for p in (job / "data").iterdir()) == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert (job / layout.SUCCESS).exists() and json.loads((job / "spec.json").read_text())["name"] == "it"
    manifest = json.loads((job / layout.MANIFEST).read_text())
    assert manifest["completion_tokens"] == sum(table.column("completion_tokens").to_pylist()) > 0
    row = table.to_pylist()[0]
    assert row["topic"] in TOPICS["template"]["seeds"]["topic"] and row["messages"][1]["role"] == "user"
    assert row["lineage"]["spec_hash"] == spec.content_hash()
    assert row["lineage"]["model_revision"].startswith("sha256:") and row["lineage"]["template_hash"]
    _assert_exactly_once(spec, table, None)


def test_job_to_s3_reads_back_through_boto3_and_pyarrow(pool: Any, tiny_model: Path, bucket: str,
                                                      s3_endpoint: str) -> None:
    from pyarrow import fs

    spec = make_spec(tiny_model, f"s3://{bucket}/runs", TOPICS)
    result = run_job(spec, pool=pool)
    assert result.uri == f"s3://{bucket}/runs/{spec.job_id}"
    s3 = fs.S3FileSystem(endpoint_override=s3_endpoint.removeprefix("http://"), scheme="http",
                         access_key="testing", secret_key="testing", region="us-east-1")
    table = ds.dataset(f"{bucket}/runs/{spec.job_id}/data", filesystem=s3, format="parquet").to_table()
    assert table.num_rows == result.rows_ok == 20
    data, errors = _all_rows(result.uri)
    _assert_exactly_once(spec, data, errors)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_regenerates_nothing_committed(pool: Any, tiny_model: Path,
                                                               tmp_path: Path) -> None:
    spec = make_spec(tiny_model, str(tmp_path), TOPICS, rows_per_shard=2,
                     resources={"workers": 2, "gpus_per_worker": 0, "cpus_per_worker": 1, "shards_in_flight": 1})

    def stop_after_two(p: Progress) -> None:
        if p.rows_done >= 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_job(spec, pool=pool, on_progress=stop_after_two)
    data_dir = tmp_path / spec.job_id / "data"
    committed = {p.name: p.read_bytes() for p in data_dir.iterdir()}
    # Two shards done when the run stops; attempts already under way may still land (a commit under
    # way completes). What matters: the job stopped short of its end, and nothing committed is redone.
    assert 2 <= len(committed) < 10 and not (tmp_path / spec.job_id / layout.MANIFEST).exists()

    before = pool.requests()
    result = run_job(spec, pool=pool)
    # Every engine request of the second run went into a shard it committed itself: nothing
    # committed before was generated again (an attempt cancelled mid-commit may still land late).
    assert pool.requests() - before == 2 * result.shards_generated
    assert 1 <= result.shards_generated <= 10 - len(committed)
    assert {n: (data_dir / n).read_bytes() for n in committed} == committed
    _assert_exactly_once(spec, *_all_rows(result.uri))

    again = pool.requests()
    assert run_job(spec, pool=pool).shards_generated == 0 and pool.requests() == again


def test_bad_rows_go_to_errors_with_a_code_and_the_job_goes_on(pool: Any, tiny_model: Path,
                                                             tmp_path: Path) -> None:
    prompts = {"template": {"text": "{{ 12 // n }} {{ filler }}",
                            "seeds": {"n": [0, 1, 2, 3], "filler": ["hello", "word " * 400]}}}
    spec = make_spec(tiny_model, str(tmp_path), prompts)
    result = run_job(spec, pool=pool)
    data, errors = _all_rows(result.uri)
    assert errors is not None
    codes = Counter(zip(errors.column("n").to_pylist(), errors.column("error_code").to_pylist()))
    assert codes == {(0, "template_error"): 2, (1, "prompt_too_long"): 1, (2, "prompt_too_long"): 1,
                     (3, "prompt_too_long"): 1}
    assert data.num_rows == result.rows_ok == 3 and result.rows_failed == 5
    assert all(m for m in errors.column("error_message").to_pylist())
    _assert_exactly_once(spec, data, errors)


def test_openai_batch_input_round_trip_keeps_every_custom_id(pool: Any, tiny_model: Path, tmp_path: Path) -> None:
    lines = []
    for i in range(12):
        body: dict[str, Any] = {"model": "any", "max_tokens": 4 + i % 3}
        if i % 2:
            body["messages"] = [{"role": "user", "content": f"question {i}"}]
        else:
            body["prompt"] = f"complete {i}"
        url = "/v1/chat/completions" if i % 2 else "/v1/completions"
        lines.append(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}))
    lines.append(json.dumps({"custom_id": "req-bad-url", "method": "POST", "url": "/v1/embeddings", "body": {}}))
    lines.append('{"custom_id": "req-broken", "method": ')
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    spec = make_spec(tiny_model, str(tmp_path / "out"), {"openai_batch": {"uri": str(batch)}})
    result = run_job(spec, pool=pool)
    data, errors = _all_rows(result.uri)
    assert errors is not None
    assert sorted(data.column("custom_id").to_pylist()) == sorted(f"req-{i}" for i in range(12))
    assert errors.column("custom_id").to_pylist() == ["req-bad-url", None]
    assert set(errors.column("error_code").to_pylist()) == {"invalid_request"}
    by_id = {r["custom_id"]: r for r in data.to_pylist()}
    assert by_id["req-4"]["completion_tokens"] <= 5 and by_id["req-5"]["completion_tokens"] <= 6


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["score", "label"],
          "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10},
                         "label": {"enum": ["good", "bad"]}}}


def test_structured_output_yields_json_valid_against_the_schema(pool: Any, tiny_model: Path, tmp_path: Path) -> None:
    spec = make_spec(tiny_model, str(tmp_path), TOPICS,
                     sampling={"max_tokens": 48, "temperature": 1.0, "seed": 3, "json_schema": SCHEMA})
    result = run_job(spec, pool=pool)
    data, errors = _all_rows(result.uri)
    assert data.num_rows > 0
    for text in data.column("completion").to_pylist():
        jsonschema.validate(json.loads(text), SCHEMA)
    if errors.num_rows:
        assert set(errors.column("error_code").to_pylist()) == {"schema_violation"}
    _assert_exactly_once(spec, data, errors)


def test_parquet_prompt_file_on_s3_with_two_samples_per_prompt(pool: Any, tiny_model: Path, bucket: str) -> None:
    import io

    import boto3
    import pyarrow.parquet as pq

    prompts = pa.table({"prompt": [f"line {i}" for i in range(10)], "custom_id": [f"c{i}" for i in range(10)]})
    buf = io.BytesIO()
    pq.write_table(prompts, buf, row_group_size=3)
    boto3.client("s3").put_object(Bucket=bucket, Key="in/prompts.parquet", Body=buf.getvalue())
    spec = make_spec(tiny_model, f"s3://{bucket}/out", {"file": {"uri": f"s3://{bucket}/in/prompts.parquet"}},
                     sampling={"max_tokens": 8, "n": 2, "seed": 5, "temperature": 1.0})
    result = run_job(spec, pool=pool)
    data, errors = _all_rows(result.uri)
    assert errors.num_rows == 0 and data.num_rows == result.rows_ok == 20
    assert Counter(data.column("custom_id").to_pylist()) == {f"c{i}": 2 for i in range(10)}
    _assert_exactly_once(spec, data, errors)
