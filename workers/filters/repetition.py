"""Degenerate repetition: sentences, list items or 4-grams looping; code, tables, JSON and refrains aside."""

from __future__ import annotations

import re
from collections import Counter

from workers.filters.text import ALNUM, WORD, is_json, normalise, sentences

REPEAT_NGRAM = 4
REPEAT_MIN_WORDS = 16
REPEAT_MAX_SHARE = 0.5  # more than half of a prose text's 4-grams repeating: a degenerate loop
REPEAT_MAX_SHARE_ALL = 0.8  # the same, code included (a loop in code); tables and JSON are never read
SENTENCE_MIN_WORDS = 3  # shorter sentences ("Stir well.") may recur in a recipe
SHORT_RUN = 4  # any sentence, however short, said this many times in a row ("Thank you! Thank you! ...")
LONG_SENTENCE_WORDS = 8  # a sentence this long said twice, even apart, is a loop
VERSE_MAX_WORDS = 10  # most lines this short, and at least VERSE_MIN_LINES of them: verse
VERSE_MIN_LINES = 4
VERSE_RUN = 3  # in verse a line may be doubled (a refrain), not tripled
FENCED = re.compile(r"^[ \t]*```.*?(?:^[ \t]*```[^\n]*$|\Z)", re.DOTALL | re.MULTILINE)
TABLE_LINE = re.compile(r"^[ \t]*\|.*$", re.MULTILINE)
CODE_LINE = re.compile(r"[;{}=]|^\s*(?:def|class|return|import|from|for|while|if|elif|else|try|except|const|let|var"
                       r"|function|public|private|#include|SELECT|INSERT)\b.*[(:]|\)\s*:?\s*$")
LIST_MARK = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*\u2022+])\s+")
NUMBERED = re.compile(r"^\s*(?:step|day|week|part|item|tip|option|no\.?)\s*\d{1,3}\s*[.):-]\s*", re.I)
INLINE_ITEM = re.compile(r"(?:^|\s)\d{1,3}[.)]\s+")
LABEL = re.compile(r"^\s*[\[(]?(?:verse|chorus|refrain|bridge|outro|intro|pre-chorus|hook)\b[^\n]{0,12}$", re.I)


def repetition_share(text: str, n: int = REPEAT_NGRAM) -> float:
    """Share of a text's word n-grams that repeat an earlier one (0 for short texts)."""
    words = text.lower().split()
    if len(words) < REPEAT_MIN_WORDS:
        return 0.0
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return (total - len(grams)) / total


def _prose_lines(text: str) -> list[str]:
    """The lines of `text` that are prose: not code (fenced or not), tables or song labels."""
    text = TABLE_LINE.sub("", FENCED.sub("", text))
    return [line for line in text.splitlines() if ALNUM.search(line) and not CODE_LINE.search(line)
            and not LABEL.match(line)]


def _unit(s: str) -> str:
    """A sentence, line or list item as compared: normalised words, its list marker or number dropped."""
    return " ".join(WORD.findall(normalise(NUMBERED.sub("", LIST_MARK.sub("", s)))))


def _run(units: list[str], length: int) -> str | None:
    """A unit said `length` times in a row."""
    for i in range(len(units) - length + 1):
        if units[i] and len(set(units[i:i + length])) == 1:
            return f"{units[i][:60]!r} {length} times in a row"
    return None


def _recurring(units: list[str]) -> str | None:
    """A unit said three times, or a long one twice, anywhere."""
    for u, k in Counter(units).most_common(3):
        if k >= 3 or (k == 2 and len(u.split()) >= LONG_SENTENCE_WORDS):
            return f"{u[:60]!r} {k} times"
    return None


def _looping_sentences(lines: list[str]) -> str | None:
    """Verse: a line said VERSE_RUN times in a row. Prose: any sentence said SHORT_RUN times in a row, or
    one of SENTENCE_MIN_WORDS twice in a row, three times, or (when long) twice."""
    if _is_verse(lines):
        return _run([_unit(x) for x in lines], VERSE_RUN)
    units = [_unit(s) for s in sentences("\n".join(lines))]
    worded = [u for u in units if len(u.split()) >= SENTENCE_MIN_WORDS]
    return _run(units, SHORT_RUN) or _run(worded, 2) or _recurring(worded)


def _is_verse(lines: list[str]) -> bool:
    short = sum(len(line.split()) <= VERSE_MAX_WORDS for line in lines)
    items = sum(LIST_MARK.match(line) is not None for line in lines)
    return len(lines) >= VERSE_MIN_LINES and short >= 0.75 * len(lines) and items < len(lines) / 2


def _list_items(lines: list[str]) -> list[str]:
    items = []
    for line in lines:
        inline = INLINE_ITEM.split(line)
        if len(inline) > 2:
            items += [_unit(x) for x in inline[1:]]
        elif LIST_MARK.match(line):
            items.append(_unit(line))
    return [x for x in items if x]


def _looping_items(items: list[str]) -> str | None:
    for i in range(len(items) - 1):
        u = items[i]
        if u == items[i + 1] and (len(u.split()) >= SENTENCE_MIN_WORDS or items[i:i + 3] == [u] * 3):
            return f"list item {u[:60]!r} repeated"
    common = Counter(x for x in items if len(x.split()) >= 2).most_common(1)
    return f"list item {common[0][0][:60]!r} {common[0][1]} times" if common and common[0][1] >= 3 else None


def degenerate_repetition(text: str) -> str | None:
    """How `text` loops (a repeated sentence, line or list item, repeating 4-grams), or None."""
    if is_json(text):
        return None
    lines = _prose_lines(text)
    found = _looping_sentences(lines) or _looping_items(_list_items(lines))
    if found:
        return found
    prose, whole = repetition_share("\n".join(lines)), repetition_share(TABLE_LINE.sub("", text))
    if prose > REPEAT_MAX_SHARE or whole > REPEAT_MAX_SHARE_ALL:
        return f"{max(prose, whole):.0%} of its {REPEAT_NGRAM}-grams repeat"
    return None
