"""The recipes of examples/ as jobs on real Ray and the tiny vLLM model: each stage sees exactly what the
earlier ones wrote, conversations are served from the prefix cache, pairs load as TRL's DPO format,
and a worker killed mid-pipeline loses and duplicates nothing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pyarrow.dataset as ds
import yaml

from orchestrator.commit import layout
from orchestrator.plan.planner import make_plan, row_id
from orchestrator.run.driver import run_job
from orchestrator.run.pool import WorkerPool
from orchestrator.spec.job import JobSpec
from orchestrator.spec.load import parse_spec
from tests.integration.conftest import MODEL_ARGS, RESOURCES
from tests.integration.test_dispatch import _kill_after_first_commit

EXAMPLES = Path(__file__).parents[2] / "examples"
BLOCK = MODEL_ARGS["engine_args"]["block_size"]  # type: ignore[index]


SHORT_JUDGE = {"levels": {1: "wrong", 2: "vague", 3: "right"}, "reason_max_chars": 24, "rubric": "Correct."}


def recipe(name: str, model: Path, out: Path, *, max_tokens: int = 12, values: int = 2,
           **stages: dict[str, Any]) -> JobSpec:
    """An example recipe on the session's tiny model, on `values` values of each seed, short replies
    (`stages[name]` updates that stage's fields), so every conversation fits the 256-token context."""
    data = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    seeds = data["prompts"]["template"]["seeds"]
    data["prompts"]["template"]["seeds"] = {k: v[:values] for k, v in seeds.items()}
    data |= {"model": {"path": str(model), **MODEL_ARGS}, "output": {"uri": str(out), "rows_per_shard": 2},
             "resources": RESOURCES}
    data["sampling"]["max_tokens"] = max_tokens
    for stage in data["stages"]:
        if "sampling" in stage:
            stage["sampling"].pop("max_tokens", None)
        stage.update(stages.get(stage["name"], {}))
    return parse_spec(data)


def rows(job: Path, split: str) -> list[dict[str, Any]]:
    folder = job / split
    return ds.dataset(folder, format="parquet").to_table().to_pylist() if folder.exists() else []


def every_row_once(spec: JobSpec, job: Path, per_row: int = 1) -> dict[str, list[dict[str, Any]]]:
    """Each planned row ends `per_row` times (its branches), each (row, branch) in exactly one split."""
    out = {split: rows(job, split) for split in ("data", "errors", "rejected")}
    seen = Counter((r["row_id"], r["sample_index"]) for split in out.values() for r in split)
    plan = make_plan(spec)
    assert set(seen.values()) == {1}
    assert Counter(r for r, _ in seen) == {row_id(plan.spec_hash, i): per_row for i in range(plan.total_rows)}
    return out


def whole_blocks(tokens: int) -> int:
    return tokens // BLOCK * BLOCK


def test_qa_pipeline_answers_exactly_the_question_it_wrote(pool: Any, tiny_model: Path, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"question": {"type": "string", "maxLength": 8},
                                               "difficulty": {"enum": ["easy", "medium", "hard"]}},
              "required": ["question", "difficulty"], "additionalProperties": False}
    spec = recipe("qa-pipeline", tiny_model, tmp_path, question={"sampling": {"json_schema": schema, "max_tokens": 40}},
                  score={**SHORT_JUDGE, "min_score": 2})
    result = run_job(spec, pool=pool)
    out = every_row_once(spec, Path(result.uri))
    passed = out["data"] + out["rejected"]
    assert passed, [(r["at_stage"], r["error_message"]) for r in out["errors"][:3]]
    for r in passed:  # the answer stage was asked the question stage's JSON fields, exactly
        q = json.loads(r["question"])
        asked = r["messages"][1]["content"]
        assert asked == f"Answer this {q['difficulty']} question for {r['audience']}: {q['question']}"
        assert r["messages"][2] == {"role": "assistant", "content": r["answer"]} == {
            "role": "assistant", "content": r["completion"]}
    for r in out["data"]:
        assert r["score_score"] >= 2 and isinstance(r["score_reason"], str)
    reasons = Counter(r["reject_reason"] for r in out["rejected"])
    assert set(reasons) <= {"judge_low_score", "too_short"}
    manifest = json.loads((Path(result.uri) / layout.MANIFEST).read_text())
    assert manifest["judge_completion_tokens"] > 0 and manifest["judge_cached_tokens"] > 0


def test_multi_turn_is_one_conversation_served_from_the_prefix_cache(pool: Any, tiny_model: Path,
                                                                     tmp_path: Path) -> None:
    spec = recipe("multi-turn", tiny_model, tmp_path, max_tokens=8)
    result = run_job(spec, pool=pool)
    out = every_row_once(spec, Path(result.uri))
    ended = out["data"] + out["rejected"]
    assert len(ended) == make_plan(spec).total_rows and not out["errors"]
    for r in ended:
        turns = r["messages"]
        assert [m["role"] for m in turns] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
        assert [m["content"] for m in turns[1:]] == [r["user_1"], r["assistant_1"], r["user_2"], r["assistant_2"],
                                                     r["user_3"], r["assistant_3"]]
        # Each continued turn is sent as the conversation's token ids: vLLM serves every whole KV block of
        # the conversation so far (its last written token has no KV) from its prefix cache.
        for stage, before in (("assistant_2", "assistant_1"), ("assistant_3", "assistant_2"),
                              ("user_2", "user_1"), ("user_3", "user_2")):
            held = r[f"{before}_prompt_tokens"] + r[f"{before}_completion_tokens"] - 1
            assert r[f"{stage}_cached_tokens"] >= whole_blocks(held) > 0
    data = datasets.Dataset.from_list(ended)  # TRL's SFTTrainer reads `messages` as list of {role, content}
    turn = data.features["messages"].feature  # datasets' List of {role, content} strings
    assert turn == {"role": datasets.Value("string"), "content": datasets.Value("string")}


def test_preference_pairs_load_as_trl_dpo_rows(pool: Any, tiny_model: Path, tmp_path: Path) -> None:
    spec = recipe("preference-pairs", tiny_model, tmp_path, values=3, score={**SHORT_JUDGE, "min_score": 1})
    result = run_job(spec, pool=pool)
    out = every_row_once(spec, Path(result.uri))
    pairs = out["data"]
    total = make_plan(spec).total_rows
    ended = Counter(r["reject_reason"] for r in out["rejected"])
    assert len(pairs) + ended["select_tie"] + ended["select_too_few"] == total  # every row: a pair or a reason
    assert pairs, ended
    for r in pairs:
        assert r["chosen_score"] > r["rejected_score"] and r["chosen"] != r["rejected"]
        assert r["prompt"] == f"{r['task']} {r['subject']}." and r["completion"] == r["chosen"]
    table = datasets.Dataset.from_list(pairs).select_columns(["prompt", "chosen", "rejected"])
    assert all(table.features[c] == datasets.Value("string") for c in ("prompt", "chosen", "rejected"))


def test_evol_instruct_answers_the_evolved_instruction(pool: Any, tiny_model: Path, tmp_path: Path) -> None:
    spec = recipe("evol-instruct", tiny_model, tmp_path, max_tokens=24)
    result = run_job(spec, pool=pool)
    out = every_row_once(spec, Path(result.uri))
    for r in out["data"]:
        assert r["messages"][0] == {"role": "user", "content": r["evolved"]}
    assert {r["at_stage"] for r in out["rejected"]} <= {"evolved"}


def staged_fake(out: Path, **sections: Any) -> JobSpec:
    return parse_spec({
        "name": "staged-fake",
        "model": {"path": "fake-model", "engine": "fake", "engine_args": {"tokens_per_s": 400, "echo": True}},
        "prompts": {"template": {"seeds": {"i": list(range(40))}}},
        "sampling": {"max_tokens": 8},
        "stages": [{"name": "draft", "text": "row {{ i }}", "sampling": {"n": 2}},
                   {"name": "polish", "text": "polish {{ draft }}"}],
        "output": {"uri": str(out), "rows_per_shard": 4},
        "resources": {"workers": 2, "gpus_per_worker": 0, "cpus_per_worker": 0, "max_attempts": 3},
        **sections,
    })


def test_a_worker_killed_mid_pipeline_and_a_rerun_give_every_branch_once(ray_runtime: None, tmp_path: Path) -> None:
    spec = staged_fake(tmp_path)
    pool = WorkerPool(spec.model, spec.resources)
    try:
        result = run_job(spec, pool=pool, on_progress=_kill_after_first_commit(pool, 1))
        assert result.workers_replaced == 1
        out = every_row_once(spec, Path(result.uri), per_row=2)
        assert len(out["data"]) == 80
        assert all(r["polish"].startswith(f"polish {r['draft']}") for r in out["data"])
        again = run_job(spec, pool=pool)
        assert again.shards_generated == 0 and again.rows_ok == 80 and every_row_once(spec, Path(again.uri), per_row=2)["data"] == out["data"]
    finally:
        pool.close()


def test_dedup_compares_the_stage_it_is_given(ray_runtime: None, tmp_path: Path) -> None:
    """Drafts repeat every 4 rows, polished texts never do: dedup by `draft` keeps one row per distinct draft."""
    stages = [{"name": "draft", "text": "row {{ i % 4 }}"}, {"name": "polish", "text": "polish {{ i }}"}]
    for column, kept in (("draft", 4), ("completion", 40)):
        spec = staged_fake(tmp_path / column, stages=stages, dedup={"column": column, "near_threshold": None})
        result = run_job(spec)
        out = every_row_once(spec, Path(result.uri))
        assert len(out["data"]) == kept
        assert {r["reject_reason"] for r in out["rejected"]} <= {"exact_duplicate"} and len(out["rejected"]) == 40 - kept
        if column == "draft":
            assert sorted(int(r["draft"].split()[1]) for r in out["data"]) == [0, 1, 2, 3]


def test_diversity_reads_the_column_it_is_given(ray_runtime: None, tmp_path: Path) -> None:
    """Echoed drafts are `row <i % 4>` + 8 `tok`s (6 distinct of 400 words); polished texts add `polish` and
    8 more `tok`s (7 distinct of 760): the diversity measured is the named stage's, exactly."""
    stages = [{"name": "draft", "text": "row {{ i % 4 }}"}, {"name": "polish", "text": "polish {{ draft }}"}]
    for column, distinct_1 in (("draft", 6 / 400), ("completion", 7 / 760)):
        spec = staged_fake(tmp_path / column, stages=stages, quality={"column": column})
        manifest = json.loads((Path(run_job(spec).uri) / layout.MANIFEST).read_text())
        assert manifest["quality"]["sample_rows"] == 40
        assert manifest["quality"]["diversity"]["distinct_1"] == distinct_1
        assert manifest["quality"]["diversity_column"] == column
