"""Per-row filters: each rejection has a reason; clean text passes; refusals are told from apologies,
filler is stripped (or rejected), degenerate repetition is told from legitimately repetitive text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.spec.quality import Filters
from workers.filters import rejection, repetition_share, stored_text

CLEAN = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside chloroplasts."


def reason(text: str, filters: Filters | None = None) -> str | None:
    found = rejection(filters or Filters(), text, 20)
    return None if found is None else found[0]


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
    (Filters(filler="reject"), "Sure, here is a poem about the sea: waves and salt.", 12, "filler"),
    (Filters(filler="reject"), "Water boils at 100 C at sea level. I hope this helps!", 14, "filler"),
    (Filters(), "Of course! I hope this helps!", 8, "filler"),
    (Filters(), "the cat sat on the mat " * 10, 60, "repetition"),
])
def test_each_filter_rejects_with_its_reason(filters: Filters, text: str, tokens: int, reason: str) -> None:
    found = rejection(filters, text, tokens)
    assert found is not None and found[0] == reason


def test_switched_off_detectors_let_refusals_filler_and_loops_through() -> None:
    off = Filters(refusal=False, filler="keep", repetition=False)
    assert rejection(off, "I'm sorry, but I can't help with that.", 4) is None
    assert rejection(off, "Sure! Paris. I hope this helps!", 6) is None
    assert rejection(off, "the cat sat on the mat " * 10, 60) is None


def test_the_detail_names_the_pattern_that_matched() -> None:
    assert rejection(Filters(deny=["zebra", "sugar"]), CLEAN, 18) == ("deny_pattern", "matches filters.deny[1]")


def test_the_refusal_detail_quotes_the_statement() -> None:
    found = rejection(Filters(), "Thanks for asking. Sorry, I can't assist with that.", 10)
    assert found is not None and "sorry, i can't assist with that" in found[1]


# --- refusals: the examples of issue 12 ------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "I'm sorry to hear that your flight was cancelled. Call the airline's rebooking line; they must offer the next "
    "available seat at no cost.",
    "I apologize for the confusion, here is the corrected query: SELECT name FROM users WHERE active;",
    "As an airline pilot, I can tell you that turbulence is uncomfortable but rarely dangerous.",
])
def test_apologies_for_the_users_trouble_and_personas_are_not_refusals(text: str) -> None:
    assert reason(text) is None


@pytest.mark.parametrize("text", [
    "I\u2019m sorry, but I can\u2019t help with that.",
    "I'm afraid I can't do that.",
    "My apologies, but I can't write that review.",
    "As a language model, I don't have personal opinions.",
])
def test_refusals_the_old_pattern_missed_are_caught(text: str) -> None:
    assert reason(text) == "refusal"


@pytest.mark.parametrize("text", [
    "I'm not able to help with that.",
    "I must respectfully decline.",
    "That's not something I can help with.",
    "Sorry, I can't assist with that.",
    "I understand your concern, but I can't help you get into someone else's account.",
    "Thanks for the question.\n\nUnfortunately, I'm not able to write malware, even for testing.",
])
def test_refusal_statements_are_caught_after_an_apology_a_preamble_or_an_opener(text: str) -> None:
    assert reason(text) == "refusal"


@pytest.mark.parametrize("text", [
    "Unfortunately, the train doesn't run on Sundays; take the 9:40 bus from Central Station instead.",
    "I can't stress enough how important a backup is: copy everything to an external drive first.",
    "I cannot recommend this book highly enough; every chapter stands on its own.",
    "When a chatbot replies \"I'm sorry, but I can't help with that,\" the request tripped a safety classifier.",
    "A typical refusal reads:\n\n> I'm sorry, but I can't help with that.\n\nRephrase with your use case.",
    "I can't help but notice your loop starts at 1; start it at 0 instead.",
])
def test_helpful_answers_that_sound_like_refusals_pass(text: str) -> None:
    assert reason(text) is None


def test_a_refusal_is_only_looked_for_in_the_opening_sentences() -> None:
    caveat = "Boil the pasta. Drain it. Add the sauce. Stir. I can't help with wine pairings."
    assert reason(caveat) is None


# --- filler: stripped, rejected or kept --------------------------------------------------------------

@pytest.mark.parametrize("closer", [
    "Let me know if you have any other questions!",
    "Let me know if you need any more help with your resume.",
    "I hope this helps!",
    "Hope that helps! Let me know if anything is unclear.",
    "Feel free to ask if you need more examples.",
    "Happy to help further.",
    "If you have any other questions, feel free to ask.",
    "Don\u2019t hesitate to reach out if you run into problems.",
    "Is there anything else I can help you with?",
    "Would you like me to turn this into a checklist?",
    "Good luck with your interview!",
    "I hope this gives you a good starting point. Happy coding!",
    "Please let me know if you'd like me to adjust the tone.",
])
def test_a_filler_closer_is_stripped_whole(closer: str) -> None:
    answer = "Water boils at 100 C at sea level."
    assert stored_text(Filters(), f"{answer} {closer}") == answer
    assert reason(f"{answer} {closer}", Filters(filler="reject")) == "filler"


@pytest.mark.parametrize(("text", "stored"), [
    ("Of course, the capital of Peru is Lima.", "The capital of Peru is Lima."),
    ("Sure! Here's a haiku about rain:\n\nSoft rain on the roof", "Soft rain on the roof"),
    ("Great question! Octopuses have three hearts.", "Octopuses have three hearts."),
    ("Sure, here's a joke: why did the scarecrow win?", "Here's a joke: why did the scarecrow win?"),
])
def test_a_filler_opener_is_stripped_and_the_answer_kept(text: str, stored: str) -> None:
    assert stored_text(Filters(), text) == stored
    assert rejection(Filters(), text, 10) is None


@pytest.mark.parametrize("text", [
    "If you have any questions about side effects, ask your pharmacist.",
    "Of course not: a whale is a mammal.",
    "Here's the corrected code:\n\n```python\nx = 1\n# I hope this helps!\n```",
    "{\"answer\": \"Paris. I hope this helps!\"}",
])
def test_an_answers_own_words_code_and_json_are_never_stripped(text: str) -> None:
    assert stored_text(Filters(), text) == text


def test_filler_is_kept_as_written_when_asked() -> None:
    text = "Sure! Paris. I hope this helps!"
    assert stored_text(Filters(filler="keep"), text) == text and reason(text, Filters(filler="keep")) is None


def test_checks_read_the_stripped_text_so_stripping_first_changes_nothing() -> None:
    f = Filters(min_chars=10)
    text = "Sure! Paris. I hope this helps!"
    assert rejection(f, text, 8) == rejection(f, stored_text(f, text), 8) == ("too_short", "6 chars, bound 10")


def test_a_completion_of_nothing_but_filler_is_stored_as_written_and_rejected() -> None:
    text = "Of course! I hope this helps!"
    assert stored_text(Filters(), text) == text
    assert rejection(Filters(), text, 8) == ("filler", "nothing but filler: 'Of course! I hope this helps!'")


def test_an_empty_completion_is_not_called_filler() -> None:
    assert rejection(Filters(), "", 0) is None


# --- repetition ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "The mitochondria is the powerhouse of the cell. The mitochondria is the powerhouse of the cell.",
    "Exercise improves mood and sleep. Even a short walk counts, and the benefits build over weeks. "
    "Consistency beats intensity every time. Consistency beats intensity every time. Consistency beats "
    "intensity every time.",
    "1. Apples 2. Apples 3. Apples",
    "Tips:\n- Drink water\n- Drink water\n- Drink water",
    "Step 1: Open the app.\nStep 2: Open the app.\nStep 3: Open the app.",
    "Thank you! Thank you! Thank you! Thank you!",
    "Bread needs patience and a long, slow fermentation. Use strong flour. Bread needs patience and a long, slow "
    "fermentation.",
])
def test_degenerate_repetition_is_rejected(text: str) -> None:
    assert reason(text) == "repetition"


@pytest.mark.parametrize("text", [
    "```python\ndef test_a(self):\n    self.assertEqual(f(1), 1)\n\ndef test_b(self):\n    self.assertEqual(f(1), 1)\n"
    "\ndef test_c(self):\n    self.assertEqual(f(1), 1)\n```",
    "| Day | Opens |\n|---|---|\n| Monday | 9:00 |\n| Tuesday | 9:00 |\n| Wednesday | 9:00 |\n| Thursday | 9:00 |",
    "Fruits high in vitamin C:\n1. Guava\n2. Kiwi\n3. Orange\n4. Strawberry",
    "The tide comes in across the sand,\nIt takes the castles that we planned,\nAnd still we build them, hand in "
    "hand,\nAnd still we build them, hand in hand.\n\nThe gulls are calling from the pier,\nThe summer ends, "
    "another year,\nAnd still we build them, hand in hand.",
    "[{\"role\": \"admin\", \"active\": true}, {\"role\": \"admin\", \"active\": true}, {\"role\": \"admin\", "
    "\"active\": true}, {\"role\": \"admin\", \"active\": true}]",
    "1. Add the onions. Stir well.\n2. Add the garlic. Stir well.\n3. Add the stock. Stir well.",
])
def test_legitimately_repetitive_text_passes(text: str) -> None:
    assert reason(text) is None


def test_verse_may_double_a_line_but_not_triple_it() -> None:
    verse = "Woods are lovely, dark and deep,\nBut I have promises to keep,\n{}"
    assert reason(verse.format("And miles to go before I sleep,\nAnd miles to go before I sleep.")) is None
    assert reason(verse.format("And miles to go\nAnd miles to go\nAnd miles to go")) == "repetition"


def test_repetition_share_counts_repeated_four_grams() -> None:
    # 20 words cycling through 4 distinct words: 17 four-grams, of which only 4 are distinct.
    assert repetition_share("a b c d " * 5) == pytest.approx(13 / 17)
    assert repetition_share(CLEAN) == 0.0  # fewer than 16 words: not judged


# --- the spec ----------------------------------------------------------------------------------------

def test_filler_is_stripped_and_repetition_rejected_by_default() -> None:
    f = Filters()
    assert (f.filler, f.repetition, f.refusal) == ("strip", True, True)


@pytest.mark.parametrize(("old", "filler", "repetition"), [(True, "reject", True), (False, "keep", False)])
def test_the_replaced_boilerplate_field_still_reads_as_it_meant(old: bool, filler: str, repetition: bool) -> None:
    f = Filters.model_validate({"min_chars": 5, "boilerplate": old})
    assert (f.min_chars, f.filler, f.repetition) == (5, filler, repetition)


def test_boilerplate_beside_its_replacements_is_refused() -> None:
    with pytest.raises(ValidationError, match="remove boilerplate"):
        Filters.model_validate({"boilerplate": True, "filler": "strip"})


def test_an_unknown_filler_mode_is_refused() -> None:
    with pytest.raises(ValidationError, match="filler"):
        Filters.model_validate({"filler": "drop"})
