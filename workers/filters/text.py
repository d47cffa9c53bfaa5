"""The normalised text the detectors match: ASCII quotes, NFKC, casefolded, sentences, JSON."""

from __future__ import annotations

import json
import re
import unicodedata

QUOTES = {c: "'" for c in "\u2018\u2019\u201a\u201b\u2032\u02bc\u00b4\uff07"} | {
    c: '"' for c in "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb\uff02"}
CURLY = re.compile("[" + "".join(QUOTES) + "]")
EMPHASIS = re.compile(r"[*_`]+")
SENTENCE_END = re.compile(r"(?<=[.!?\u2026])[\"')\]*_]*\s+|\s*\n\s*")
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
ALNUM = re.compile(r"[^\W_]")


def ascii_quotes(text: str) -> str:
    """Curly quotes and apostrophes as ASCII, offsets unchanged."""
    return text if text.isascii() else CURLY.sub(lambda m: QUOTES[m.group()], text)


def normalise(text: str) -> str:
    """The text as the detectors read it: ASCII quotes, NFKC, casefolded, no emphasis, single spaces."""
    t = unicodedata.normalize("NFKC", ascii_quotes(text)).casefold()
    return " ".join(EMPHASIS.sub("", t).split())


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence or line of `text` that has any letter or digit."""
    spans, start = [], 0
    for m in SENTENCE_END.finditer(text):
        if ALNUM.search(text, start, m.start()):
            spans.append((start, m.start()))
        start = m.end()
    if ALNUM.search(text, start):
        spans.append((start, len(text)))
    return spans


def sentences(text: str) -> list[str]:
    return [normalise(text[a:b]) for a, b in sentence_spans(text)]


def is_json(text: str) -> bool:
    """Structured output (checked by its schema, never stripped or read for repetition)."""
    t = text.strip()
    if t[:1] not in ("{", "["):
        return False
    try:
        json.loads(t)
    except ValueError:
        return False
    return True
