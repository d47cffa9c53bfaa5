"""Judge requests and verdict parsing; the schema's bounds fit the token budget."""

from __future__ import annotations

import json

import jsonschema

from orchestrator.errors import RowErrorCode
from orchestrator.gates import Judge
from workers.engine import Completion
from workers.judge import judge_request, judge_sampling, judge_schema, parse_verdict
from workers.prompts import RowFailure

ROW = {"row_id": "abc-0000000001", "sample_index": 1, "prompt": "Name a prime.", "messages": None,
       "completion": "Seven.", "lineage": {"seed": 42}}


def test_the_request_carries_rubric_prompt_and_response_deterministically() -> None:
    judge = Judge(rubric="Is it a prime number?")
    req = judge_request(judge, ROW, judge_sampling(judge))
    system, user = req.messages or []
    assert "Is it a prime number?" in system["content"]
    assert "Name a prime." in user["content"] and "Seven." in user["content"]
    assert req.sampling.temperature == 0.0 and req.seed == 42
    assert req.row_id == "abc-0000000001-judge1"


def test_chat_prompts_are_shown_to_the_judge_as_a_transcript() -> None:
    row = {**ROW, "prompt": None, "messages": [{"role": "system", "content": "Be terse."},
                                               {"role": "user", "content": "Name a prime."}]}
    user = (judge_request(Judge(), row, judge_sampling(Judge())).messages or [])[1]["content"]
    assert "system: Be terse.\nuser: Name a prime." in user


def test_the_budget_covers_the_longest_reason_the_schema_allows() -> None:
    judge = Judge(reason_max_chars=50)
    longest = json.dumps({"score": 10, "reason": "\u00e9" * 50})  # 6 characters per escaped character
    assert judge_sampling(judge).max_tokens >= len(longest)
    jsonschema.validate(json.loads(longest), judge_schema(judge))


def test_a_valid_judgement_parses() -> None:
    verdict = parse_verdict([Completion('{"score":7,"reason":"clear"}', "stop", 30, 9)])
    assert not isinstance(verdict, RowFailure)
    assert (verdict.score, verdict.reason, verdict.prompt_tokens, verdict.completion_tokens) == (7, "clear", 30, 9)


def test_unusable_judgements_are_judge_errors() -> None:
    for text in ('{"score":7,"reas', '{"score":11,"reason":"x"}', '{"score":"7","reason":"x"}', '[]'):
        verdict = parse_verdict([Completion(text, "length", 30, 9)])
        assert isinstance(verdict, RowFailure) and verdict.code == RowErrorCode.JUDGE_ERROR, text


def test_an_engine_rejection_becomes_a_judge_error_naming_the_cause() -> None:
    verdict = parse_verdict(RowFailure(RowErrorCode.PROMPT_TOO_LONG, "prompt has 9000 tokens"))
    assert isinstance(verdict, RowFailure) and verdict.code == RowErrorCode.JUDGE_ERROR
    assert "prompt_too_long" in verdict.message


def test_raw_control_characters_the_grammar_allows_are_parsed_and_blanked() -> None:
    verdict = parse_verdict([Completion('{"score":7,"reason":"ok\x1dfine"}', "stop", 30, 9)])
    assert not isinstance(verdict, RowFailure) and verdict.reason == "ok fine"
