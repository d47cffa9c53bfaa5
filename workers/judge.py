"""Self-evaluation: the model scores a completion 1-10 against the rubric, through structured output.

The judgement is constrained by a JSON schema (an integer score 1-10, a reason of bounded length),
and its token budget covers the longest reason the schema allows, so a judgement always parses,
even from random weights. Anything else (a prompt too long
for the judge, an engine error) is a judge error, and the row goes to `errors/`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import RowErrorCode
from orchestrator.gates import Judge
from orchestrator.spec import Sampling
from workers.engine import Completion, Engine
from workers.prompts import PromptRow, RowFailure

MAX_TOKENS_PER_CHAR = 6  # a JSON escape (\\u00e9) is 6 characters; a raw character at most 4 byte tokens
SCHEMA_OVERHEAD_TOKENS = 32  # {"score":10,"reason":"..."} around the reason

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SYSTEM = ("You are a strict evaluator of answers. Score the response from 1 (useless) to 10 (excellent) "
          "against this rubric: {rubric}\nReply with JSON only: {{\"score\": <1-10>, \"reason\": \"<one sentence>\"}}.")


def judge_schema(judge: Judge) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": 1, "maximum": 10},
            "reason": {"type": "string", "maxLength": judge.reason_max_chars},
        },
        "required": ["score", "reason"],
        "additionalProperties": False,
    }


def judge_sampling(judge: Judge) -> Sampling:
    budget = judge.reason_max_chars * MAX_TOKENS_PER_CHAR + SCHEMA_OVERHEAD_TOKENS
    return Sampling(temperature=0.0, max_tokens=budget, json_schema=judge_schema(judge))


@dataclass(frozen=True)
class Verdict:
    score: int
    reason: str
    prompt_tokens: int
    completion_tokens: int


def _asked(row: dict[str, Any]) -> str:
    if row.get("messages"):
        return "\n".join(f"{m['role']}: {m['content']}" for m in row["messages"])
    return str(row.get("prompt") or "")


def judge_request(judge: Judge, row: dict[str, Any], sampling: Sampling) -> PromptRow:
    """The judge's chat request about one generated row (seeded by the row, for reproducibility)."""
    messages = [{"role": "system", "content": SYSTEM.format(rubric=judge.rubric)},
                {"role": "user", "content": f"Prompt:\n{_asked(row)}\n\nResponse:\n{row['completion']}"}]
    seed = row["lineage"]["seed"]
    return PromptRow(index=-1, row_id=f"{row['row_id']}-judge{row['sample_index']}", seed=seed,
                     sampling=sampling, messages=messages)


def parse_verdict(result: list[Completion] | RowFailure) -> Verdict | RowFailure:
    if isinstance(result, RowFailure):
        return RowFailure(RowErrorCode.JUDGE_ERROR, f"{result.code}: {result.message}")
    c = result[0]
    try:
        value = json.loads(c.text, strict=False)  # the grammar lets raw control characters into strings
        score, reason = value["score"], value["reason"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return RowFailure(RowErrorCode.JUDGE_ERROR, f"unusable judgement ({c.finish_reason}): {e}: {c.text[:200]!r}")
    if not isinstance(score, int) or not 1 <= score <= 10 or not isinstance(reason, str):
        return RowFailure(RowErrorCode.JUDGE_ERROR, f"judgement out of range: {c.text[:200]!r}")
    return Verdict(score, CONTROL.sub(" ", reason), c.prompt_tokens, c.completion_tokens)


async def judge_row(engine: Engine, judge: Judge, row: dict[str, Any], sampling: Sampling) -> Verdict | RowFailure:
    return parse_verdict(await engine.generate(judge_request(judge, row, sampling)))
