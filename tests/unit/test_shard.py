"""A worker's shard: render, generate on an engine, check, and commit every row to data or errors."""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from orchestrator import defaults
from orchestrator.commit import layout
from orchestrator.commit.shards import CommitOutcome
from orchestrator.errors import RowErrorCode
from orchestrator.plan.planner import Plan, make_plan, row_id
from orchestrator.spec.job import JobSpec
from orchestrator.storage import MemoryStore
from tests.unit.specs import file_spec, make_spec, template_spec
from workers.engine import SAME_TURN, Completion, EngineInfo, sampling_key
from workers.fake_engine import FakeEngine
from workers.judge import follow_up
from workers.prompts import PromptRow, RowFailure
from workers.shard import run_shard


def echo(row: PromptRow, follow_up: str | None) -> list[Completion]:
    """One completion per requested sample: the prompt, or the last message, back."""
    text = row.prompt if row.prompt is not None else (row.messages or [{}])[-1].get("content", "")
    return [Completion(text, "stop", 2, 3) for _ in range(row.sampling.n)]


def revision(name: str) -> EngineInfo:
    """The info of an engine whose weights are revision `name`."""
    return EngineInfo(model="fake", revision=name, load_seconds=0.0, max_model_len=256)


def run(engine: FakeEngine, store: MemoryStore, spec: JobSpec, plan: Plan, index: int = 0) -> CommitOutcome | None:
    return asyncio.run(run_shard(engine, store, spec, plan, plan.shard(index), attempt=1))


def data_rows(store: MemoryStore, plan: Plan, index: int = 0) -> pa.Table:
    return pq.read_table(io.BytesIO(store.get(layout.data_key(index, plan.num_shards))))


def error_rows(store: MemoryStore, plan: Plan, index: int = 0) -> pa.Table:
    key = layout.errors_key(index, plan.num_shards)
    return pq.read_table(io.BytesIO(store.get(key))) if store.exists(key) else pa.table({"row_id": []})


def generated(spec: JobSpec, engine: FakeEngine | None = None, index: int = 0) -> tuple[pa.Table, pa.Table, Plan]:
    store, plan = MemoryStore(), make_plan(spec)
    outcome = run(engine or FakeEngine(echo), store, spec, plan, index)
    assert outcome is not None and outcome.won
    return data_rows(store, plan, index), error_rows(store, plan, index), plan


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"]}


def json_reply(row: PromptRow, follow_up: str | None) -> list[Completion] | RowFailure:
    """Valid JSON for n >= 2, a schema violation for n == 1, not JSON for n == 3, an engine refusal for n == 4."""
    n = row.variables["n"]
    if n == 4:
        return RowFailure(RowErrorCode.PROMPT_TOO_LONG, "prompt is longer than the maximum model length")
    text = "not json" if n == 3 else json.dumps({"n": n - 1 if n == 1 else n})
    return [Completion(text, "stop", 4, 6)]


@pytest.fixture()
def mixed_spec() -> JobSpec:
    """Rows n = 0..5: n=0 fails its template, 1 violates the schema, 3 is not JSON, 4 is refused, 2 and 5 pass."""
    return make_spec(prompts={"template": {"text": "{{ 10 // n }}", "seeds": {"n": [0, 1, 2, 3, 4, 5]}}},
                     sampling={"max_tokens": 8, "json_schema": SCHEMA},
                     output={"uri": "out", "rows_per_shard": 6})


# --- every row accounted for ------------------------------------------------------------------

def test_every_row_of_the_shard_ends_in_exactly_one_of_data_or_errors(mixed_spec: JobSpec) -> None:
    data, errors, plan = generated(mixed_spec, FakeEngine(json_reply))
    ids = data["row_id"].to_pylist() + errors["row_id"].to_pylist()
    assert sorted(ids) == [row_id(plan.spec_hash, i) for i in range(6)]


def test_each_failure_carries_its_code(mixed_spec: JobSpec) -> None:
    _, errors, _ = generated(mixed_spec, FakeEngine(json_reply))
    codes = dict(zip(errors["n"].to_pylist(), errors["error_code"].to_pylist(), strict=True))
    assert codes == {0: "template_error", 1: "schema_violation", 3: "schema_violation", 4: "prompt_too_long"}


def test_completions_violating_the_json_schema_go_to_errors(mixed_spec: JobSpec) -> None:
    data, errors, _ = generated(mixed_spec, FakeEngine(json_reply))
    assert data["n"].to_pylist() == [2, 5]
    violations = errors.filter(pc.equal(errors["error_code"], "schema_violation")).to_pylist()
    assert [(r["n"], r["sample_index"]) for r in violations] == [(1, 0), (3, 0)]
    assert "not valid JSON" in violations[1]["error_message"]


def test_rows_failing_their_template_never_reach_the_engine(mixed_spec: JobSpec) -> None:
    engine = FakeEngine(json_reply)
    generated(mixed_spec, engine)
    assert engine.requests == 5


def test_error_rows_keep_no_sample_index_when_no_completion_was_made(mixed_spec: JobSpec) -> None:
    _, errors, _ = generated(mixed_spec, FakeEngine(json_reply))
    by_n = {r["n"]: r for r in errors.to_pylist()}
    assert by_n[0]["sample_index"] is None and by_n[4]["sample_index"] is None


def test_long_error_messages_are_truncated() -> None:
    spec = template_spec({"n": [1]})
    _, errors, _ = generated(spec, FakeEngine(lambda row, _: RowFailure(RowErrorCode.ENGINE_ERROR, "x" * 10_000)))
    assert len(errors["error_message"][0].as_py()) == defaults.ERROR_MESSAGE_MAX_CHARS


def test_each_of_n_completions_is_its_own_row() -> None:
    spec = make_spec(prompts={"template": {"text": "{{ w }}", "seeds": {"w": ["a", "b"]}}},
                     sampling={"n": 3}, output={"uri": "out", "rows_per_shard": 2})
    data, _, _ = generated(spec)
    assert data.num_rows == 6
    assert [(r["w"], r["sample_index"]) for r in data.to_pylist()] == [
        ("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]


# --- exactly once -----------------------------------------------------------------------------

def test_a_committed_shard_is_not_generated_again() -> None:
    spec = template_spec({"w": ["a", "b", "c"]})
    store, plan, engine = MemoryStore(), make_plan(spec), FakeEngine(echo)
    run(engine, store, spec, plan)
    requests, objects = engine.requests, dict(store.objects)
    assert run(engine, store, spec, plan) is None
    assert engine.requests == requests
    assert store.objects == objects


def test_the_outcome_reports_the_shard_stats() -> None:
    spec = template_spec({"n": [0, 1, 2]}, text="{{ 1 // n }}", rows_per_shard=3)
    store, plan = MemoryStore(), make_plan(spec)
    outcome = run(FakeEngine(echo, revision("rev-9")), store, spec, plan)
    assert outcome is not None and outcome.won
    s = outcome.stats
    assert (s.index, s.attempt, s.rows_ok, s.rows_failed) == (0, 1, 2, 1)
    assert (s.prompt_tokens, s.completion_tokens, s.model_revision) == (4, 6, "rev-9")


def test_only_the_shard_asked_for_is_generated() -> None:
    spec = template_spec({"w": list("abcde")}, text="{{ w }}", rows_per_shard=2)
    store, plan, engine = MemoryStore(), make_plan(spec), FakeEngine(echo)
    run(engine, store, spec, plan, index=1)
    assert data_rows(store, plan, 1)["prompt"].to_pylist() == ["c", "d"]
    assert list(store.list(layout.DATA_DIR + "/")) == [layout.data_key(1, 3)]
    assert engine.requests == 2


# --- columns ----------------------------------------------------------------------------------

def test_seed_variables_become_typed_columns() -> None:
    spec = template_spec({"i": [1, 2], "f": [0.5], "b": [True], "s": ["x"], "mixed": [1, "one"]},
                         text="{{ i }}{{ f }}{{ b }}{{ s }}{{ mixed }}", rows_per_shard=4)
    data, _, _ = generated(spec)
    types = {name: data.schema.field(name).type for name in ["i", "f", "b", "s", "mixed"]}
    assert types == {"i": pa.int64(), "f": pa.float64(), "b": pa.bool_(), "s": pa.string(), "mixed": pa.string()}
    assert data["i"].to_pylist() == [1, 1, 2, 2]


def test_mixed_type_seed_values_are_json_text_that_round_trips() -> None:
    data, _, _ = generated(template_spec({"mixed": [1, "1", "one"]}, text="{{ mixed }}", rows_per_shard=3))
    assert [json.loads(v) for v in data["mixed"].to_pylist()] == [1, "1", "one"]


def test_list_seed_values_are_stored_as_json_text() -> None:
    data, _, _ = generated(template_spec({"tags": [["a", "b"]]}, text="{{ tags | join(',') }}"))
    assert data["tags"].to_pylist() == ['["a", "b"]']
    assert data["prompt"].to_pylist() == ["a,b"]


def test_lineage_says_what_produced_each_row() -> None:
    spec = template_spec({"w": ["a", "b"]}, text="{{ w }}")
    data, _, plan = generated(spec, FakeEngine(echo, revision("rev-42")))
    lineage = data["lineage"].to_pylist()
    assert {(x["spec_hash"], x["model"], x["model_revision"]) for x in lineage} == {
        (plan.spec_hash, "org/model", "rev-42")}
    assert all(x["template_hash"] for x in lineage)
    assert len({x["seed"] for x in lineage}) == 2
    assert lineage[0]["sampling"] == sampling_key(spec.sampling)


def test_error_rows_carry_lineage_too(mixed_spec: JobSpec) -> None:
    _, errors, plan = generated(mixed_spec, FakeEngine(json_reply))
    assert {x["spec_hash"] for x in errors["lineage"].to_pylist()} == {plan.spec_hash}


def test_completion_columns_are_filled() -> None:
    data, _, _ = generated(template_spec({"w": ["hello"]}, text="{{ w }}"))
    row = data.to_pylist()[0]
    assert (row["completion"], row["finish_reason"], row["prompt_tokens"], row["completion_tokens"]) == (
        "hello", "stop", 2, 3)


def test_chat_rows_keep_their_messages() -> None:
    spec = make_spec(prompts={"template": {"messages": [{"role": "user", "content": "{{ q }}"}],
                                           "seeds": {"q": ["why?"]}}})
    data, _, _ = generated(spec)
    row = data.to_pylist()[0]
    assert (row["prompt"], row["messages"], row["completion"]) == (None, [{"role": "user", "content": "why?"}], "why?")


def test_batch_rows_keep_their_custom_id_and_own_schema(tmp_path: Path) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}
    lines = [{"custom_id": "good", "method": "POST", "url": "/v1/completions",
              "body": {"prompt": '{"n": 2}', "response_format": fmt}},
             {"custom_id": "bad", "method": "POST", "url": "/v1/completions",
              "body": {"prompt": '{"n": 0}', "response_format": fmt}},
             {"custom_id": "free", "method": "POST", "url": "/v1/completions", "body": {"prompt": "{}"}}]
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    data, errors, _ = generated(file_spec(str(path), kind="openai_batch", rows_per_shard=3))
    assert data["custom_id"].to_pylist() == ["good", "free"]
    assert errors.select(["custom_id", "error_code"]).to_pylist() == [
        {"custom_id": "bad", "error_code": "schema_violation"}]
    assert json.loads(data["lineage"][0].as_py()["sampling"])["json_schema"] == SCHEMA


# --- the judge, row by row ----------------------------------------------------------------------

VERDICTS = {0: '{"reason":"good","score":5}', 1: '{"reason":"vague","score":2}', 2: '{"reason":"ok","score":4}',
            3: '{"score": "nine"}'}
ANSWER = re.compile(r"<response>\nanswer (\d+)\n</response>")


class JudgingHandler:
    """Echoes rows (row i after `delays[i]` s) and judges them: the verdict follows the row index it
    finds in the follow-up ids (self) or in the transcript (a separate judge). The judgements of rows
    in `cut` reach their budget inside the reason, and their continuation scores them 3. Logs what it
    wrote and judged, the follow-ups it was asked for, and the judge's requests."""

    def __init__(self, delays: dict[int, float] | None = None, cut: frozenset[int] = frozenset()):
        self.delays, self.cut = delays or {}, cut
        self.log: list[str] = []
        self.follow_ups: list[str | None] = []
        self.judge_rows: list[PromptRow] = []

    async def __call__(self, row: PromptRow, follow_up: str | None) -> list[Completion] | RowFailure:
        if row.index == -1:
            self.log.append(f"judge {row.row_id}")
            self.judge_rows.append(row)
            if row.row_id.endswith("-score"):
                return [Completion("3", "stop", 50, 2, cached_tokens=48)]
            asked = row.prompt_token_ids[0] if row.prompt_token_ids else int(ANSWER.search(
                (row.messages or [])[1]["content"]).group(1))  # type: ignore[union-attr]
            ids = None if follow_up is None else [asked, 1, 2, 9]
            if asked in self.cut:
                return [Completion('{"reason":"ok but lo', "length", 40, 6, cached_tokens=32, follow_up_ids=ids)]
            return [Completion(VERDICTS[asked], "stop", 40, 6, cached_tokens=32, follow_up_ids=ids)]
        await asyncio.sleep(self.delays.get(row.index, 0.0))
        self.log.append(f"wrote {row.row_id}")
        self.follow_ups.append(follow_up)
        ids = None if follow_up is None else [row.index, 1, 2]
        return [Completion(f"answer {row.index}", "stop", 2, 3, follow_up_ids=ids)]


def judged_spec(**sections: Any) -> JobSpec:
    return make_spec(prompts={"template": {"text": "{{ i }}", "seeds": {"i": [0, 1, 2, 3]}}},
                     output={"uri": "out", "rows_per_shard": 4}, **sections)


def test_the_self_judge_scores_each_reply_in_its_own_conversation() -> None:
    judging, store = JudgingHandler(), MemoryStore()
    spec = judged_spec(judge={"min_score": 3})
    plan = make_plan(spec)
    outcome = run(FakeEngine(judging), store, spec, plan)
    assert outcome is not None and outcome.stats.judge_cached_tokens == 3 * 32
    assert set(judging.follow_ups) == {SAME_TURN}  # the engine that wrote the replies gives their ids
    assert sorted(r.prompt_token_ids[0] for r in judging.judge_rows if r.prompt_token_ids) == [0, 1, 2, 3]
    assert all(r.messages == [{"role": "user", "content": follow_up(spec.judge)}] for r in judging.judge_rows)
    data = data_rows(store, plan).to_pylist()
    assert [(r["i"], r["judge_score"], r["judge_reason"], r["judge_cut"]) for r in data] == [
        (0, 5, "good", False), (2, 4, "ok", False)]
    rejected = pq.read_table(io.BytesIO(store.get(layout.rejected_key(0, 1)))).to_pylist()
    assert [(r["i"], r["reject_reason"], r["reject_detail"]) for r in rejected] == [
        (1, "judge_low_score", "2 < 3: vague")]
    assert error_rows(store, plan).select(["i", "error_code"]).to_pylist() == [{"i": 3, "error_code": "judge_error"}]


def test_a_judgement_cut_before_its_score_is_continued_and_the_row_says_it_was_cut() -> None:
    judging, store = JudgingHandler(cut=frozenset({2})), MemoryStore()
    spec = judged_spec(judge={"min_score": 3})
    plan = make_plan(spec)
    outcome = run(FakeEngine(judging), store, spec, plan)
    (score,) = [r for r in judging.judge_rows if r.row_id.endswith("-score")]
    assert score.prompt_token_ids == [2, 1, 2, 9] and score.prompt == '","score":'
    data = data_rows(store, plan).to_pylist()
    assert [(r["i"], r["judge_score"], r["judge_reason"], r["judge_cut"]) for r in data] == [
        (0, 5, "good", False), (2, 3, "ok but lo", True)]
    assert outcome is not None and outcome.stats.judge_cached_tokens == 3 * 32 + 48  # both requests of row 2
    assert outcome.stats.judge_prompt_tokens == 3 * 40 + 50 and outcome.stats.judge_completion_tokens == 3 * 6 + 2


def test_rows_a_filter_rejects_are_never_judged() -> None:
    judging = JudgingHandler()
    spec = judged_spec(judge={"min_score": 1}, filters={"deny": ["answer [13]"]})
    run(FakeEngine(judging), MemoryStore(), spec, make_plan(spec))
    assert sorted(x for x in judging.log if x.startswith("judge")) == [
        f"judge {row_id(make_plan(spec).spec_hash, i)}-judge0" for i in (0, 2)]


def test_each_reply_is_judged_as_soon_as_it_is_written() -> None:
    """While row 0 is still generating, rows 1-3 are already judged (their KV is still cached)."""
    judging = JudgingHandler(delays={0: 0.2})
    spec = judged_spec(judge={"min_score": 1})
    run(FakeEngine(judging), MemoryStore(), spec, make_plan(spec))
    slow = row_id(make_plan(spec).spec_hash, 0)
    assert judging.log.index(f"wrote {slow}") > judging.log.index(f"judge {row_id(make_plan(spec).spec_hash, 1)}-judge0")


def test_the_judge_reads_each_rows_reference_answer_from_its_prompt_file(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}", "gold": f"gold answer {i}"}) + "\n" for i in range(4)))
    judging = JudgingHandler()
    spec = file_spec(str(path), rows_per_shard=4, judge={"min_score": 1, "reference": "gold"})
    run(FakeEngine(judging), MemoryStore(), spec, make_plan(spec))
    turns = {(r.prompt_token_ids or [])[0]: (r.messages or [])[0]["content"] for r in judging.judge_rows}
    assert sorted(turns) == [0, 1, 2, 3]
    assert all(f"<reference>\ngold answer {i}\n</reference>" in turn for i, turn in turns.items())


def test_a_separate_judge_model_reads_a_transcript_and_the_generator_is_not_asked_for_follow_ups() -> None:
    generator, judge, store = JudgingHandler(), JudgingHandler(), MemoryStore()
    spec = judged_spec(judge={"min_score": 3})
    plan = make_plan(spec)
    asyncio.run(run_shard(FakeEngine(generator), store, spec, plan, plan.shard(0), attempt=1, judge=FakeEngine(judge)))
    assert generator.follow_ups == [None] * 4 and not any(x.startswith("judge") for x in generator.log)
    assert len([x for x in judge.log if x.startswith("judge")]) == 4
    assert all(r.prompt_token_ids is None and (r.messages or [{}])[0].get("role") == "system" for r in judge.judge_rows)
    assert [r["judge_score"] for r in data_rows(store, plan).to_pylist()] == [5, 4]


def test_a_separate_judge_continues_its_own_cut_judgement() -> None:
    generator, judge, store = JudgingHandler(), JudgingHandler(cut=frozenset({0})), MemoryStore()
    spec = judged_spec(judge={"min_score": 3})
    plan = make_plan(spec)
    asyncio.run(run_shard(FakeEngine(generator), store, spec, plan, plan.shard(0), attempt=1, judge=FakeEngine(judge)))
    (score,) = [r for r in judge.judge_rows if r.row_id.endswith("-score")]
    assert score.prompt_token_ids == [0, 1, 2, 9] and score.prompt == '","score":'
    assert [(r["i"], r["judge_score"], r["judge_cut"]) for r in data_rows(store, plan).to_pylist()] == [
        (0, 3, True), (2, 4, False)]


# --- filters in a shard: filler stripped before the checks and the judge ------------------------------

def chatty(row: PromptRow, follow_up: str | None) -> list[Completion]:
    """An answer wrapped in filler; row 3 is nothing but filler."""
    if row.prompt == "3":
        return [Completion("Of course! I hope this helps!", "stop", 2, 3)]
    return [Completion(f"Sure! The answer is {row.prompt}.\n\nI hope this helps!", "stop", 2, 3)]


def test_filler_is_stripped_from_the_stored_completion_and_counted_in_the_shard_stats() -> None:
    store, spec = MemoryStore(), judged_spec(filters={})
    plan = make_plan(spec)
    outcome = run(FakeEngine(chatty), store, spec, plan)
    assert [r["completion"] for r in data_rows(store, plan).to_pylist()] == [f"The answer is {i}." for i in range(3)]
    rejected = pq.read_table(io.BytesIO(store.get(layout.rejected_key(0, 1)))).to_pylist()
    assert [(r["i"], r["reject_reason"], r["completion"]) for r in rejected] == [
        (3, "filler", "Of course! I hope this helps!")]  # nothing but filler: stored as written, and rejected
    assert outcome is not None and outcome.stats.filler_stripped == 3


def test_filler_kept_as_written_when_the_spec_says_keep() -> None:
    store, spec = MemoryStore(), judged_spec(filters={"filler": "keep"})
    plan = make_plan(spec)
    outcome = run(FakeEngine(chatty), store, spec, plan)
    assert data_rows(store, plan).column("completion").to_pylist()[0] == "Sure! The answer is 0.\n\nI hope this helps!"
    assert outcome is not None and outcome.stats.filler_stripped == 0


class ChattyJudgingHandler(JudgingHandler):
    """A JudgingHandler whose answers come wrapped in a filler opener and closer."""

    async def __call__(self, row: PromptRow, follow_up: str | None) -> list[Completion] | RowFailure:
        result = await super().__call__(row, follow_up)
        if row.index == -1 or isinstance(result, RowFailure):
            return result
        return [Completion(f"Sure! {c.text}\n\nI hope this helps!", c.finish_reason, c.prompt_tokens,
                           c.completion_tokens, follow_up_ids=c.follow_up_ids) for c in result]


def test_the_self_judge_judges_the_stripped_text_from_a_transcript() -> None:
    judging, store = ChattyJudgingHandler(), MemoryStore()
    spec = judged_spec(judge={"min_score": 1}, filters={})
    plan = make_plan(spec)
    run(FakeEngine(judging), store, spec, plan)
    judged = [r for r in judging.judge_rows if not r.row_id.endswith("-score")]
    assert len(judged) == 4 and all(r.prompt_token_ids is None for r in judged)  # not the generation's ids
    assert all("answer" in json.dumps(r.messages) and "hope this helps" not in json.dumps(r.messages) for r in judged)
    assert [r["completion"] for r in data_rows(store, plan).to_pylist()] == ["answer 0", "answer 1", "answer 2"]
