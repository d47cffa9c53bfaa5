"""Checks on generated text: schema violations go to `errors/`; filtered rows go to `rejected/`."""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from typing import Any

import jsonschema

from orchestrator.gates import Filters

# Openers of refusals in assistant-tuned models (matched at the start, case-insensitive).
REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|i apologi[sz]e|sorry, but|i cannot|i can'?t|i can not|i won'?t|"
    r"i am unable|i'?m unable|i'?m not able|i am not able|unfortunately,? i (can|am)|"
    r"as an ai( language model)?|i must decline|i do not feel comfortable)", re.IGNORECASE)
# Filler that carries no content: chat pleasantries opening or closing an answer.
BOILERPLATE = re.compile(
    r"^\W*(sure[,!.]? here('s| is| are)|certainly[,!.]|of course[,!.]|absolutely[,!.]|great question)"
    r"|(i hope this helps|let me know if you (have any|need any)|feel free to ask)\W*$", re.IGNORECASE)
REPEAT_NGRAM = 4
REPEAT_MIN_WORDS = 16
REPEAT_MAX_SHARE = 0.5  # more than half of a text's 4-grams repeating: a degenerate loop


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json))


def schema_violation(schema: dict[str, Any], text: str) -> str | None:
    """Why `text` is not JSON valid against `schema`, or None when it is."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return f"completion is not valid JSON: {e}"
    error = jsonschema.exceptions.best_match(
        _validator(json.dumps(schema, sort_keys=True)).iter_errors(value))
    return None if error is None else f"completion violates the schema at {error.json_path}: {error.message}"


@functools.lru_cache(maxsize=256)
def _pattern(p: str) -> re.Pattern[str]:
    return re.compile(p)


def repetition_share(text: str, n: int = REPEAT_NGRAM) -> float:
    """Share of a text's word n-grams that repeat an earlier one (0 for short texts)."""
    words = text.lower().split()
    if len(words) < REPEAT_MIN_WORDS:
        return 0.0
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return (total - len(grams)) / total


def rejection(f: Filters, text: str, completion_tokens: int) -> tuple[str, str] | None:
    """(reason, detail) when a completion fails a filter, in a fixed order; None when it passes."""
    n = len(text)
    bounds = (("too_short", f.min_chars, n, "chars", lambda v, b: v < b),
              ("too_long", f.max_chars, n, "chars", lambda v, b: v > b),
              ("too_short", f.min_tokens, completion_tokens, "tokens", lambda v, b: v < b),
              ("too_long", f.max_tokens, completion_tokens, "tokens", lambda v, b: v > b))
    for reason, bound, value, unit, fails in bounds:
        if bound is not None and fails(value, bound):
            return reason, f"{value} {unit}, bound {bound}"
    for i, p in enumerate(f.deny):
        if _pattern(p).search(text):
            return "deny_pattern", f"matches filters.deny[{i}]"
    if f.allow and not any(_pattern(p).search(text) for p in f.allow):
        return "allow_pattern", "matches none of filters.allow"
    if f.refusal and REFUSAL.search(text):
        return "refusal", "opens with a refusal"
    if f.boilerplate:
        if BOILERPLATE.search(text.strip()):
            return "boilerplate", "filler opening or closing"
        share = repetition_share(text)
        if share > REPEAT_MAX_SHARE:
            return "boilerplate", f"{share:.0%} of its {REPEAT_NGRAM}-grams repeat"
    return None
