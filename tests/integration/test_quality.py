"""Quality gates on real components: the tiny vLLM model judges itself; dedup, report, drift and mixing
run in the finalize pass of real jobs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
from transformers import AutoTokenizer

from orchestrator.commit import layout
from orchestrator.plan.planner import make_plan, row_id
from orchestrator.run.driver import run_job
from orchestrator.spec.load import parse_spec
from tests.integration.conftest import RESOURCES, make_spec
from workers.engine import FollowUps
from workers.judge import follow_up, judge_sampling

# Short prompts, short answers, a three-level scale: judge prompt + judgement (and its continuation)
# fit the tests' 256-token context.
FACTS = {"template": {"text": "A fact about {{ topic }}:",
                      "seeds": {"topic": ["rain", "stars", "bees", "salt", "wind", "moss", "iron", "clay"],
                                "take": [1, 2, 3]}}}
LEVELS = {1: "false or vague", 2: "true but vague", 3: "true and specific"}
JUDGE = {"model": "self", "rubric": "The fact is true and specific.", "reason_max_chars": 40, "levels": LEVELS}


def _parquet_rows(folder: Path) -> list[dict[str, Any]]:
    return ds.dataset(folder, format="parquet").to_table().to_pylist() if folder.exists() else []


def _every_row_once(spec: Any, job: Path) -> None:
    """Every planned row is in exactly one place: data, errors or rejected."""
    plan = make_plan(spec)
    seen = Counter(r["row_id"] for d in ("data", "errors", "rejected") for r in _parquet_rows(job / d))
    assert set(seen) == {row_id(plan.spec_hash, i) for i in range(plan.total_rows)}
    assert set(seen.values()) == {spec.sampling.n}


def test_the_model_judges_its_own_rows_on_the_warm_engine(pool: Any, tiny_model: Path, tmp_path: Path) -> None:
    loads = pool.stats("engine_loads")
    spec = make_spec(tiny_model, str(tmp_path), FACTS, judge={**JUDGE, "min_score": 1},
                     sampling={"max_tokens": 32, "temperature": 0.9, "seed": 1})
    result = run_job(spec, pool=pool)
    job = tmp_path / spec.job_id
    assert pool.stats("engine_loads") == loads  # `self`: no second model load, no second pool
    data = _parquet_rows(job / "data")
    assert result.rows_failed == 0 and len(data) == 24  # every judgement scored, from random weights
    assert all(1 <= r["judge_score"] <= 3 and isinstance(r["judge_reason"], str) for r in data)
    # Random weights mostly write the reason until the budget: such a judgement is cut before its score
    # and continued for just the score (one digit, then the end of the grammar). One that closes its
    # reason in time (random weights do, now and then) is not continued.
    budget = judge_sampling(spec.judge).max_tokens
    cut = [bool(r["judge_cut"]) for r in data]
    assert sum(cut) >= 12  # the continuation path is exercised on most rows
    manifest = json.loads((job / layout.MANIFEST).read_text())
    judge = manifest["quality"]["judge"]
    assert sum(judge["scores"].values()) == 24 and judge["errors"] == 0
    assert sum(cut) * (budget + 2) <= manifest["judge_completion_tokens"] <= 24 * (budget + 2)
    if all(cut):
        assert manifest["judge_completion_tokens"] == 24 * (budget + 2)
    # Each judgement continues its row's conversation: every whole 32-token KV block of the row's
    # prompt and reply comes from the generation's prefix cache (an EOS gives way to the end of turn).
    # Its continuation reads the judgement's prompt and tokens: every whole block of them but the
    # last token written (which has no KV) comes from the judgement's cache.
    follow = FollowUps(AutoTokenizer.from_pretrained(tiny_model))
    judged = [r["prompt_tokens"] + r["completion_tokens"] - (r["finish_reason"] == "stop") for r in data]
    turns = [len(follow.turn(follow_up(spec.judge, cut=r["finish_reason"] == "length"))) for r in data]
    assert manifest["judge_cached_tokens"] == sum(
        n // 32 * 32 + (n + turn + budget - 1) // 32 * 32 * c for n, turn, c in zip(judged, turns, cut, strict=True))


def test_rows_below_the_threshold_go_to_rejected_with_the_judges_reason(pool: Any, tiny_model: Path,
                                                                        tmp_path: Path) -> None:
    spec = make_spec(tiny_model, str(tmp_path), FACTS, judge={**JUDGE, "min_score": 3})
    run_job(spec, pool=pool)
    job = tmp_path / spec.job_id
    data, rejected = _parquet_rows(job / "data"), _parquet_rows(job / "rejected")
    assert all(r["judge_score"] == 3 for r in data)
    assert rejected and all(r["reject_reason"] == "judge_low_score" and r["judge_score"] < 3 for r in rejected)
    assert all(r["reject_detail"].endswith(r["judge_reason"]) for r in rejected)
    _every_row_once(spec, job)


def test_dedup_report_reference_and_mix_in_one_job(pool: Any, tiny_model: Path, tmp_path: Path) -> None:
    """Greedy decoding of repeated prompts plants exact duplicates across shards; the finalize pass
    drops them, writes the report, compares with the reference and mixes in real rows."""
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps({"prompt": f"q{i}", "text": f"real answer number {i} about topic {i % 7}"})
                            + "\n" for i in range(100)))
    prompts = {"template": {"text": "Write about {{ topic }}.",
                            "seeds": {"topic": ["rain", "stars", "bees", "salt"], "copy": [1, 2, 3]}}}
    spec = make_spec(tiny_model, str(tmp_path / "out"), prompts, rows_per_shard=5,
                     sampling={"max_tokens": 16, "temperature": 0.0, "seed": 1},
                     dedup={"exact": True, "near_threshold": None}, quality={"reference": str(real)},
                     mix={"uri": str(real), "ratio": 0.2})
    result = run_job(spec, pool=pool)
    job = tmp_path / "out" / spec.job_id
    data, generated = _parquet_rows(job / "data"), _parquet_rows(job / layout.GENERATED_DIR)
    distinct = {r["completion"] for r in generated}
    assert len(generated) == 12 and len(distinct) <= 4  # each prompt thrice, decoded greedily
    assert result.rows_ok == len(data) == len(distinct) == len({r["completion"] for r in data})
    dups = _parquet_rows(job / "rejected")
    assert len(dups) == 12 - len(distinct) and {r["reject_reason"] for r in dups} == {"exact_duplicate"}
    kept_ids = {f"{r['row_id']}/{r['sample_index']}" for r in data}
    assert all(r["reject_detail"].removeprefix("duplicate of ") in kept_ids for r in dups)
    assert sorted(p.name for p in (job / layout.GENERATED_DIR).iterdir()) == [
        f"train-0000{i}-of-00003.parquet" for i in range(3)]
    _every_row_once(spec, job)
    manifest = json.loads((job / layout.MANIFEST).read_text())
    quality = manifest["quality"]
    assert quality["dedup"]["exact_duplicates"] == len(dups) and manifest["rejected"] == {"exact_duplicate": len(dups)}
    assert quality["reference"]["uri"] == str(real) and set(quality["reference"]["ratios"]) >= {"distinct_2"}
    assert (job / layout.REPORT).read_text().lstrip().lower().startswith("<!doctype html")
    pairs = quality["examples"]["duplicates"]
    assert pairs and all(p["original"] == p["completion"] and p["original_id"] in kept_ids for p in pairs)
    assert quality["finish_reasons"] and sum(quality["finish_reasons"].values()) == 12
    assert quality["mixed_drift"]["flagged_variables"] == []  # every kept row is mixed in: the mix is the same
    mixed = pq.read_table(job / layout.MIXED_DIR).to_pylist()
    real_rows = round(len(data) * 0.2 / 0.8)
    assert Counter(r["source"] for r in mixed) == {"synthetic": len(data), "real": real_rows}
    assert manifest["mixed"]["real_rows"] == real_rows
    assert {r["row_id"] for r in mixed if r["source"] == "synthetic"} == kept_ids
    assert all(r["lineage"]["spec_hash"] == spec.content_hash() for r in mixed if r["source"] == "synthetic")


def test_a_filter_that_removes_one_persona_is_flagged_as_bias_drift(ray_runtime: None, tmp_path: Path) -> None:
    """The fake engine echoes each prompt, so a deny pattern can silently remove one group."""
    def spec(filters: dict[str, Any] | None) -> Any:
        data = {"name": "drift", "model": {"path": "fake", "engine": "fake", "engine_args": {
                    "echo": True, "tokens_per_s": 1e6}},
                "prompts": {"template": {"text": "As a {{ persona }}, explain {{ topic }}.", "seeds": {
                    "persona": ["teacher", "pirate", "nurse"], "topic": [f"t{i}" for i in range(60)]}}},
                "sampling": {"max_tokens": 4}, "output": {"uri": str(tmp_path), "rows_per_shard": 30},
                "resources": {**RESOURCES, "workers": 1, "cpus_per_worker": 0}}
        return parse_spec({**data, "filters": filters} if filters else data)

    # Drops 30 of the 60 pirate rows: kept shares 0.4 / 0.2 / 0.4 against 1/3 planned; chi2 = 12, p = 0.0025.
    biased = run_job(spec({"deny": [r"pirate, explain t[1-3]\d\."]}))
    drift = json.loads((Path(biased.uri) / layout.MANIFEST).read_text())["quality"]["drift"]
    assert drift["flagged_variables"] == ["persona"]
    flagged = [v["value"] for v in drift["variables"]["persona"]["values"] if v["flagged"]]
    assert flagged == ["pirate"]
    unfiltered = run_job(spec(None))
    drift = json.loads((Path(unfiltered.uri) / layout.MANIFEST).read_text())["quality"]["drift"]
    assert drift["flagged_variables"] == [] and drift["flagged_values"] == 0


def test_a_judge_model_given_as_a_model_spec_judges_next_to_the_generator(ray_runtime: None, tiny_model: Path,
                                                                         tmp_path: Path) -> None:
    """Generation on the fake engine, judgement by the tiny vLLM model given as a model spec."""
    spec = parse_spec({
        "name": "judged-by-other", "model": {"path": "fake", "engine": "fake", "engine_args": {"echo": True}},
        "prompts": {"template": {"text": "A fact about {{ topic }}:", "seeds": {"topic": ["rain", "salt", "moss"]}}},
        "sampling": {"max_tokens": 8}, "output": {"uri": str(tmp_path), "rows_per_shard": 2},
        "judge": {"model": {"path": str(tiny_model), "max_model_len": 512, "dtype": "float32"},
                  "min_score": 1, "reason_max_chars": 40},  # the default five levels, in a transcript
        "resources": {**RESOURCES, "workers": 1, "cpus_per_worker": 0}})
    result = run_job(spec)
    data = _parquet_rows(Path(result.uri) / "data")
    assert result.rows_failed == 0 and len(data) == 3
    assert all(1 <= r["judge_score"] <= 5 and r["judge_cut"] for r in data)  # each continued for its score
    assert json.loads((Path(result.uri) / layout.MANIFEST).read_text())["judge_completion_tokens"] > 0


def test_the_client_reads_rejected_rows_and_the_quality_report(pool: Any, tiny_model: Path, tmp_path: Path) -> None:
    from orchestrator.client import Client

    with Client.local(str(tmp_path / "state"), pools=[pool]) as client:
        job = client.submit(make_spec(tiny_model, str(tmp_path / "out"), FACTS, filters={"max_chars": 1}))
        job.wait(timeout=600)
        assert job.read().num_rows == 0
        rejected = job.read(rejected=True)
        assert rejected.num_rows == 24 and set(rejected.column("reject_reason").to_pylist()) == {"too_long"}
        quality = job.quality()
        assert quality.rows.rejected == {"too_long": 24} and quality.rows.kept == 0
