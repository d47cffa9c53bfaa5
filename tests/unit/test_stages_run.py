"""Stages run on a shard: each stage reads what earlier ones wrote, fans out, judges, selects, and every
branch ends in exactly one of data/, errors/ or rejected/, naming its stage. The engine is a scripted
fake whose replies are planted per stage, so every expected value is known exactly."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq
import pytest

from orchestrator.commit import layout
from orchestrator.commit.shards import ShardStats, decode_footer
from orchestrator.errors import RowErrorCode
from orchestrator.plan.planner import make_plan
from orchestrator.spec.job import JobSpec
from orchestrator.storage import MemoryStore
from tests.unit.specs import chat, generate, judge_stage, make_staged, select_stage
from workers.engine import Completion, Engine
from workers.fake_engine import FakeEngine
from workers.pipeline import run_staged_shard
from workers.prompts import PromptRow, RowFailure

RESPONSE = re.compile(r"<response>\n(.*)\n</response>", re.DOTALL)
Reply = Callable[[PromptRow, int], str | RowFailure]  # (request, sample) -> the reply's text


class Scripted:
    """Replies planted per stage: `replies[stage](request, sample)`; a judge request is answered with the
    score `scores(judged text)`. Every request is kept, by stage, to check what each stage was sent."""

    def __init__(self, replies: dict[str, Reply], scores: Callable[[str], int] = lambda text: 5,
                 ids: bool = False):
        self.replies, self.scores, self.ids = replies, scores, ids
        self.requests: dict[str, list[PromptRow]] = {}

    def __call__(self, row: PromptRow, follow_up: str | None) -> list[Completion] | RowFailure:
        if row.sampling.json_schema is not None and "score" in row.sampling.json_schema.get("properties", {}):
            judged = RESPONSE.search((row.messages or [{}])[-1]["content"])
            assert judged is not None, "a separate-engine judge reads a transcript"
            self.requests.setdefault("<judge>", []).append(row)
            text = json.dumps({"reason": "planted", "score": self.scores(judged.group(1))})
            return [Completion(text, "stop", 40, 9)]
        _, stage, sample = row.row_id.rsplit("-", 2)
        self.requests.setdefault(stage, []).append(row)
        out = []
        for k in range(row.sampling.n):
            text = self.replies[stage](row, int(sample) + k)
            if isinstance(text, RowFailure):
                return text
            ids = [7, 8, 9, len(text)] if self.ids and follow_up is not None else None
            out.append(Completion(text, "stop", 10, 3, cached_tokens=2, follow_up_ids=ids))
        return out


def run(spec: JobSpec, engine: Engine) -> tuple[dict[str, list[dict[str, Any]]], ShardStats]:
    """Run shard 0 of `spec` on `engine`: its data, errors and rejected rows, and its committed stats."""
    store, plan = MemoryStore(), make_plan(spec)
    outcome = asyncio.run(run_staged_shard(lambda model: engine, store, spec, plan, plan.shard(0), attempt=1))
    assert outcome is not None and outcome.won
    blob = store.get(layout.commit_key(0, plan.num_shards, False))
    stats, errors, rejected = decode_footer(blob)
    data = pq.read_table(io.BytesIO(store.get(layout.data_key(0, plan.num_shards)))).to_pylist()
    return {"data": data, "errors": errors.to_pylist(), "rejected": rejected.to_pylist()}, stats


def one_shard(*stages: dict[str, Any], seeds: dict[str, list[Any]] | None = None, **sections: Any) -> JobSpec:
    return make_staged(*stages, seeds=seeds or {"topic": ["tides", "rust"]},
                       output={"uri": "out", "rows_per_shard": 64}, **sections)


def fixed(text: str) -> Reply:
    return lambda row, sample: text


def prompt_of(row: PromptRow) -> str:
    return row.prompt if row.prompt is not None else (row.messages or [])[-1]["content"]


def test_a_stage_reads_earlier_text_and_json_fields_exactly() -> None:
    question = '{"difficulty":"hard","text":"Why <b> & \\"tides\\"?"}'
    spec = one_shard(
        generate("question", sampling={"json_schema": {"type": "object", "properties": {
            "difficulty": {"type": "string"}, "text": {"type": "string"}}}}),
        generate("answer", "Answer {{ question.text }} ({{ question.difficulty }}) | {{ question }} | {{ topic }}"))
    engine = Scripted({"question": fixed(question), "answer": fixed("42")})
    rows, _ = run(spec, FakeEngine(engine))
    sent = sorted(prompt_of(r) for r in engine.requests["answer"])
    assert sent == [f'Answer Why <b> & "tides"? (hard) | {question} | {t}' for t in ("rust", "tides")]
    assert [(r["question"], r["answer"], r["completion"]) for r in rows["data"]] == [(question, "42", "42")] * 2


def test_a_continue_stage_is_the_next_turn_of_the_conversation_and_the_row_carries_all_of_it() -> None:
    spec = one_shard(chat("question", "Ask about {{ topic }}."), generate("answer", "Now answer it.", **{"continue": "question"}))
    engine = Scripted({"question": lambda r, s: f"Q:{prompt_of(r)}", "answer": fixed("A.")})
    rows, _ = run(spec, FakeEngine(engine))
    sent = {r.messages[0]["content"]: r.messages for r in engine.requests["answer"]}  # type: ignore[index]
    assert sent["Ask about tides."] == [{"role": "user", "content": "Ask about tides."},
                                        {"role": "assistant", "content": "Q:Ask about tides."},
                                        {"role": "user", "content": "Now answer it."}]
    row = next(r for r in rows["data"] if r["messages"][0]["content"] == "Ask about tides.")
    assert row["messages"] == [*sent["Ask about tides."], {"role": "assistant", "content": "A."}]
    assert row["prompt"] is None and row["completion"] == "A."


def test_a_continue_stage_sends_the_conversation_as_token_ids_when_the_engine_gives_them() -> None:
    spec = one_shard(chat("question"), generate("answer", "Now answer it.", **{"continue": "question"}))
    engine = Scripted({"question": fixed("Q?"), "answer": fixed("A.")}, ids=True)
    run(spec, FakeEngine(engine))
    for request in engine.requests["answer"]:
        assert request.prompt_token_ids == [7, 8, 9, 2]  # the conversation the question stage returned
        assert request.messages == [{"role": "user", "content": "Now answer it."}]  # only the new turn


def test_fan_out_gives_n_branches_with_distinct_ids_and_later_stages_run_once_per_branch() -> None:
    spec = one_shard(generate("draft", sampling={"n": 3}), generate("polish", "Polish: {{ draft }}"))
    engine = Scripted({"draft": lambda r, s: f"d{s}", "polish": lambda r, s: f"p:{prompt_of(r)}"})
    rows, _ = run(spec, FakeEngine(engine))
    ids = [(r["row_id"], r["sample_index"]) for r in rows["data"]]
    assert len(ids) == 6 and len(set(ids)) == 6
    assert sorted((r["sample_index"], r["polish"]) for r in rows["data"]) == \
        sorted((k, f"p:Polish: d{k}") for k in range(3) for _ in range(2))


PAIRS = (chat("answer", "Explain {{ topic }}.", sampling={"n": 4}), judge_stage("score", "answer", min_score=1),
         select_stage("pair", "score", "answer"))


def test_select_keeps_the_best_and_worst_scored_branch_as_a_dpo_pair() -> None:
    planted = {"a0": 3, "a1": 5, "a2": 1, "a3": 4}
    engine = Scripted({"answer": lambda r, s: f"a{s}"}, scores=planted.__getitem__)
    rows, _ = run(one_shard(*PAIRS), FakeEngine(engine))
    assert len(rows["data"]) == 2 and not rows["errors"] and not rows["rejected"]
    for r in rows["data"]:
        assert (r["chosen"], r["rejected"], r["chosen_score"], r["rejected_score"]) == ("a1", "a2", 5, 1)
        assert (r["pair_chosen"], r["pair_rejected"]) == ("a1", "a2")
        assert r["prompt"] == f"Explain {r['topic']}." and r["completion"] == "a1"
        assert r["answer"] is None and r["score_score"] is None  # per-branch columns are in the pair
    assert len({r["row_id"] for r in rows["data"]}) == 2


@pytest.mark.parametrize(("scores", "reason"), [({"a0": 4, "a1": 4, "a2": 4, "a3": 4}, "select_tie")])
def test_a_tie_rejects_the_row_with_a_reason(scores: dict[str, int], reason: str) -> None:
    engine = Scripted({"answer": lambda r, s: f"a{s}"}, scores=scores.__getitem__)
    rows, _ = run(one_shard(*PAIRS), FakeEngine(engine))
    assert not rows["data"]
    assert [(r["reject_reason"], r["at_stage"]) for r in rows["rejected"]] == [(reason, "pair")] * 2
    assert "all 4 scored branches" in rows["rejected"][0]["reject_detail"]


def test_a_row_with_fewer_than_two_valid_branches_is_rejected_and_its_failed_branches_kept() -> None:
    engine = Scripted({"answer": lambda r, s: f"a{s}"}, scores=lambda t: 5 if t == "a0" else 1)
    spec = one_shard(chat("answer", "Explain {{ topic }}.", sampling={"n": 4}),
                     judge_stage("score", "answer", min_score=3), select_stage("pair", "score", "answer"))
    rows, _ = run(spec, FakeEngine(engine))
    assert not rows["data"] and not rows["errors"]
    low = [r for r in rows["rejected"] if r["reject_reason"] == "judge_low_score"]
    assert sorted((r["row_id"], r["sample_index"]) for r in low) == sorted(
        (rid, k) for rid in {r["row_id"] for r in low} for k in (1, 2, 3))
    few = [r for r in rows["rejected"] if r["reject_reason"] == "select_too_few"]
    assert len(few) == 2 and all(r["at_stage"] == "pair" for r in few)


def test_a_failing_stage_sends_only_its_branch_to_errors_with_the_stage_name() -> None:
    def polish(row: PromptRow, sample: int) -> str | RowFailure:
        return RowFailure(RowErrorCode.PROMPT_TOO_LONG, "too long") if "d2" in prompt_of(row) else "ok"
    spec = one_shard(generate("draft", sampling={"n": 3}), generate("polish", "Polish: {{ draft }}"))
    rows, stats = run(spec, FakeEngine(Scripted({"draft": lambda r, s: f"d{s}", "polish": polish})))
    assert len(rows["data"]) == 4 and {r["sample_index"] for r in rows["data"]} == {0, 1}
    assert [(r["sample_index"], r["at_stage"], r["error_code"], r["draft"]) for r in rows["errors"]] == \
        [(2, "polish", "prompt_too_long", "d2")] * 2
    assert rows["errors"][0]["error_message"] == "stage polish: too long"
    assert stats.rows_failed == 2 and stats.failed == {"prompt_too_long": 2}


def test_a_template_error_fails_the_row_at_its_stage() -> None:
    spec = one_shard(generate("draft"), generate("polish", "{{ draft | int // 0 }}"))
    rows, _ = run(spec, FakeEngine(Scripted({"draft": fixed("7"), "polish": fixed("x")})))
    assert [(r["at_stage"], r["error_code"]) for r in rows["errors"]] == [("polish", "template_error")] * 2
    assert [r["draft"] for r in rows["errors"]] == ["7", "7"]


def test_when_skips_a_stage_for_the_rows_it_is_false_on() -> None:
    spec = one_shard(generate("draft"), generate("extra", "More on {{ draft }}", when="topic == 'rust'"))
    engine = Scripted({"draft": fixed("d"), "extra": fixed("e")})
    rows, _ = run(spec, FakeEngine(engine))
    assert sorted((r["topic"], r["extra"]) for r in rows["data"]) == [("rust", "e"), ("tides", None)]
    assert len(engine.requests["extra"]) == 1


def test_stage_filters_reject_the_branch_naming_the_stage() -> None:
    spec = one_shard(generate("draft", sampling={"n": 2}), generate("polish", "P {{ draft }}", filters={"min_chars": 3}))
    rows, _ = run(spec, FakeEngine(Scripted({"draft": lambda r, s: f"d{s}",
                                             "polish": lambda r, s: "ok" if "d0" in prompt_of(r) else "long"})))
    assert {r["sample_index"] for r in rows["data"]} == {1}
    assert [(r["reject_reason"], r["at_stage"], r["sample_index"]) for r in rows["rejected"]] == [("too_short", "polish", 0)] * 2
    assert rows["rejected"][0]["reject_detail"].startswith("stage polish: ")


def test_a_schema_violation_is_an_error_of_its_stage() -> None:
    spec = one_shard(generate("q", sampling={"json_schema": {"type": "object", "required": ["a"]}}), generate("b", "{{ q }}"))
    rows, _ = run(spec, FakeEngine(Scripted({"q": fixed('{"b": 1}'), "b": fixed("x")})))
    assert [(r["at_stage"], r["error_code"]) for r in rows["errors"]] == [("q", "schema_violation")] * 2


def test_the_top_level_judge_scores_the_last_stage_and_stats_count_every_request() -> None:
    spec = one_shard(generate("draft"), generate("polish", "P {{ draft }}"), judge={"rubric": "good", "min_score": 3})
    engine = Scripted({"draft": fixed("d"), "polish": fixed("p")}, scores=lambda t: 4 if t == "p" else 1)
    rows, stats = run(spec, FakeEngine(engine))
    assert [(r["judge_score"], r["completion"]) for r in rows["data"]] == [(4, "p")] * 2
    assert stats.judge_scores == {"4": 2}
    assert (stats.prompt_tokens, stats.completion_tokens) == (2 * 2 * 10, 2 * 2 * 3)
    assert (stats.judge_prompt_tokens, stats.judge_completion_tokens) == (2 * 40, 2 * 9)


def test_lineage_records_every_stage() -> None:
    spec = one_shard(generate("draft", sampling={"temperature": 0.3}), judge_stage("s", "draft"))
    rows, _ = run(spec, FakeEngine(Scripted({"draft": fixed("d")})))
    stages = json.loads(rows["data"][0]["lineage"]["stages"])
    assert [(s["name"], s["kind"], s["model"]) for s in stages] == [("draft", "generate", "self"), ("s", "judge", "self")]
    assert stages[0]["sampling"]["temperature"] == 0.3 and len(stages[0]["template_hash"]) == 16


def test_a_committed_shard_is_not_generated_again() -> None:
    spec, store = one_shard(generate("draft")), MemoryStore()
    plan = make_plan(spec)
    engine = FakeEngine(Scripted({"draft": fixed("d")}))
    first = asyncio.run(run_staged_shard(lambda m: engine, store, spec, plan, plan.shard(0), attempt=1))
    assert first is not None and engine.requests == 2
    assert asyncio.run(run_staged_shard(lambda m: engine, store, spec, plan, plan.shard(0), attempt=2)) is None
    assert engine.requests == 2


def test_the_quality_report_measures_each_stage_on_the_kept_rows() -> None:
    """Planted texts: drafts of 4 characters, polished texts of 2 + topic length, scored 2 when that is odd, else 4."""
    from orchestrator.finalize.finish import finalize
    from orchestrator.finalize.report import render_report

    spec = one_shard(generate("draft"), generate("polish", "{{ topic }}"),
                     judge_stage("s", "polish", min_score=1), seeds={"topic": ["tides", "rust", "sea", "moons"]})
    engine = Scripted({"draft": lambda r, s: "abcd", "polish": lambda r, s: f"p:{r.prompt}"},
                      scores=lambda t: 2 if len(t) % 2 else 4)
    store, plan = MemoryStore(), make_plan(spec)
    outcome = asyncio.run(run_staged_shard(lambda m: FakeEngine(engine), store, spec, plan, plan.shard(0), attempt=1))
    assert outcome is not None
    report = finalize(store, spec, plan, {0: outcome.stats}, started_at=0.0).quality
    assert report.stages is not None and list(report.stages) == ["draft", "polish", "s"]
    draft, polish, score = report.stages["draft"], report.stages["polish"], report.stages["s"]
    assert draft.chars is not None and (draft.rows, draft.chars.mean, draft.chars.max) == (4, 4, 4)
    assert polish.chars is not None and sorted([polish.chars.min, polish.chars.max]) == [5, 7]
    assert polish.chars.mean == sum(2 + len(t) for t in ("tides", "rust", "sea", "moons")) / 4
    assert draft.diversity is not None and draft.diversity["distinct_1"] == 1 / 4  # one word, four times
    assert (score.kind, score.rows, score.scores, score.mean) == ("judge", 4, {"1": 0, "2": 3, "3": 0, "4": 1, "5": 0}, 2.5)
    assert "Per stage" in render_report(report)
    assert report.json_dict().keys() >= {"stages"}


def test_progress_counts_carry_each_stage() -> None:
    spec = one_shard(generate("draft"), judge_stage("s", "draft"))
    counts: dict[str, int] = {}
    store, plan = MemoryStore(), make_plan(spec)
    engine = FakeEngine(Scripted({"draft": fixed("d")}))
    asyncio.run(run_staged_shard(lambda m: engine, store, spec, plan, plan.shard(0), attempt=1, counts=counts))
    assert counts == {"prompt_tokens/draft": 20, "prompt_tokens": 20, "completion_tokens/draft": 6,
                      "completion_tokens": 6, "prompt_tokens/s": 80, "completion_tokens/s": 18}


def test_a_row_whose_every_stage_was_skipped_is_kept_unjudged_by_the_top_level_judge() -> None:
    spec = one_shard(generate("draft", when="topic == 'rust'"), judge={"rubric": "good", "min_score": 1})
    rows, _ = run(spec, FakeEngine(Scripted({"draft": fixed("d")}, scores=lambda t: 4)))
    assert sorted((r["topic"], r["draft"], r["judge_score"]) for r in rows["data"]) == [
        ("rust", "d", 4), ("tides", None, None)]
