"""Judge requests and verdict parsing, including judgements cut by their token budget."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema
import pytest

from orchestrator.errors import RowErrorCode
from orchestrator.gates import Judge
from workers.engine import Completion
from orchestrator.spec import Sampling
from workers.judge import follow_up, judge_request, judge_sampling, judge_schema, parse_verdict
from workers.prompts import PromptRow, RowFailure

ROW = PromptRow(index=1, row_id="abc-0000000001", seed=42, sampling=Sampling(), prompt="Name a prime.")
REPLY = Completion("Seven.", "stop", 4, 2)


def test_a_separate_judge_reads_rubric_prompt_and_response_deterministically() -> None:
    judge = Judge(rubric="Is it a prime number?")
    req = judge_request(judge, ROW, 1, REPLY, judge_sampling(judge))
    system, user = req.messages or []
    assert "Is it a prime number?" in system["content"]
    assert "Name a prime." in user["content"] and "Seven." in user["content"]
    assert req.sampling.temperature == 0.0 and req.seed == 42 and req.prompt_token_ids is None
    assert req.row_id == "abc-0000000001-judge1"


def test_chat_prompts_are_shown_to_a_separate_judge_as_a_transcript() -> None:
    row = replace(ROW, prompt=None, messages=[{"role": "system", "content": "Be terse."},
                                              {"role": "user", "content": "Name a prime."}])
    user = (judge_request(Judge(), row, 0, REPLY, judge_sampling(Judge())).messages or [])[1]["content"]
    assert "system: Be terse.\nuser: Name a prime." in user


def test_the_self_judge_continues_the_conversation_from_the_engines_own_tokens() -> None:
    judge = Judge(rubric="Is it a prime number?")
    reply = replace(REPLY, follow_up_ids=[5, 6, 7, 8])
    req = judge_request(judge, ROW, 0, reply, judge_sampling(judge))
    assert req.prompt_token_ids == [5, 6, 7, 8] and req.messages is None and req.prompt is None
    assert "Is it a prime number?" in follow_up(judge) and "your answer above" in follow_up(judge)


def test_the_schema_is_score_then_an_open_reason_and_the_budget_follows_reason_max_chars() -> None:
    schema = judge_schema(Judge())
    assert list(schema["properties"]) == ["score", "reason"] and "maxLength" not in schema["properties"]["reason"]
    jsonschema.validate({"score": 10, "reason": "x" * 500}, schema)
    assert judge_sampling(Judge(reason_max_chars=40)).max_tokens < judge_sampling(Judge(reason_max_chars=80)).max_tokens


def test_a_valid_judgement_parses() -> None:
    verdict = parse_verdict([Completion('{"score":7,"reason":"clear"}', "stop", 30, 9)], Judge())
    assert not isinstance(verdict, RowFailure)
    assert (verdict.score, verdict.reason, verdict.prompt_tokens, verdict.completion_tokens) == (7, "clear", 30, 9)


def test_unusable_judgements_are_judge_errors() -> None:
    for text in ('{"score":7,"reas', '{"score":11,"reason":"x"}', '{"score":"7","reason":"x"}', '[]'):
        verdict = parse_verdict([Completion(text, "length", 30, 9)], Judge())
        assert isinstance(verdict, RowFailure) and verdict.code == RowErrorCode.JUDGE_ERROR, text


def test_an_engine_rejection_becomes_a_judge_error_naming_the_cause() -> None:
    verdict = parse_verdict(RowFailure(RowErrorCode.PROMPT_TOO_LONG, "prompt has 9000 tokens"), Judge())
    assert isinstance(verdict, RowFailure) and verdict.code == RowErrorCode.JUDGE_ERROR
    assert "prompt_too_long" in verdict.message


def test_raw_control_characters_the_grammar_allows_are_parsed_and_blanked() -> None:
    verdict = parse_verdict([Completion('{"score":7,"reason":"ok\x1dfine"}', "stop", 30, 9)], Judge())
    assert not isinstance(verdict, RowFailure) and verdict.reason == "ok fine"


@pytest.mark.parametrize(("text", "reason"), [
    ('{"score":4,"reason":"too vague', "too vague"),
    ('{"score":4,"reason":"says \\"no', 'says "no'),  # cut after a complete escape
    ('{"score":4,"reason":"a\\', "a"),  # cut after the backslash that starts an escape
    ('{"score":4,"reason":"a\\\\', "a\\"),  # an escaped backslash is whole
    ('{"score":4,"reason":"caf\\u00', "caf"),  # cut inside a \u escape
    ('{"score":4,"reason":"done"', "done"),  # cut right after the closing quote
    ('{"score":4,"reason":"', ""),
])
def test_a_judgement_cut_by_its_budget_keeps_its_score_and_the_reason_so_far(text: str, reason: str) -> None:
    verdict = parse_verdict([Completion(text, "length", 30, 24)], Judge())
    assert not isinstance(verdict, RowFailure) and (verdict.score, verdict.reason) == (4, reason)


def test_a_cut_judgement_is_only_read_when_the_budget_cut_it() -> None:
    verdict = parse_verdict([Completion('{"score":4,"reason":"too vague', "stop", 30, 24)], Judge())
    assert isinstance(verdict, RowFailure) and verdict.code == RowErrorCode.JUDGE_ERROR


def test_the_reason_is_cut_to_reason_max_chars_and_a_lone_surrogate_is_replaced() -> None:
    long = parse_verdict([Completion(json.dumps({"score": 6, "reason": "x" * 50}), "stop", 30, 24)],
                         Judge(reason_max_chars=10))
    assert not isinstance(long, RowFailure) and long.reason == "x" * 10
    lone = parse_verdict([Completion('{"score":6,"reason":"ok \\ud83d"}', "stop", 30, 24)], Judge())
    assert not isinstance(lone, RowFailure) and lone.reason == "ok ?"
    lone.reason.encode("utf-8")
