"""Checks on generated text: schema violations go to `errors/`; filtered rows go to `rejected/`.

Refusal, filler and repetition detection match a normalised copy of the text (curly quotes as
ASCII, NFKC, casefolded, markdown emphasis dropped, spacing collapsed), sentence by sentence, with
word boundaries. A refusal is a refusal *statement* ("I'm sorry, but I can't help with that", "As
an AI language model, I ...") in one of the opening sentences, alone or after a short lead ("I
understand your concern, but ..."); apologies for the user's trouble ("I'm sorry to hear that ...")
and "I can't" without a verb of assisting ("I can't stress enough") are not refusals. Text inside
quotes, code and block quotes is not read for refusals, so an answer quoting one passes. Filler is
a pleasantry opening an answer ("Sure!", "Great question!", with its lead-in to a block: "Here's a
haiku:") or closing it ("Let me know if you have any questions!"): whole clauses and sentences,
never inside code or JSON. Degenerate repetition is a sentence said twice in a row or three times,
a long sentence said twice, a list item looping, or text whose 4-grams mostly repeat; code, tables
and JSON are not read for it, and in verse (short lines) a refrain may return and a line may be
doubled, but not tripled.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import jsonschema

from orchestrator.spec.quality import Filters
from workers.filters.filler import filler, stored_text, strip_filler
from workers.filters.refusal import refusal_statement
from workers.filters.repetition import degenerate_repetition, repetition_share
from workers.filters.text import ALNUM

__all__ = ["rejection", "repetition_share", "schema_violation", "stored_text"]


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


def _content_rejection(f: Filters, text: str, all_filler: bool) -> tuple[str, str] | None:
    """Refusal, filler and repetition, on the completion as stored."""
    if f.refusal and (found := refusal_statement(text)):
        return "refusal", f"states a refusal: {found!r}"
    if all_filler:
        return "filler", f"nothing but filler: {text.strip()[:60]!r}"
    if f.filler == "reject" and (found := filler(text)):
        return "filler", found
    if f.repetition and (found := degenerate_repetition(text)):
        return "repetition", found
    return None


def rejection(f: Filters, text: str, completion_tokens: int) -> tuple[str, str] | None:
    """(reason, detail) when a completion fails a filter, in a fixed order; None when it passes.

    The checks read the completion as stored (`stored_text`), so passing it stripped or not gives
    the same answer.
    """
    body = strip_filler(text) if f.filler == "strip" else text
    all_filler = ALNUM.search(body) is None and ALNUM.search(text) is not None
    text = text if all_filler else body  # as stored_text has it
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
    return _content_rejection(f, text, all_filler)
