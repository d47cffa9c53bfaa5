"""The quality report: the `quality` section of `_manifest.json` and the data behind `quality_report.html`.

Typed and frozen, with one reader (`Manifest.quality`), so a field renamed where the report is built
fails where it is read, not silently. Every model forbids unknown keys; `json_dict` gives back exactly
the keys that were set, so the JSON on disk is what the builders wrote.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

Num = int | float  # an int stays an int on a round trip (a plain `float` would write 0 as 0.0)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def json_dict(self) -> dict[str, Any]:
        """The JSON-ready dict of the keys that were set, in field order."""
        return self.model_dump(mode="json", exclude_unset=True)


class About(Frozen):
    """What ran (spec, model, sampling), when, and what it cost."""

    name: str
    spec_hash: str
    model: str
    model_revisions: list[str]
    sampling: dict[str, Any]
    started_at: str
    finished_at: str
    wall_seconds: Num
    tokens: dict[str, int]
    completion_tokens_per_s: Num
    generation_seconds: Num


class ErrorCount(Frozen):
    """One error code: how many rows had it, and the message of its first row."""

    code: str
    rows: int
    sample: str


class Rows(Frozen):
    input: int
    generated: int
    kept: int
    failed: int
    rejected: dict[str, int]
    top_errors: list[ErrorCount]
    errors: list[ErrorCount]
    max_failed_share: Num


class Reference(Frozen):
    """The synthetic sample against a sample of real data of the same size."""

    uri: str
    min_ratio: Num
    skipped_lines: int
    skipped_sample: list[str]
    metrics: dict[str, Num]
    synthetic_metrics: dict[str, Num]
    ratios: dict[str, Num | None]
    diversity_ratios: dict[str, Num | None]
    noise_floors: dict[str, Num | None]
    flagged: list[str]
    below_reference: bool
    sample_rows: int


class DedupCounts(Frozen):
    exact_duplicates: int
    near_duplicates: int
    rows_scanned: int
    rate: Num
    near_threshold: Num | None  # None: exact dedup only


class JudgeScores(Frozen):
    scores: dict[str, int]
    min_score: int
    mean: Num | None
    errors: int


class LengthSummary(Frozen):
    """Count, mean, percentiles, range and histogram of lengths; the statistics are None when empty."""

    count: int
    mean: Num | None
    p50: Num | None
    p90: Num | None
    p99: Num | None
    min: Num | None
    max: Num | None
    edges: list[Num]
    counts: list[int]


class Truncation(Frozen):
    rows: int
    share: Num
    max_tokens: int
    flagged: bool
    max_share: Num


class DriftValue(Frozen):
    """One seed value: planned and kept rows, shares, loss rate against the rest's, and its flag."""

    value: Any
    planned: int
    kept: int
    planned_share: Num | None
    kept_share: Num | None
    shift: Num | None
    loss_rate: Num | None
    rest_loss_rate: Num | None
    p_value: Num | None
    flagged: bool

    def why(self, base: str) -> str:
        """What a flagged value's rows did, in words (`base`: what its share was measured against)."""
        def pct(x: Num | None) -> str:
            return "–" if x is None else f"{x:.1%}"
        if self.planned == 0:
            return f"never {base}, yet {self.kept:,} kept"
        if self.rest_loss_rate is not None:
            return f"{pct(self.loss_rate)} of its {base} rows lost, the other values {pct(self.rest_loss_rate)}"
        return f"{pct(self.planned_share)} of {base} rows, {pct(self.kept_share)} of kept"


class DriftVariable(Frozen):
    chi2: Num | None
    p_value: Num | None
    loss_rate: Num | None
    flagged: bool
    values: list[DriftValue]


class Drift(Frozen):
    """Loss rate by seed value of every seed variable, and the values removed unevenly."""

    variables: dict[str, DriftVariable]
    flagged_values: int
    flagged_variables: list[str]
    loss_rate: Num | None
    max_loss_gap: Num
    max_shift: Num
    tests: int
    margin: Num
    alpha: Num

    def flagged_labels(self, name: str) -> list[str]:
        """The flagged values of one variable, as text."""
        return [str(v.value) for v in self.variables[name].values if v.flagged]


class Examples(Frozen):
    """Rows shown in the report: best and worst kept, lowest rejected by reason, duplicate pairs, per-value stats."""

    best: list[dict[str, Any]]
    worst: list[dict[str, Any]]
    rejected: dict[str, list[dict[str, Any]]]
    duplicates: list[dict[str, Any]]
    values: dict[str, list[dict[str, Any]]]


class StageQuality(Frozen):
    """One stage's part of the report: a generate stage's lengths, diversity and truncation, a judge stage's scores."""

    kind: str
    rows: int
    chars: LengthSummary | None = None
    tokens: LengthSummary | None = None
    diversity: dict[str, Num] | None = None
    truncated_share: Num | None = None
    scores: dict[str, int] | None = None
    mean: Num | None = None


class StratumTarget(Frozen):
    """One stratum of a targets job: what it was asked for, what it cost, whether it was met and why not."""

    stratum: str
    values: list[Any]
    planned_share: Num
    target: int
    generated: int
    kept: int  # in data/: at most the target
    over_target: int  # kept by every gate but beyond the target: rejected/over_target-*
    acceptance: Num | None  # kept by every gate / generated
    rounds: int  # rounds that generated rows of it
    met: bool
    why_not: str | None


class TargetsReport(Frozen):
    by: list[str]
    rounds: int
    max_rounds: int
    rows_generated: int
    kept: int
    targeted: int
    cost_ratio: Num | None  # rows generated / the fewest that meet every target at the measured acceptance rates
    strata: list[StratumTarget]
    unmet: list[str]
    flagged: bool


class QualityReport(Frozen):
    job_id: str
    about: About
    rows: Rows
    diversity: dict[str, Num]
    sample_rows: int
    reference: Reference | None
    dedup: DedupCounts | None
    lengths: dict[str, LengthSummary]
    judge: JudgeScores | None
    finish_reasons: dict[str, int]
    truncation: Truncation
    examples: Examples
    drift: Drift
    mixed_drift: Drift | None = None  # only with `mix:`: the mixed split's seed mix against all kept rows
    stages: dict[str, StageQuality] | None = None  # only with stages, in stage order
    diversity_column: str | None = None  # only with stages: the text `diversity` measures (quality.column)
    targets: TargetsReport | None = None  # only with targets
