"""The report's tables and example rows: what a data scientist reads before the plots.

Rows first (the best and the worst judged, rejected rows with why, duplicate pairs side by side),
then per seed value (kept share, loss, rejection rate, judge mean, length), the finish reasons and
the errors by code. Every piece of user text is HTML-escaped.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from html import escape
from typing import Any

from orchestrator.finalize.quality_report import DriftValue, DriftVariable, QualityReport

VALUES_NOTE = ("lost: share of planned rows not kept (failed, rejected or duplicate); rejected: share of generated "
               "rows; red: flagged by the bias-drift test.")
MAX_VALUE_ROWS = 50  # values per variable in its table: every flagged one, then the most planned


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def label(value: Any) -> str:
    """How a seed value reads: strings as they are, other scalars as JSON (true, 3, null)."""
    return value if isinstance(value, str) else json.dumps(value)


def card(title: str, body: str) -> str:
    return f'<div class="card"><h3>{escape(title)}</h3>{body}</div>'


def note(text: str) -> str:
    return f'<p class="muted">{escape(text)}</p>'


def _table(head: list[str], rows: list[list[str]], numeric: Collection[int] = ()) -> str:
    """An HTML table; cells are HTML already (escape user text before)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td class=num>{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _text(text: str | None) -> str:
    return f'<div class="text">{escape(text or "")}</div>'


def _example(e: dict[str, Any]) -> str:
    """One row: its prompt and completion, and what the gates said of it."""
    said = []
    if e.get("score") is not None:
        said.append(f"<b>score {e['score']}</b>" + (f": {escape(str(e.get('reason') or ''))}" if e.get("reason")
                                                     else ""))
    if e.get("detail"):
        said.append(f"<b>{escape(str(e.get('reason', '')))}</b>: {escape(str(e['detail']))}")
    if e.get("finish_reason") == "length":
        said.append('<span class="flag">cut at max_tokens</span>')
    return (f'<div class="example"><div class="muted">{escape(str(e.get("row_id", "")))}</div>'
            f'<div class="said">{" · ".join(said)}</div><div class="label">prompt</div>{_text(e.get("prompt"))}'
            f'<div class="label">completion</div>{_text(e.get("completion"))}</div>')


def _pair(p: dict[str, Any]) -> str:
    original = p.get("original")
    right = _text(original) if original is not None else note("(the original row was not found in data/)")
    return (f'<div class="pair"><div><div class="label">duplicate {escape(str(p.get("row_id", "")))} '
            f'({escape(str(p.get("reason", "")))})</div>{_text(p.get("completion"))}</div>'
            f'<div><div class="label">original {escape(str(p.get("original_id", "")))}</div>{right}</div></div>')


def examples_section(report: QualityReport) -> str:
    ex = report.examples
    parts = []
    for rows, title in ((ex.best, "Best judged rows (kept)"), (ex.worst, "Worst judged rows (kept or rejected)")):
        if rows:
            parts.append(card(title, "".join(_example(e) for e in rows)))
    for reason, rows in ex.rejected.items():
        parts.append(card(f"Rejected: {reason}", "".join(_example(e) for e in rows)))
    if ex.duplicates:
        parts.append(card("Duplicate pairs", "".join(_pair(p) for p in ex.duplicates)))
    if not parts:
        return "<h2>Example rows</h2>" + note("No rows to show.")
    return f'<h2>Example rows</h2><div class="grid">{"".join(parts)}</div>'


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _value_rows(table: list[dict[str, Any]], variable: DriftVariable | None) -> list[list[str]]:
    """One table row per seed value: drift's planned/kept/loss beside the examples' rejection/judge/length."""
    by_value = {_key(r["value"]): r for r in table}
    if variable is not None:
        values = sorted(variable.values, key=lambda v: (not v.flagged, -v.planned))
    else:
        values = [DriftValue(value=r["value"], planned=0, kept=r.get("kept", 0), planned_share=None, kept_share=None,
                             shift=None, loss_rate=None, rest_loss_rate=None, p_value=None, flagged=False)
                  for r in table]
    rows = []
    for v in values[:MAX_VALUE_ROWS]:
        stats = by_value.get(_key(v.value), {})
        flag = ' class="flag"' if v.flagged else ""
        rows.append([f"<span{flag}>{escape(label(v.value))}</span>", f"{v.planned:,}" if variable else "–",
                     f"{stats.get('kept', v.kept):,}", pct(v.kept_share), pct(v.loss_rate),
                     pct(stats.get("rejection_rate")), fmt(stats.get("judge_mean")), fmt(stats.get("mean_chars"), 4),
                     fmt(stats.get("mean_tokens"), 4)])
    return rows


def values_section(report: QualityReport) -> str:
    tables = report.examples.values
    variables = report.drift.variables
    names = list(variables) or list(tables)
    if not names:
        return ""
    head = ["value", "planned", "kept", "kept share", "lost", "rejected", "judge mean", "mean chars", "mean tokens"]
    cards = "".join(card(name, _table(head, _value_rows(tables.get(name) or [], variables.get(name)), set(range(1, 9))))
                    for name in names)
    return f'<h2>Per seed value</h2>{note(VALUES_NOTE)}<div class="stack">{cards}</div>'


def outcomes_section(report: QualityReport) -> str:
    """Finish reasons of the generated rows and the errors by code."""
    reasons = report.finish_reasons
    total = sum(reasons.values())
    finish = _table(["finish reason", "rows", "share"],
                    [[escape(r), f"{n:,}", pct(n / total if total else None)] for r, n in reasons.items()], {1, 2})
    errors = report.rows.errors
    error_table = _table(["error code", "rows", "first message"],
                         [[escape(e.code), f"{e.rows:,}", escape(e.sample)] for e in errors], {1})
    return (f'<h2>Outcomes</h2><div class="grid">{card("Finish reasons", finish if reasons else note("No rows."))}'
            f'{card("Errors by code", error_table if errors else note("No row failed."))}</div>')


def stages_section(report: QualityReport) -> str:
    """One row per stage of a job with stages: its kept rows, lengths, distinct-2 and truncation, or its scores."""
    if not report.stages:
        return ""
    rows = []
    for name, s in report.stages.items():
        chars, tokens = (s.chars.mean if s.chars else None), (s.tokens.mean if s.tokens else None)
        scores = ", ".join(f"{k}: {v:,}" for k, v in (s.scores or {}).items()) or "–"
        rows.append([escape(name), s.kind, f"{s.rows:,}", fmt(chars, 4), fmt(tokens, 4),
                     fmt((s.diversity or {}).get("distinct_2")), pct(s.truncated_share), fmt(s.mean), escape(scores)])
    head = ["stage", "kind", "kept rows", "mean chars", "mean tokens", "distinct-2", "cut at max_tokens",
            "mean score", "scores"]
    return f'<h2>Per stage</h2>{note(STAGES_NOTE)}{_table(head, rows, {2, 3, 4, 5, 6, 7})}'


STAGES_NOTE = ("Each stage over the kept rows (a stage a row skipped is left out): a generate stage's text, "
               "a judge stage's scores.")


TARGETS_NOTE = ("Kept rows per stratum against its target, after every gate and dedup; rows kept beyond the target "
                "went to rejected/ as over_target (the lowest row ids stay). Acceptance: kept by every gate / "
                "generated. Cost: rows generated / the fewest that meet every target at these acceptance rates.")


def targets_flags(report: QualityReport) -> list[str]:
    """A flag line per stratum a targets job could not fill."""
    t = report.targets
    return [f"<b>Target not met:</b> {escape(s.stratum)}: {s.kept:,} of {s.target:,} kept rows "
            f"({escape(s.why_not or '')})." for s in (t.strata if t else []) if not s.met]


def targets_section(report: QualityReport) -> str:
    """One row per stratum of a targets job: target, generated, kept, acceptance, rounds, met or why not."""
    t = report.targets
    if t is None:
        return ""
    rows = [[escape(s.stratum), pct(s.planned_share), f"{s.target:,}", f"{s.generated:,}", f"{s.kept:,}",
             f"{s.over_target:,}", pct(s.acceptance), str(s.rounds),
             "met" if s.met else f'<span class="bad">not met: {escape(s.why_not or "")}</span>'] for s in t.strata]
    head = ["stratum", "planned share", "target", "generated", "kept", "over target", "acceptance", "rounds", ""]
    summary = (f"by {escape(', '.join(t.by))}: {t.rounds} of at most {t.max_rounds} rounds, {t.rows_generated:,} "
               f"rows generated for {t.targeted:,} targeted, cost {fmt(t.cost_ratio)}")
    return f'<h2>Targets</h2><p>{summary}</p>{note(TARGETS_NOTE)}{_table(head, rows, {1, 2, 3, 4, 5, 6, 7})}'
