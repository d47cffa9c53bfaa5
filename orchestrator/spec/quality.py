"""The quality gates of a job spec: judge, filters, dedup, quality report and real-data mixing.

Judge, filters and dedup decide which rows are kept, so they are part of the job's identity (its
hash); the quality report only measures, so changing its thresholds keeps the job id.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, ValidationInfo, field_validator, model_validator

from orchestrator import defaults
from orchestrator.errors import StorageError
from orchestrator.spec.model import ModelSpec, Strict
from orchestrator.storage import check_uri


def checked_uri(uri: str) -> str:
    """A pydantic field check: the URI is a valid output or input location."""
    try:
        return check_uri(uri)
    except StorageError as e:
        raise ValueError(str(e)) from None


class Judge(Strict):
    """The model scores each kept completion on an anchored scale against a rubric, through structured output."""

    model: Literal["self"] | ModelSpec = Field(
        "self", description="self: the generation engine judges (no second load); or a model spec."
    )
    rubric: str = Field(defaults.JUDGE_RUBRIC, min_length=1, description="What a good answer is.")
    levels: dict[int, str] = Field(
        default_factory=lambda: dict(defaults.JUDGE_LEVELS),
        description="Score -> what it means, for every score of the scale (consecutive integers within 1-10), "
                    "shown to the judge. Described levels make scores consistent; each costs judge prompt tokens "
                    "on every row.",
    )
    min_score: StrictInt = Field(defaults.JUDGE_MIN_SCORE, ge=1, le=10,
                                 description="Rows scoring less go to rejected/; a score of `levels`.")
    order: Literal["reason_first", "score_first"] = Field(
        defaults.JUDGE_ORDER,
        description="reason_first: the reason, then the score (a reasoned score; when the budget cuts the reason, "
                    "the score is asked for in a few-token continuation of the cached judgement). score_first: the "
                    "score, then its justification (one request always, but the score is not reasoned).",
    )
    reference: str | None = Field(
        None, min_length=1,
        description="A seed variable or input-file column holding each row's reference answer, shown to the "
                    "judge as an answer that deserves the top score.",
    )
    reason_max_chars: StrictInt = Field(defaults.JUDGE_REASON_MAX_CHARS, ge=8, le=1000,
                                  description="Longest reason; the judgement's token budget follows from it.")

    @field_validator("levels")
    @classmethod
    def _anchored(cls, levels: dict[int, str]) -> dict[int, str]:
        scores = sorted(levels)
        if len(scores) < 2 or scores[0] < 1 or scores[-1] > 10 or scores != list(range(scores[0], scores[-1] + 1)):
            raise ValueError(f"scores must be at least 2 consecutive integers within 1-10, each described "
                             f"(got {', '.join(map(str, scores)) or 'none'})")
        blank = [s for s in scores if not levels[s].strip()]
        if blank:
            raise ValueError(f"score {blank[0]} has an empty description")
        return dict(sorted(levels.items()))

    @field_validator("min_score")
    @classmethod
    def _on_the_scale(cls, min_score: int, info: ValidationInfo) -> int:
        levels = info.data.get("levels")  # absent when levels failed their own check
        if levels and not min(levels) <= min_score <= max(levels):
            raise ValueError(f"{min_score} is outside the scale of judge.levels ({min(levels)}-{max(levels)}); "
                             "set min_score within it")
        return min_score

    @property
    def scale(self) -> tuple[int, int]:
        """The lowest and highest score."""
        return min(self.levels), max(self.levels)


class Filters(Strict):
    """Cheap per-row checks on each completion, applied on the worker before the judge."""

    min_chars: StrictInt | None = Field(None, ge=0)
    max_chars: StrictInt | None = Field(None, ge=1)
    min_tokens: StrictInt | None = Field(None, ge=0, description="Completion tokens.")
    max_tokens: StrictInt | None = Field(None, ge=1, description="Completion tokens.")
    deny: list[str] = Field(default_factory=list, description="Regexes; a completion matching any is rejected.")
    allow: list[str] = Field(default_factory=list, description="Regexes; a completion must match one.")
    refusal: StrictBool = Field(
        True, description="Reject refusals: a refusal stated in the opening sentences (\"I'm sorry, but I can't ...\", "
                          "\"As an AI language model, I ...\"); apologies for the user's trouble are not refusals.")
    filler: Literal["strip", "reject", "keep"] = Field(
        "strip", description="Chat pleasantries opening or closing a completion (\"Sure! Here's ...:\", \"I hope this "
                             "helps!\"). strip: removed from the stored and judged completion (a row with nothing "
                             "else is rejected); reject: the row is rejected; keep: left as written.")
    repetition: StrictBool = Field(
        True, description="Reject degenerate repetition: a sentence or list item looping, most 4-grams repeating "
                          "(code, tables, JSON and a verse's refrain are not counted).")

    @model_validator(mode="before")
    @classmethod
    def _boilerplate_split(cls, data: Any) -> Any:
        """`boilerplate` (before filler and repetition) still reads as it meant: true rejected both."""
        if not isinstance(data, dict) or "boilerplate" not in data:
            return data
        if "filler" in data or "repetition" in data:
            raise ValueError("boilerplate was split into filler and repetition; remove boilerplate")
        on = data["boilerplate"]
        if not isinstance(on, bool):
            raise ValueError("boilerplate must be true or false (better: set filler and repetition)")
        rest = {k: v for k, v in data.items() if k != "boilerplate"}
        return {**rest, "filler": "reject" if on else "keep", "repetition": on}

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


class Dedup(Strict):
    """Job-wide dedup of completions in a finalize pass over every committed shard."""

    exact: StrictBool = Field(True, description=(
        "Drop repeats of a normalised text: NFKC forms, case, spacing and invisible format characters "
        "(zero-width spaces, soft hyphens, BOMs, bidi marks) folded."))
    near_threshold: StrictFloat | None = Field(
        defaults.NEAR_DUP_THRESHOLD, gt=0, le=1,
        description=("Drop rows whose set of word n-grams has at least this Jaccard similarity to an earlier "
                     "row's; MinHash LSH proposes the pairs, each checked on the sets themselves. Lower drops "
                     "more paraphrases and takes longer; null: off."),
    )
    num_perm: StrictInt = Field(defaults.MINHASH_PERMUTATIONS, ge=16, le=1024, description=(
        "MinHash permutations for LSH: more find more of the pairs at the threshold, at more time per row."))
    ngram: StrictInt = Field(defaults.SHINGLE_WORDS, ge=1, le=10, description=(
        "Words per shingle. A row with fewer words is one shingle of all its words (two different short "
        "answers share nothing); a row without words is never a near duplicate."))
    column: str = Field("completion", min_length=1, description=(
        "The text compared: completion (the last stage's text), or with stages a generate stage's name "
        "(dedup the questions of a question/answer pipeline: `question`)."))


class Quality(Strict):
    """The quality report every job gets; measuring only, it never drops a row."""

    reference: str | None = Field(None, description="Real data (JSONL or Parquet) to compare diversity with.")
    min_reference_ratio: StrictFloat = Field(
        defaults.MIN_REFERENCE_RATIO, gt=0, le=10,
        description="Flag the job when a diversity metric falls below this fraction of the reference's, on "
                    "samples of the same size, and further than sampling noise reaches.",
    )
    drift_margin: StrictFloat = Field(
        defaults.DRIFT_MARGIN, ge=0, lt=1,
        description="Flag a seed value whose loss rate (dropped / planned rows) differs from the other values' "
                    "by more than this, absolute, when significant too. Smaller catches subtler bias in large "
                    "jobs; 0 flags any significant difference.",
    )
    drift_alpha: StrictFloat = Field(
        defaults.DRIFT_ALPHA, gt=0, lt=1,
        description="Chance that a job whose rows were dropped regardless of their seed values gets any drift "
                    "flag (Bonferroni over its values). Smaller: fewer false flags, only larger losses caught.",
    )
    max_failed_share: StrictFloat = Field(
        defaults.MAX_FAILED_SHARE, ge=0, le=1,
        description="Flag the job when more than this share of its rows went to errors/ (none kept: always).",
    )
    sample_rows: StrictInt = Field(defaults.QUALITY_SAMPLE_ROWS, ge=10, le=100_000,
                             description="Rows sampled for diversity and similarity metrics.")
    column: str = Field("completion", min_length=1, description=(
        "The text the diversity metrics and the reference comparison read: completion (the last stage's "
        "text), or with stages a generate stage's name. The report measures every stage too (Per stage)."))
    _uri = field_validator("reference")(lambda v: v if v is None else checked_uri(v))

    @model_validator(mode="before")
    @classmethod
    def _replaced_drift_threshold(cls, data: Any) -> Any:
        """drift_threshold (a relative share change) was replaced by drift_margin; it is accepted and ignored,
        so stored specs and job records still load. Only a value other than its old default is worth a warning."""
        if not isinstance(data, dict) or "drift_threshold" not in data:
            return data
        data = dict(data)
        if data.pop("drift_threshold") != defaults.REPLACED_DRIFT_THRESHOLD:
            import logging  # the one log line of this module

            logging.getLogger(__name__).warning(
                "quality.drift_threshold is ignored: it was replaced by quality.drift_margin, the absolute "
                "difference in loss rate that flags a seed value (default %s)", defaults.DRIFT_MARGIN)
        return data


class Mix(Strict):
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
