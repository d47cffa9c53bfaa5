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


def examples_section(report: dict[str, Any]) -> str:
    ex = report.get("examples") or {}
    parts = []
    for key, title in (("best", "Best judged rows (kept)"), ("worst", "Worst judged rows (kept or rejected)")):
        if ex.get(key):
            parts.append(card(title, "".join(_example(e) for e in ex[key])))
    for reason, rows in (ex.get("rejected") or {}).items():
        parts.append(card(f"Rejected: {reason}", "".join(_example(e) for e in rows)))
    if ex.get("duplicates"):
        parts.append(card("Duplicate pairs", "".join(_pair(p) for p in ex["duplicates"])))
    if not parts:
        return "<h2>Example rows</h2>" + note("No rows to show.")
    return f'<h2>Example rows</h2><div class="grid">{"".join(parts)}</div>'


def _value_rows(name: str, table: list[dict[str, Any]], drift: dict[str, Any]) -> list[list[str]]:
    """One table row per seed value: drift's planned/kept/loss beside the examples' rejection/judge/length."""
    by_value = {json.dumps(r["value"], sort_keys=True, default=str): r for r in table}
    values = (drift.get("variables", {}).get(name) or {}).get("values") or [{"value": r["value"]} for r in table]
    ranked = sorted(values, key=lambda v: (not v.get("flagged"), -(v.get("planned") or 0)))[:MAX_VALUE_ROWS]
    rows = []
    for v in ranked:
        stats = by_value.get(json.dumps(v["value"], sort_keys=True, default=str), {})
        flag = ' class="flag"' if v.get("flagged") else ""
        rows.append([f"<span{flag}>{escape(label(v['value']))}</span>", f"{v.get('planned', '–'):,}"
                     if isinstance(v.get("planned"), int) else "–", f"{stats.get('kept', v.get('kept', 0)):,}",
                     pct(v.get("kept_share")), pct(v.get("loss_rate")), pct(stats.get("rejection_rate")),
                     fmt(stats.get("judge_mean")), fmt(stats.get("mean_chars"), 4), fmt(stats.get("mean_tokens"), 4)])
    return rows


def values_section(report: dict[str, Any]) -> str:
    tables = (report.get("examples") or {}).get("values") or {}
    drift = report.get("drift") or {}
    names = list(drift.get("variables") or {}) or list(tables)
    if not names:
        return ""
    head = ["value", "planned", "kept", "kept share", "lost", "rejected", "judge mean", "mean chars", "mean tokens"]
    cards = "".join(card(name, _table(head, _value_rows(name, tables.get(name) or [], drift), set(range(1, 9))))
                    for name in names)
    return f'<h2>Per seed value</h2>{note(VALUES_NOTE)}<div class="stack">{cards}</div>'


def outcomes_section(report: dict[str, Any]) -> str:
    """Finish reasons of the generated rows and the errors by code."""
    reasons = report.get("finish_reasons") or {}
    total = sum(reasons.values())
    finish = _table(["finish reason", "rows", "share"],
                    [[escape(r), f"{n:,}", pct(n / total if total else None)] for r, n in reasons.items()], {1, 2})
    errors = (report.get("rows") or {}).get("errors") or []
    error_table = _table(["error code", "rows", "first message"],
                         [[escape(e["code"]), f"{e['rows']:,}", escape(e.get("sample") or "")] for e in errors], {1})
    return (f'<h2>Outcomes</h2><div class="grid">{card("Finish reasons", finish if reasons else note("No rows."))}'
            f'{card("Errors by code", error_table if errors else note("No row failed."))}</div>')
