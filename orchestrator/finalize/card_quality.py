"""The dataset card's "Quality" and "Flags": the quality report's figures in Markdown, each part only when
the report has it (a reference, dedup, a judge, seed variables, a mixed split, targets, stages)."""

from __future__ import annotations

from orchestrator.finalize.markdown import bullets, code, num, pct, table, text
from orchestrator.finalize.passes import failure_flag
from orchestrator.finalize.quality_report import Drift, LengthSummary, QualityReport

DIVERSITY_NOTE = ("distinct-n: unique n-grams over all n-grams; compression ratio: raw over gzip size (higher: more "
                  "repetition); mean pairwise similarity: lower is more diverse; embedding dispersion: higher is more "
                  "diverse.")


def quality_section(q: QualityReport) -> str:
    parts = [_diversity(q), _dedup(q), _judge(q), _lengths(q), _drift("Bias drift", q.drift, "planned"),
             _drift("Mixing drift", q.mixed_drift, "kept"), _targets(q), _stages(q)]
    return "## Quality\n\n" + "\n\n".join(p for p in parts if p)


def flags_section(q: QualityReport) -> str:
    items = flags(q)
    if items:
        return "## Flags\n\n" + bullets(items)
    checked = "diversity is within range of the reference" if q.reference else "no reference data was configured"
    return f"## Flags\n\nNo flags: no seed value drifted, and {checked}."


def flags(q: QualityReport) -> list[str]:
    """One line per problem a reader must see first, as the HTML report raises them."""
    items = []
    if failure := failure_flag(q.rows):
        items.append(f"**Failed rows:** {text(failure, 300)}")
    if (r := q.reference) is not None and r.below_reference:
        metrics = ", ".join(f"{code(m)} ({num(r.diversity_ratios.get(m))}×)" for m in r.flagged)
        items.append(f"**Collapse warning:** diversity below {num(r.min_ratio)}× the reference on {metrics}.")
    if q.truncation.flagged:
        t = q.truncation
        items.append(f"**Cut off:** {t.rows:,} rows ({pct(t.share)}) stopped at max_tokens = {t.max_tokens:,}: their "
                     "text is unfinished.")
    items += [f"**Target not met:** {text(s.stratum)}: {s.kept:,} of {s.target:,} kept rows ({text(s.why_not or '')})."
              for s in (q.targets.strata if q.targets else []) if not s.met]
    return items + _drift_flags("Bias drift", q.drift, "planned") + _drift_flags("Mixing drift", q.mixed_drift, "kept")


def _drift_flags(title: str, drift: Drift | None, base: str) -> list[str]:
    items = []
    for name, variable in drift.variables.items() if drift else []:
        for v in (v for v in variable.values if v.flagged):
            items.append(f"**{title}:** {code(name)} = {text(v.value)}: {v.why(base)} (p = {num(v.p_value, 2)}).")
    return items


def _diversity(q: QualityReport) -> str:
    if not q.diversity:
        return ""
    of = f" of {code(q.diversity_column)}" if q.diversity_column else ""
    r = q.reference
    head = ["metric", "value"] + (["reference", "ratio"] if r else [])
    rows = [[code(m), num(v)] + ([num(r.metrics.get(m)), num(r.diversity_ratios.get(m))] if r else [])
            for m, v in q.diversity.items()]
    against = f" Reference: {text(r.uri)}, on a sample of the same size." if r else ""
    return (f"### Diversity\n\nOn a sample of {q.sample_rows:,} kept rows{of}.{against} {DIVERSITY_NOTE}\n\n"
            + table(head, rows))


def _dedup(q: QualityReport) -> str:
    d = q.dedup
    if d is None:
        return ""
    near = f", near threshold {num(d.near_threshold)}" if d.near_threshold is not None else ", exact only"
    return (f"### Duplicates\n\n{d.exact_duplicates:,} exact and {d.near_duplicates:,} near duplicates among "
            f"{d.rows_scanned:,} rows ({pct(d.rate)}){near}; they are in `rejected/`.")


def _judge(q: QualityReport) -> str:
    j = q.judge
    if j is None:
        return ""
    rows = [[score, num(n)] for score, n in j.scores.items()]
    return (f"### Judge scores\n\nMean {num(j.mean)}; rows under {j.min_score} were rejected; {j.errors:,} judge "
            "errors.\n\n" + table(["score", "rows"], rows))


def _length_row(name: str, s: LengthSummary) -> list[str]:
    return [name] + [num(getattr(s, k)) for k in ("mean", "p50", "p90", "p99", "min", "max")]


def _lengths(q: QualityReport) -> str:
    shown = {"completion_chars": "characters", "completion_tokens": "tokens", "reference_chars": "reference characters"}
    rows = [_length_row(name, s) for key, name in shown.items() if (s := q.lengths.get(key)) is not None and s.count]
    t = q.truncation
    cut = (f"{t.rows:,} rows ({pct(t.share)}) stopped at `sampling.max_tokens` = {t.max_tokens:,}.")
    return ("### Completion lengths\n\n" + (table(["", "mean", "p50", "p90", "p99", "min", "max"], rows) + "\n\n"
                                             if rows else "") + cut)


def _drift(title: str, drift: Drift | None, base: str) -> str:
    if drift is None or not drift.variables:
        return ""
    rows = [[code(name), num(len(v.values)), num(v.p_value, 2),
             ", ".join(text(x.value, 40) for x in v.values if x.flagged) or "none"]
            for name, v in drift.variables.items()]
    return (f"### {title}\n\nThe rows lost per seed value, of the {base} rows: a value is flagged when its loss "
            f"rate differs from the other values' by more than {pct(drift.margin)} and significantly (α = "
            f"{num(drift.alpha)}, over the job's {drift.tests:,} tests).\n\n"
            + table(["variable", "values", "p-value", "flagged values"], rows))


def _targets(q: QualityReport) -> str:
    t = q.targets
    if t is None:
        return ""
    rows = [[text(s.stratum), num(s.target), num(s.generated), num(s.kept), num(s.over_target), pct(s.acceptance),
             "met" if s.met else f"not met: {text(s.why_not or '')}"] for s in t.strata]
    return (f"### Targets\n\nBy {', '.join(code(b) for b in t.by)}: {t.rounds} of at most {t.max_rounds} rounds, "
            f"{t.rows_generated:,} rows generated for {t.targeted:,} targeted (cost {num(t.cost_ratio)}).\n\n"
            + table(["stratum", "target", "generated", "kept", "over target", "acceptance", ""], rows))


def _stages(q: QualityReport) -> str:
    if not q.stages:
        return ""
    rows = [[code(name), s.kind, num(s.rows), num(s.chars.mean if s.chars else None),
             num((s.diversity or {}).get("distinct_2")), pct(s.truncated_share), num(s.mean)]
            for name, s in q.stages.items()]
    return "### Per stage\n\n" + table(["stage", "kind", "rows", "mean chars", "distinct-2", "cut off", "mean score"],
                                       rows)
