"""Self-evaluation: the model scores a completion 1-10 against the rubric, through structured output.

With `self`, a judgement is the next turn of the conversation that produced the reply, given to the
engine as token ids (what it saw, what it wrote, then the judge's turn), right after the reply is
written: the engine's prefix cache still holds the reply's KV, so the judge reads the prompt and
reply without computing them again (every whole KV block of them) and pays only for its own turn and
judgement. A separate judge model reads a transcript instead.

The judgement is constrained by a JSON schema: an integer score 1-10 first, then a reason. The
reason's length is bounded by the token budget, not by the schema: a `maxLength` becomes a bounded
repetition in the grammar that makes xgrammar check every vocabulary token at every step of the
string (on the tiny model, 1.3x the time of generating the same tokens unconstrained, against
1.07x for an open string). A judgement that reaches its budget is cut inside the reason, after the
score is complete: the grammar fixes everything before the cut, so closing the string reads it
exactly. Anything else (a prompt too long for the judge, an engine error) is a judge error, and the
row goes to `errors/`.
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

REASON_CHARS_PER_TOKEN = 2  # prose runs 3-5 characters per token in common tokenizers
SCHEMA_OVERHEAD_TOKENS = 16  # {"score":10,"reason":"..."} around the reason

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CUT = re.compile(r'\{"score":(-?\d+),"reason":"(.*)', re.DOTALL)  # a judgement cut inside its reason
HALF_ESCAPE = re.compile(r"(\\+)(u[0-9a-fA-F]{0,3})?$")
STRING_END = re.compile(r'(\\*)"$')
REPLY_FORMAT = "Reply with JSON only: {{\"score\": <1-10>, \"reason\": \"<one sentence>\"}}."
SYSTEM = ("You are a strict evaluator of answers. Score the response from 1 (useless) to 10 (excellent) "
          "against this rubric: {rubric}\n" + REPLY_FORMAT)
FOLLOW_UP = ("Now be a strict evaluator of your answer above. Score it from 1 (useless) to 10 (excellent) "
             "against this rubric: {rubric}\n" + REPLY_FORMAT)


def judge_schema(judge: Judge) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": 1, "maximum": 10},
            "reason": {"type": "string"},  # bounded by the token budget: see the module's docstring
        },
        "required": ["score", "reason"],
        "additionalProperties": False,
    }


def judge_sampling(judge: Judge) -> Sampling:
    budget = -(-judge.reason_max_chars // REASON_CHARS_PER_TOKEN) + SCHEMA_OVERHEAD_TOKENS
    return Sampling(temperature=0.0, max_tokens=budget, json_schema=judge_schema(judge))


@dataclass(frozen=True)
class Verdict:
    score: int
    reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # of the prompt tokens, those the engine read from its prefix cache


def follow_up(judge: Judge) -> str:
    """The self judge's turn, continuing the conversation that produced the reply."""
    return FOLLOW_UP.format(rubric=judge.rubric)


def _asked(row: PromptRow) -> str:
    if row.messages:
        return "\n".join(f"{m['role']}: {m['content']}" for m in row.messages)
    return row.prompt or ""


def judge_request(judge: Judge, row: PromptRow, sample: int, reply: Completion, sampling: Sampling) -> PromptRow:
    """The judge's request about one reply (seeded by its row, for reproducibility).

    A reply carrying follow-up ids was written by this engine: the judgement is the next turn of the
    same conversation, so the engine reads the prompt and the reply from its prefix cache instead of
    computing them again. Otherwise (a separate judge model) the judge reads a transcript.
    """
    base: dict[str, Any] = {"index": -1, "row_id": f"{row.row_id}-judge{sample}", "seed": row.seed,
                            "sampling": sampling}
    if reply.follow_up_ids is not None:
        return PromptRow(prompt_token_ids=reply.follow_up_ids, **base)
    messages = [{"role": "system", "content": SYSTEM.format(rubric=judge.rubric)},
                {"role": "user", "content": f"Prompt:\n{_asked(row)}\n\nResponse:\n{reply.text}"}]
    return PromptRow(messages=messages, **base)


def _closed(text: str, finish_reason: str) -> Any:
    """The judgement's JSON; one cut inside its reason by the token budget is closed where it stops."""
    try:
        return json.loads(text, strict=False)  # the grammar lets raw control characters into strings
    except json.JSONDecodeError:
        cut = CUT.fullmatch(text) if finish_reason == "length" else None
        if cut is None:
            raise
        body = cut.group(2)
        end = STRING_END.search(body)
        if end and len(end.group(1)) % 2 == 0:  # cut right after the string's closing quote
            body = body[:-1]
        elif (half := HALF_ESCAPE.search(body)) and len(half.group(1)) % 2:  # the last backslash starts an escape
            body = body[: half.end(1) - 1]
        return {"score": int(cut.group(1)), "reason": json.loads(f'"{body}"', strict=False)}


def _clean(reason: str, max_chars: int) -> str:
    """At most `max_chars`, control characters blanked, lone surrogates (a cut or stray escape) replaced."""
    return CONTROL.sub(" ", reason[:max_chars]).encode("utf-8", "replace").decode("utf-8")


def parse_verdict(result: list[Completion] | RowFailure, judge: Judge) -> Verdict | RowFailure:
    if isinstance(result, RowFailure):
        return RowFailure(RowErrorCode.JUDGE_ERROR, f"{result.code}: {result.message}")
    c = result[0]
    try:
        value = _closed(c.text, c.finish_reason)
        score, reason = value["score"], value["reason"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return RowFailure(RowErrorCode.JUDGE_ERROR, f"unusable judgement ({c.finish_reason}): {e}: {c.text[:200]!r}")
    if not isinstance(score, int) or not 1 <= score <= 10 or not isinstance(reason, str):
        return RowFailure(RowErrorCode.JUDGE_ERROR, f"judgement out of range: {c.text[:200]!r}")
    return Verdict(score, _clean(reason, judge.reason_max_chars), c.prompt_tokens, c.completion_tokens,
                   c.cached_tokens)


async def judge_reply(engine: Engine, judge: Judge, row: PromptRow, sample: int, reply: Completion,
                      sampling: Sampling) -> Verdict | RowFailure:
    return parse_verdict(await engine.generate(judge_request(judge, row, sample, reply, sampling)), judge)
