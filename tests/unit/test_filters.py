"""Per-row filters: each rejection has a reason; clean text passes."""

from __future__ import annotations

import pytest

from orchestrator.gates import Filters
from workers.filters import rejection, repetition_share

CLEAN = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside chloroplasts."


def test_clean_text_passes_every_default_filter() -> None:
    assert rejection(Filters(), CLEAN, 18) is None


@pytest.mark.parametrize(("filters", "text", "tokens", "reason"), [
    (Filters(min_chars=200), CLEAN, 18, "too_short"),
    (Filters(max_chars=20), CLEAN, 18, "too_long"),
    (Filters(min_tokens=19), CLEAN, 18, "too_short"),
    (Filters(max_tokens=17), CLEAN, 18, "too_long"),
    (Filters(deny=[r"\bsugar\b"]), CLEAN, 18, "deny_pattern"),
    (Filters(allow=[r"^\{", r"mitochondria"]), CLEAN, 18, "allow_pattern"),
    (Filters(), "I'm sorry, but I can't help with that request.", 10, "refusal"),
    (Filters(), "As an AI language model, I do not have opinions.", 10, "refusal"),
    (Filters(), "Sure, here is a poem about the sea: waves and salt.", 12, "boilerplate"),
    (Filters(), "Water boils at 100 C at sea level. I hope this helps!", 14, "boilerplate"),
    (Filters(), "the cat sat on the mat " * 10, 60, "boilerplate"),
])
def test_each_filter_rejects_with_its_reason(filters: Filters, text: str, tokens: int, reason: str) -> None:
    found = rejection(filters, text, tokens)
    assert found is not None and found[0] == reason


def test_switched_off_detectors_let_refusals_and_filler_through() -> None:
    off = Filters(refusal=False, boilerplate=False)
    assert rejection(off, "I'm sorry, but no.", 4) is None
    assert rejection(off, "the cat sat on the mat " * 10, 60) is None


def test_the_detail_names_the_pattern_that_matched() -> None:
    assert rejection(Filters(deny=["zebra", "sugar"]), CLEAN, 18) == ("deny_pattern", "matches filters.deny[1]")


def test_repetition_share_counts_repeated_four_grams() -> None:
    # 20 words cycling through 4 distinct words: 17 four-grams, of which only 4 are distinct.
    assert repetition_share("a b c d " * 5) == pytest.approx(13 / 17)
    assert repetition_share(CLEAN) == 0.0  # fewer than 16 words: not judged
