"""Filler: pleasantries opening or closing an answer, stripped whole or rejected (`filters.filler`)."""

from __future__ import annotations

import re

from orchestrator.spec.quality import Filters
from workers.filters.text import ALNUM, ascii_quotes, is_json, normalise, sentence_spans

_PLEASANTRY = (r"(?:sure(?: thing)?|of course|certainly|absolutely|definitely|no problem|gladly|with pleasure"
               r"|(?:okay|ok|alright|all right|hi|hello|hey)(?: there)?(?=!)"
               r"|(?:thanks|thank you) for (?:reaching out|asking|your question|the question|your message)(?=[!.])"
               r"|(?:great|good|excellent|fantastic|wonderful) question"
               r"|(?:what|that's|that is|this is) (?:a |an )?(?:really )?(?:great|good|excellent|fantastic|wonderful"
               r"|interesting|fascinating|thoughtful) question"
               r"|(?:i'd|i would|i'll|i will)(?: be)? (?:(?:more than )?happy|glad|delighted) to help(?: you)?"
               r"(?: with (?:that|this|your \w+))?|(?:happy|glad) to help|i can (?:certainly |definitely )?help"
               r"(?: you)? with (?:that|this))")
# One or more pleasantries, each closed by punctuation, then optionally a lead-in to a block
# ("here's a poem:" and a new line) or a sentence of its own ("Here you go!"); a lead-in followed on
# its line by the answer ("here's the sentence: ...") is part of the answer.
FILLER_OPENER = re.compile(
    r"^[\s*_#>]*(?:" + _PLEASANTRY + r"(?!\s*not\b)[*_]*\s*(?:[!.,:;\u2014\u2013-]+|$)[\s*_]*)+"
    r"(?:(?:here(?:'s| is| are| you go| goes)|below (?:is|are))\b[^\n.!?:]{0,120}(?::[*_ \t]*\n|[.!](?=\s))[\s*_]*)?",
    re.IGNORECASE)
FILLER_CLOSER = re.compile(
    r"(?:i |we )?hope (?:this|that|it|these|the above|my|you)\b.*"
    r"|(?:please )?(?:let me know|feel free|don't hesitate|do not hesitate|reach out)\b.*|just (?:let me know|ask)\b.*"
    r"|if you .*?,? (?:please )?(?:let me know|feel free|don't hesitate|do not hesitate|just (?:ask|let me know)"
    r"|ask away|i'm here|i am here|i'm (?:happy|glad)|i'd be (?:happy|glad)|i would be (?:happy|glad)"
    r"|happy to help|reach out(?! to (?:a|an|your|the)\b)|i can help)\b.*"
    r"|is there anything else\b.*|(?:would|do) you (?:like|want) me to\b[^?]*\?|shall i\b[^?]*\?|want me to\b[^?]*\?"
    r"|(?:i'm |i am |i'd be |i would be |always |i'm always |more than )?(?:happy|glad) to help\b.*"
    r"|glad i could help\b.*|i'm here (?:to help|if you need)\b.*|(?:good|best of) luck\b.*"
    r"|happy (?:coding|cooking|baking|writing|learning|hacking|gardening|reading|travels|traveling|travelling"
    r"|studying|building|exploring|brewing|painting|hiking)\b.*"
    r"|enjoy(?: (?:your|the|it|them|yourself|\w+ing)(?: \w+){0,2})?|have (?:a|an) (?:great|nice|good|wonderful"
    r"|lovely|fantastic|productive) \w+(?: \w+){0,3}|cheers|thanks for (?:asking|reading|the question)\b.*"
    r"|you're welcome\b.*")
CLOSER_MAX_WORDS = 30  # a longer final sentence is never filler
CLOSER_TAIL_CHARS = 1000  # closers are looked for in the text's last characters only
TRAIL = re.compile(r"[^\w?]+$")


def _filler_sentence(s: str) -> bool:
    s = TRAIL.sub("", s)
    return len(s.split()) <= CLOSER_MAX_WORDS and FILLER_CLOSER.fullmatch(s) is not None


def opener_end(text: str) -> int:
    """Where the text's filler opener ("Sure! Here's a haiku:") ends; 0 when it has none."""
    m = FILLER_OPENER.match(ascii_quotes(text))
    return m.end() if m else 0


def closer_start(text: str) -> int:
    """Where the text's filler closing sentences start; len(text) when it has none.

    A closer repeated back to back is left in place: that is a loop, for the repetition check.
    """
    cut, last, tail = len(text), None, max(len(text) - CLOSER_TAIL_CHARS, 0)
    spans = sentence_spans(text[tail:])[1 if tail else 0:]  # the tail's first sentence may be cut
    for a, b in reversed([(a + tail, b + tail) for a, b in spans]):
        s = normalise(text[a:b])
        if s == last or text.count("```", 0, a) % 2 or not _filler_sentence(s):  # never inside code
            break
        cut, last = a, s
    return cut


def strip_filler(text: str) -> str:
    """`text` without its filler opener and closer (the body is capitalised where a clause was cut)."""
    if is_json(text):
        return text
    start = opener_end(text)
    end = max(closer_start(text), start)
    body = text[start:end].strip()
    if start and text[:start].rstrip()[-1:] in (",", "\u2014", "\u2013", "-") and re.match(r"[a-z]+\b", body):
        body = body[0].upper() + body[1:]
    return body


def filler(text: str) -> str | None:
    """The filler opener or closer of `text`, or None."""
    if is_json(text):
        return None
    start, end = opener_end(text), closer_start(text)
    if start:
        return f"opener {text[:start].strip()[:60]!r}"
    return f"closer {text[end:].strip()[:60]!r}" if end < len(text.rstrip()) else None


def stored_text(f: Filters, text: str) -> str:
    """The completion as stored and judged: with `filler: strip`, its filler opener and closer removed.
    One that is nothing but filler is stored as written (and rejected: `filler`)."""
    if f.filler != "strip":
        return text
    body = strip_filler(text)
    return body if ALNUM.search(body) else text
