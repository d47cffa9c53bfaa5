"""Stages in the job spec: the three kinds, validation of a stage list before anything runs, the helpers
the workers run stages with, job identity, and the recipes under examples/."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.commit.schemas import RESERVED
from orchestrator.errors import Problem, SpecError
from orchestrator.spec.generation import Sampling
from orchestrator.spec.load import load_spec, parse_spec
from orchestrator.spec.stages import (
    RESERVED_COLUMNS,
    GenerateStage,
    JudgeStage,
    Read,
    SelectStage,
    StageSampling,
    branch_of,
    branches,
    conversation,
    final_stage,
    referenced_stages,
    template_reads,
)
from tests.unit.specs import (
    chat,
    generate,
    judge_stage,
    make_spec,
    make_staged,
    select_stage,
    spec_data,
    staged_data,
)

EXAMPLES = Path(__file__).parents[2] / "examples"
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "difficulty": {"type": "string"}}}


def problems(*stages: dict[str, Any], **sections: Any) -> list[Problem]:
    with pytest.raises(SpecError) as e:
        parse_spec(staged_data(*stages, **sections))
    return e.value.problems


def problem(*stages: dict[str, Any], path: str, **sections: Any) -> str:
    """The one problem of a spec, which must be on `path`; its message."""
    found = problems(*stages, **sections)
    assert [p.path for p in found] == [path], found
    return found[0].message


def fan_out(name: str = "answer", n: int = 4) -> dict[str, Any]:
    return chat(name, sampling={"n": n})


# --- the three kinds ------------------------------------------------------------------------------

def test_each_kind_is_told_apart_by_its_key() -> None:
    spec = make_staged(fan_out(), judge_stage("score", "answer"), select_stage("pair", "score", "answer"))
    assert [type(s) for s in spec.stages or []] == [GenerateStage, JudgeStage, SelectStage]
    assert [s.kind for s in spec.stages or []] == ["generate", "judge", "select"]


def test_a_judge_stage_takes_the_fields_of_the_top_level_judge() -> None:
    spec = make_staged(chat("answer"), judge_stage("score", "answer", rubric="Correct.", min_score=2, levels={
        1: "bad", 2: "ok", 3: "good"}))
    score = (spec.stages or [])[1]
    assert isinstance(score, JudgeStage) and score.scale == (1, 3) and score.model == "self"


def test_a_judge_stage_checks_its_rubric_fields_as_the_top_level_judge_does() -> None:
    assert "outside the scale" in problem(chat("a"), judge_stage("j", "a", min_score=9), path="stages.1.min_score")


def test_a_stage_with_keys_of_two_kinds_gets_one_message() -> None:
    message = problem(chat("q"), {"name": "x", "text": "hi", "judge": "q"}, path="stages.1")
    assert "this one has text and judge: keep one" in message


def test_a_stage_of_no_kind_says_which_keys_make_one() -> None:
    message = problem(chat("q"), {"name": "x", "continue": "q"}, path="stages.1")
    assert "generate (text or messages), judge (judge: <stage>) or select" in message


def test_a_generate_stage_takes_exactly_one_of_text_and_messages() -> None:
    both = generate("q", messages=[{"role": "user", "content": "x"}]) | {"text": "x"}
    assert "exactly one of text or messages" in problem(both, path="stages.0")


def test_an_unknown_field_of_a_judge_stage_suggests_the_judge_field() -> None:
    assert "did you mean `rubric`" in problem(chat("a"), judge_stage("j", "a", rubrik="x"), path="stages.1.rubrik")


def test_an_unknown_field_of_a_generate_stage_suggests_it_by_its_yaml_name() -> None:
    assert "did you mean `continue`" in problem(chat("a"), chat("b", contine="a"), path="stages.1.contine")


def test_a_select_stage_takes_no_when() -> None:
    select = select_stage("pair", "score", "answer") | {"when": "topic == 'rust'"}
    message = problem(fan_out(), judge_stage("score", "answer"), select, path="stages.2.when")
    assert "runs on every row" in message and "put the condition on a stage before it" in message


def test_no_stages_at_all_is_refused() -> None:
    assert "at least 1 item" in problem(path="stages")


# --- names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Question", "2nd", "a-b", "x" * 65])
def test_a_stage_name_is_a_lowercase_identifier(name: str) -> None:
    assert "is not a stage name" in problem(chat(name), path="stages.0.name")


@pytest.mark.parametrize("name", ["prompt", "completion", "chosen", "judge_score", "row_id"])
def test_a_stage_name_is_not_a_reserved_column(name: str) -> None:
    assert "reserved column name; rename the stage" in problem(chat(name), path="stages.0.name")


def test_the_reserved_names_cover_every_column_the_commit_layer_writes() -> None:
    assert RESERVED <= RESERVED_COLUMNS


def test_stage_names_are_unique() -> None:
    message = problem(chat("q"), chat("a"), chat("q"), path="stages.2.name")
    assert "also the name of stage 0" in message and "must be unique" in message


def test_a_stage_name_is_not_a_seed_variable() -> None:
    assert "rename the stage or the variable" in problem(chat("topic"), path="stages.0.name")


# --- the prompt source and the job's sampling with stages ---------------------------------------------

def test_stages_refuse_a_prompt_file_saying_they_need_template_seeds() -> None:
    message = problem(chat("q"), prompts={"file": {"uri": "prompts.jsonl"}}, path="prompts")
    assert "stages need prompts.template.seeds" in message and "not supported yet" in message


@pytest.mark.parametrize("form", [{"text": "x"}, {"messages": [{"role": "user", "content": "x"}]}])
def test_stages_refuse_a_template_prompt_of_their_own(form: dict[str, Any]) -> None:
    key = next(iter(form))
    prompts = {"template": {**form, "seeds": {"topic": ["a"]}}}
    message = problem(chat("q"), prompts=prompts, path=f"prompts.template.{key}")
    assert f"remove prompts.template.{key}" in message


def test_stages_need_seeds() -> None:
    assert "stages need prompts.template.seeds" in problem(chat("q"), seeds={}, path="prompts.template.seeds")


def test_stages_keep_the_jobs_sampling_n_at_1() -> None:
    message = problem(chat("q"), sampling={"n": 2}, path="sampling.n")
    assert "set sampling.n on the stage to branch" in message


def test_a_template_without_stages_still_needs_text_or_messages() -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(spec_data(prompts={"template": {"seeds": {"topic": ["a"]}}}))
    assert [(p.path, p.message) for p in e.value.problems] == [
        ("prompts.template", "give exactly one of text or messages")]


# --- what templates read ------------------------------------------------------------------------

def test_a_template_reads_seeds_and_earlier_stages() -> None:
    make_staged(chat("question", "About {{ topic }} for {{ audience }}"), chat("answer", "{{ question }}"),
                generate("again", "{{ answer }}", when="topic == 'rust' and answer"))


def test_an_unknown_name_names_the_seeds_and_the_earlier_stages() -> None:
    message = problem(chat("question"), generate("answer", "{{ questoin }}"), path="stages.1.text")
    assert "'questoin' is neither a seed variable (audience, topic) nor an earlier stage (question)" in message


def test_a_later_stage_cannot_be_read() -> None:
    message = problem(generate("question", "{{ answer }}"), chat("answer"), path="stages.0.text")
    assert "'answer' is stage 1, which runs after this one" in message and "move 'answer' before stage 0" in message


def test_a_stage_cannot_read_itself() -> None:
    assert "cannot read its own output" in problem(generate("q", "{{ q }}"), path="stages.0.text")


def test_a_message_content_reference_is_reported_on_that_message() -> None:
    stage = generate("q", messages=[{"role": "system", "content": "Hi"}, {"role": "user", "content": "{{ nope }}"}])
    assert "'nope' is neither" in problem(stage, path="stages.0.messages.1.content")


def test_a_when_reference_is_reported_on_when() -> None:
    assert "'later' is stage 1" in problem(chat("q", when="later"), chat("later"), path="stages.0.when")


def test_a_template_syntax_error_names_the_stage_field() -> None:
    message = problem(generate("q", "{{ topic }"), path="stages.0.text")
    assert message.startswith("template syntax error on line 1") and message.endswith("fix the template")


def test_text_after_a_when_expression_is_a_syntax_error() -> None:
    assert "syntax error" in problem(chat("q", when="topic }} {{ audience"), path="stages.0.when")


def test_names_a_template_binds_and_jinja_globals_are_not_references() -> None:
    make_staged(chat("q", "{% for x in range(3) %}{{ x }}{{ loop.index }}{% endfor %}{% set y = 2 %}{{ y }}"))


def test_template_reads_gives_each_name_with_the_field_read_of_it() -> None:
    reads = template_reads("{{ q.difficulty }} {{ q['kind'] }} {{ q.upper() }} {{ a[topic] }}")
    assert reads == {Read("q", "difficulty"), Read("q", "kind"), Read("q"), Read("a"), Read("topic")}


def test_template_reads_only_parses_so_no_constant_is_folded() -> None:
    start = time.monotonic()
    assert template_reads("{{ 9 ** (9 ** 9) }}{{ 'a' | center(10 ** 9) }}") == set()
    assert time.monotonic() - start < 1


# --- fields of earlier stages ---------------------------------------------------------------------

def test_fields_of_a_json_stage_are_its_schema_properties() -> None:
    make_staged(chat("q", sampling={"json_schema": SCHEMA}),
                generate("a", "{{ q.question }} ({{ q['difficulty'] }}) {{ q }}", when="q.difficulty == 'hard'"))


def test_a_field_of_a_stage_without_json_schema_is_refused() -> None:
    message = problem(chat("q"), generate("a", "{{ q.difficulty }}"), path="stages.1.text")
    assert "has no sampling.json_schema" in message and "give 'q' a json_schema with the property 'difficulty'" in message


def test_a_field_not_among_the_schema_properties_is_refused() -> None:
    message = problem(chat("q", sampling={"json_schema": SCHEMA}), generate("a", "{{ q.level }}"), path="stages.1.text")
    assert "'level' is not among the properties of stage 'q''s json_schema (question, difficulty)" in message


def test_a_json_schema_of_the_jobs_sampling_gives_every_stage_its_fields() -> None:
    make_staged(chat("q"), generate("a", "{{ q.question }}"), sampling={"json_schema": SCHEMA})


def test_a_method_call_on_a_text_stage_is_not_a_field() -> None:
    make_staged(chat("q"), generate("a", "{{ q.upper() }} {{ q | length }}"))


def test_a_judge_stage_gives_score_and_reason() -> None:
    make_staged(chat("a"), judge_stage("j", "a"), generate("b", "{{ j.score }}: {{ j.reason }}", when="j.score > 3"))


@pytest.mark.parametrize("text", ["{{ j.verdict }}", "{{ j }}"])
def test_other_reads_of_a_judge_stage_are_refused(text: str) -> None:
    message = problem(chat("a"), judge_stage("j", "a"), generate("b", text), path="stages.2.text")
    assert "outputs are j.score, j.reason; read one of them" in message


# --- continue ---------------------------------------------------------------------------------

def test_a_continue_chain_is_valid() -> None:
    spec = make_staged(chat("q"), generate("a", "Answer it.", **{"continue": "q"}),
                       generate("b", "Shorter.", **{"continue": "a"}))
    assert [s.name for s in conversation(spec.stages or [], "b")] == ["q", "a", "b"]


def test_continue_of_a_text_stage_is_refused() -> None:
    message = problem(generate("q"), generate("a", **{"continue": "q"}), path="stages.1.continue")
    assert "has a text prompt, not a chat conversation" in message and "with messages" in message


def test_continue_of_a_judge_stage_is_refused() -> None:
    message = problem(chat("q"), judge_stage("j", "q"), generate("a", **{"continue": "j"}), path="stages.2.continue")
    assert "is a judge stage, not a chat conversation" in message


@pytest.mark.parametrize(("target", "says"), [("zz", "'zz' is not an earlier stage (q)"),
                                              ("later", "'later' is stage 2, which runs after this one")])
def test_continue_of_an_unknown_or_later_stage_is_refused(target: str, says: str) -> None:
    assert says in problem(chat("q"), generate("a", **{"continue": target}), chat("later"), path="stages.1.continue")


def test_a_continue_stage_adds_no_system_message() -> None:
    stage = generate("a", messages=[{"role": "system", "content": "x"}], **{"continue": "q"})
    assert "make this a user turn" in problem(chat("q"), stage, path="stages.1.messages.0.role")


def test_a_continue_stage_runs_on_the_model_of_its_conversation() -> None:
    message = problem(chat("q", model={"id": "org/other"}), generate("a", **{"continue": "q"}), path="stages.1.model")
    assert "remove model here, or set it as stage 'q' does" in message


# --- judge stages -------------------------------------------------------------------------------

@pytest.mark.parametrize(("stages", "path", "says"), [
    ([judge_stage("j", "a"), chat("a")], "stages.0.judge", "'a' is stage 1, which runs after this one"),
    ([chat("a"), judge_stage("j", "nope")], "stages.1.judge", "'nope' is not an earlier stage (a)"),
    ([chat("a"), judge_stage("j", "a"), judge_stage("k", "j")], "stages.2.judge",
     "'j' is a judge stage; a judge stage scores a generate stage"),
    ([fan_out("a"), judge_stage("j", "a"), select_stage("p", "j", "a"), judge_stage("k", "p")], "stages.3.judge",
     "'p' is a select stage; a judge stage scores a generate stage"),
], ids=["later", "unknown", "judge", "select"])
def test_a_judge_stage_scores_an_earlier_generate_stage(stages: list[dict[str, Any]], path: str, says: str) -> None:
    assert says in problem(*stages, path=path)


def test_a_judge_stage_reference_is_a_seed_or_an_earlier_generate_stage() -> None:
    make_staged(chat("gold"), chat("a"), judge_stage("j", "a", reference="gold"), judge_stage("k", "a", reference="topic"))
    assert "'gold' is neither" in problem(chat("a"), judge_stage("j", "a", reference="gold"), path="stages.1.reference")


# --- fan-out and select ---------------------------------------------------------------------------

def test_a_select_merges_the_branches_judged() -> None:
    make_staged(fan_out(), judge_stage("score", "answer"), select_stage("pair", "score", "answer"),
                generate("note", "{{ pair.chosen }} beat {{ pair.rejected }} ({{ pair.chosen_score }})"))


def test_select_by_a_stage_that_is_not_a_judge_is_refused() -> None:
    message = problem(fan_out(), select_stage("pair", "answer", "answer"), path="stages.1.select.by")
    assert "select.by names a judge stage" in message


def test_select_of_a_stage_with_one_branch_is_refused() -> None:
    message = problem(chat("answer"), judge_stage("score", "answer"), select_stage("pair", "score", "answer"),
                      path="stages.2.select.of")
    assert "makes one branch per row" in message and "sampling.n > 1" in message


def test_select_by_a_judge_of_a_stage_before_the_fan_out_is_refused() -> None:
    message = problem(chat("q"), judge_stage("score", "q"), fan_out(), select_stage("pair", "score", "answer"),
                      path="stages.3.select.by")
    assert "runs once per row, before the fan-out 'answer'" in message


def test_select_by_a_judge_of_a_later_stage_on_the_branch_is_valid() -> None:
    make_staged(fan_out("draft"), generate("polish", "Improve: {{ draft }}"), judge_stage("score", "polish"),
                select_stage("pair", "score", "draft"))


def test_a_second_fan_out_while_one_is_open_is_refused() -> None:
    message = problem(fan_out("a"), fan_out("b", n=2), path="stages.1.sampling.n")
    assert "add a select stage of 'a' before this one" in message


def test_a_fan_out_after_a_select_is_valid() -> None:
    make_staged(fan_out("a"), judge_stage("j", "a"), select_stage("p", "j", "a"), fan_out("b", n=2))


def test_a_stage_after_a_select_cannot_read_the_merged_branches() -> None:
    message = problem(fan_out(), judge_stage("score", "answer"), select_stage("pair", "score", "answer"),
                      generate("note", "{{ answer }}"), path="stages.3.text")
    assert "runs once per branch of 'answer', which select stage 'pair' merged" in message
    assert "read pair.chosen and pair.rejected" in message


def test_the_top_level_judge_with_stages_judges_the_last_generate_stage() -> None:
    spec = make_staged(chat("q"), chat("answer", "{{ q }}"), judge={"rubric": "Correct."})
    assert final_stage(spec.stages or []).name == "answer"


def test_the_top_level_judge_cannot_judge_merged_branches() -> None:
    message = problem(fan_out(), judge_stage("score", "answer"), select_stage("pair", "score", "answer"),
                      judge={"rubric": "Correct."}, path="judge")
    assert "use a judge stage before 'pair'" in message


# --- helpers for the workers ------------------------------------------------------------------------

def test_stage_sampling_has_every_field_of_sampling() -> None:
    assert set(StageSampling.model_fields) == set(Sampling.model_fields)


def test_stage_sampling_overrides_only_what_it_sets() -> None:
    job = Sampling(temperature=0.5, max_tokens=32, stop=["\n"], seed=9)
    merged = StageSampling(max_tokens=8, n=4, json_schema=SCHEMA).over(job)
    assert merged == Sampling(temperature=0.5, max_tokens=8, n=4, stop=["\n"], seed=9, json_schema=SCHEMA)


def test_stage_sampling_checks_its_json_schema() -> None:
    assert "not a valid JSON schema" in problem(chat("q", sampling={"json_schema": {"type": 3}}),
                                                path="stages.0.sampling.json_schema")


def test_branches_and_branch_of_follow_fan_out_and_select() -> None:
    spec = make_staged(chat("q"), fan_out(), judge_stage("score", "answer"), select_stage("pair", "score", "answer"),
                       chat("after"))
    stages = spec.stages or []
    assert [branches(s, spec.sampling) for s in stages] == [1, 4, 1, 1, 1]
    assert branch_of(stages, spec.sampling) == {"q": None, "answer": "answer", "score": "answer", "pair": None,
                                                "after": None}


def test_referenced_stages_are_those_read_continued_judged_or_selected() -> None:
    spec = make_staged(chat("q", sampling={"n": 2}), generate("a", "{{ q }} {{ topic }}", **{"continue": "q"}),
                       judge_stage("j", "a", when="q"), select_stage("p", "j", "q"))
    q, a, j, p = spec.stages or []
    assert [referenced_stages(s, spec.stages or []) for s in (q, a, j, p)] == [set(), {"q"}, {"a", "q"}, {"j", "q"}]


def test_final_stage_is_the_last_generate_stage() -> None:
    spec = make_staged(chat("q"), chat("a"), judge_stage("j", "a"))
    assert final_stage(spec.stages or []).name == "a"


# --- job identity ---------------------------------------------------------------------------------

def test_a_spec_without_stages_keeps_its_job_id() -> None:
    # computed on main before stages existed: absent stages must never change a job id
    assert make_spec().job_id == "unit-6ac0160074"
    assert make_spec(judge={"rubric": "Be right."}, filters={"max_chars": 100}).job_id == "unit-79b2e8517b"
    assert load_spec(EXAMPLES / "quickstart.yaml").job_id == "quickstart-22d7b9ad90"


def test_changing_a_stages_text_changes_the_job_id() -> None:
    one = make_staged(chat("q"), generate("a", "Answer: {{ q }}"))
    other = make_staged(chat("q"), generate("a", "Answer briefly: {{ q }}"))
    assert one.job_id != other.job_id


def test_a_stage_models_kv_cache_size_is_not_part_of_the_job_id() -> None:
    small = make_staged(chat("q", model={"id": "org/m", "kv_cache_gib": 1.0}))
    large = make_staged(chat("q", model={"id": "org/m", "kv_cache_gib": 4.0}))
    assert small.job_id == large.job_id


def test_a_staged_spec_round_trips_through_its_json_with_the_same_job_id() -> None:
    spec = make_staged(chat("q", sampling={"n": 2}), generate("a", "More.", **{"continue": "q"}),
                       judge_stage("j", "a"), select_stage("p", "j", "q"))
    again = parse_spec(spec.model_dump(mode="json"))
    assert again == spec and again.job_id == spec.job_id


def test_a_relative_stage_model_path_resolves_against_the_spec_folder_and_hashes_as_written(tmp_path: Path) -> None:
    data = staged_data(chat("q"), judge_stage("j", "q", model={"path": "judges/small"}))
    ids = []
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "spec.yaml").write_text(yaml.safe_dump(data))
        spec = load_spec(tmp_path / folder / "spec.yaml")
        judge = (spec.stages or [])[1]
        assert isinstance(judge, JudgeStage) and judge.model != "self"
        assert judge.model.path == str(tmp_path / folder / "judges" / "small")
        ids.append(spec.job_id)
    assert ids[0] == ids[1]


# --- the recipes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", ["qa-pipeline", "multi-turn", "preference-pairs", "evol-instruct"])
def test_each_recipe_loads_and_says_what_it_makes(recipe: str) -> None:
    path = EXAMPLES / f"{recipe}.yaml"
    header = path.read_text().split("\nname:")[0]
    assert header.startswith("# Makes ")
    spec = load_spec(path)
    assert spec.stages and spec.model.path == str((EXAMPLES.parent / "models" / "tiny").resolve())


def test_the_multi_turn_recipe_is_three_turns_of_a_simulated_user_and_an_assistant() -> None:
    stages = load_spec(EXAMPLES / "multi-turn.yaml").stages or []
    assert len(stages) == 6
    assert [s.name for s in conversation(stages, "assistant_3")] == ["assistant_1", "assistant_2", "assistant_3"]
    assert [s.name for s in conversation(stages, "user_3")] == ["user_1", "user_2", "user_3"]


def test_the_preference_recipe_fans_out_4_then_judges_and_selects() -> None:
    spec = load_spec(EXAMPLES / "preference-pairs.yaml")
    stages = spec.stages or []
    assert [s.kind for s in stages] == ["generate", "judge", "select"]
    assert branches(stages[0], spec.sampling) == 4


@pytest.mark.parametrize(("stages", "path", "message"), [
    ([generate("draft"), generate("draft_finish_reason")], "stages.1.name",
     "would write the column 'draft_finish_reason', which stage 'draft' writes"),
    ([generate("draft_finish_reason"), generate("draft")], "stages.1.name",
     "would write the column 'draft_finish_reason', which stage 'draft_finish_reason' writes"),
    ([generate("x"), judge_stage("judge", "x")], "stages.1.name",
     "would write the column 'judge_score', a column every row has"),
])
def test_a_stage_column_that_another_column_has_is_refused(stages: list[dict[str, Any]], path: str,
                                                           message: str) -> None:
    assert message in problem(*stages, path=path)


def test_a_stage_column_that_is_a_seed_variable_is_refused() -> None:
    found = problem(generate("x", "{{ s_score }}"), judge_stage("s", "x"), path="stages.1.name",
                    prompts={"template": {"seeds": {"s_score": [1, 2]}}})
    assert "'s_score', which is a seed variable" in found


def test_dedup_compares_a_named_generate_stage_or_the_completion() -> None:
    spec = make_staged(generate("question"), generate("answer", "{{ question }}"), dedup={"column": "question"})
    assert spec.dedup is not None and spec.dedup.column == "question"
    found = problem(generate("question"), judge_stage("s", "question"), path="dedup.column", dedup={"column": "s"})
    assert "'s' is not a generate stage (question)" in found
    with pytest.raises(SpecError, match="without stages, dedup reads the completion"):
        make_spec(dedup={"column": "question"})


def test_diversity_reads_a_named_generate_stage_or_the_completion() -> None:
    spec = make_staged(generate("question"), generate("answer", "{{ question }}"), quality={"column": "question"})
    assert spec.quality.column == "question"
    found = problem(generate("question"), judge_stage("s", "question"), path="quality.column", quality={"column": "s"})
    assert "'s' is not a generate stage (question)" in found
    with pytest.raises(SpecError, match="without stages, quality reads the completion; remove quality.column"):
        make_spec(quality={"column": "question"})
    assert spec.job_id == make_staged(generate("question"), generate("answer", "{{ question }}")).job_id  # measuring only


def test_dedup_column_left_at_its_default_keeps_the_job_id() -> None:
    assert make_spec(dedup={}).job_id == make_spec(dedup={"column": "completion"}).job_id
    assert make_spec(dedup={}).job_id != make_spec().job_id
