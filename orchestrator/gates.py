"""The quality gates of a job spec: judge, filters, dedup, quality report and real-data mixing.

Judge, filters and dedup decide which rows are kept, so they are part of the job's identity (its
hash); the quality report only measures, so changing its thresholds keeps the job id.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt
from pydantic import field_validator, model_validator

from orchestrator import defaults
from orchestrator.errors import StorageError
from orchestrator.storage import check_uri

if TYPE_CHECKING:
    from orchestrator.spec import ModelSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def checked_uri(uri: str) -> str:
    """A pydantic field check: the URI is a valid output or input location."""
    try:
        return check_uri(uri)
    except StorageError as e:
        raise ValueError(str(e)) from None


class Judge(_Strict):
    """The model scores each kept completion 1-10 against a rubric, through structured output."""

    model: Literal["self"] | ModelSpec = Field(
        "self", description="self: the generation engine judges (no second load); or a model spec."
    )
    rubric: str = Field(defaults.JUDGE_RUBRIC, min_length=1, description="What a good answer is.")
    min_score: StrictInt = Field(defaults.JUDGE_MIN_SCORE, ge=1, le=10, description="Rows scoring less go to rejected/.")
    reason_max_chars: StrictInt = Field(defaults.JUDGE_REASON_MAX_CHARS, ge=8, le=1000,
                                  description="Longest reason; the judgement's token budget follows from it.")

    @property
    def is_self(self) -> bool:
        return self.model == "self"


class Filters(_Strict):
    """Cheap per-row checks on each completion, applied on the worker before the judge."""

    min_chars: StrictInt | None = Field(None, ge=0)
    max_chars: StrictInt | None = Field(None, ge=1)
    min_tokens: StrictInt | None = Field(None, ge=0, description="Completion tokens.")
    max_tokens: StrictInt | None = Field(None, ge=1, description="Completion tokens.")
    deny: list[str] = Field(default_factory=list, description="Regexes; a completion matching any is rejected.")
    allow: list[str] = Field(default_factory=list, description="Regexes; a completion must match one.")
    refusal: StrictBool = Field(True, description="Reject refusals (\"I'm sorry, but I can't ...\").")
    boilerplate: StrictBool = Field(True, description="Reject filler and degenerate repetition.")

    @field_validator("deny", "allow")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for i, p in enumerate(patterns):
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"pattern {i} ({p!r}) is not a valid regular expression: {e}") from None
        return patterns

    @model_validator(mode="after")
    def _bounds(self) -> Filters:
        for lo, hi in (("min_chars", "max_chars"), ("min_tokens", "max_tokens")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo}={a} is greater than {hi}={b}")
        return self


class Dedup(_Strict):
    """Job-wide dedup of completions in a finalize pass over every committed shard."""

    exact: StrictBool = Field(True, description="Drop repeats of a normalised text (case, spacing).")
    near_threshold: StrictFloat | None = Field(
        defaults.NEAR_DUP_THRESHOLD, gt=0, le=1,
        description="Drop rows whose estimated Jaccard similarity to an earlier row reaches this; null: off.",
    )
    num_perm: StrictInt = Field(defaults.MINHASH_PERMUTATIONS, ge=16, le=1024, description="MinHash permutations.")
    ngram: StrictInt = Field(defaults.SHINGLE_WORDS, ge=1, le=10, description="Words per shingle.")


class Quality(_Strict):
    """The quality report every job gets; measuring only, it never drops a row."""

    reference: str | None = Field(None, description="Real data (JSONL or Parquet) to compare diversity with.")
    min_reference_ratio: StrictFloat = Field(
        defaults.MIN_REFERENCE_RATIO, gt=0, le=10,
        description="Flag the job when a diversity metric falls below this fraction of the reference's.",
    )
    drift_threshold: StrictFloat = Field(
        defaults.DRIFT_THRESHOLD, gt=0, le=1,
        description="Flag a seed value whose share among kept rows moves by more than this, relative.",
    )
    drift_alpha: StrictFloat = Field(defaults.DRIFT_ALPHA, gt=0, lt=1, description="Chi-square significance level.")
    max_failed_share: StrictFloat = Field(
        defaults.MAX_FAILED_SHARE, ge=0, le=1,
        description="Flag the job when more than this share of its rows went to errors/ (none kept: always).",
    )
    sample_rows: StrictInt = Field(defaults.QUALITY_SAMPLE_ROWS, ge=10, le=100_000,
                             description="Rows sampled for diversity and similarity metrics.")
    _uri = field_validator("reference")(lambda v: v if v is None else checked_uri(v))


class Mix(_Strict):
    """A training-ready `mixed/` split of real and synthetic rows at an exact ratio."""

    uri: str = Field(..., description="Real rows: JSONL or Parquet with `completion` or `text` (and `prompt`).")
    ratio: StrictFloat = Field(..., gt=0, lt=1, description="Share of real rows in the mixed split.")
    _uri = field_validator("uri")(checked_uri)


REFERENCE_COLUMNS = ("completion", "text", "response")  # where a real-data record holds its text, in order


def reference_text(record: dict[str, Any]) -> str | None:
    """The text of a real-data record: its completion, or its text."""
    for key in REFERENCE_COLUMNS:
        value = record.get(key)
        if isinstance(value, str):
            return value
    return None
