"""Checks on generated text: schema violations go to `errors/`; filtered rows go to `rejected/`.

Refusal, filler and repetition detection match a normalised copy of the text (curly quotes as
ASCII, NFKC, casefolded, markdown emphasis dropped, spacing collapsed), sentence by sentence, with
word boundaries. A refusal is a refusal *statement* ("I'm sorry, but I can't help with that", "As
an AI language model, I ...") in one of the opening sentences, alone or after a short lead ("I
understand your concern, but ..."); apologies for the user's trouble ("I'm sorry to hear that ...")
and "I can't" without a verb of assisting ("I can't stress enough") are not refusals. Text inside
quotes, code and block quotes is not read for refusals, so an answer quoting one passes. Filler is
a pleasantry opening an answer ("Sure!", "Great question!", with its lead-in to a block: "Here's a
haiku:") or closing it ("Let me know if you have any questions!"): whole clauses and sentences,
never inside code or JSON. Degenerate repetition is a sentence said twice in a row or three times,
a long sentence said twice, a list item looping, or text whose 4-grams mostly repeat; code, tables
and JSON are not read for it, and in verse (short lines) a refrain may return and a line may be
doubled, but not tripled.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections import Counter
from typing import Any

import jsonschema

from orchestrator.gates import Filters

# --- normalisation -----------------------------------------------------------------------------

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


# --- refusals ----------------------------------------------------------------------------------

REFUSAL_SENTENCES = 3  # a refusal is stated in the opening sentences, after at most a short preamble
REFUSAL_CHARS = 2000  # ... which are read from the text's first characters only
# Quoted, coded or block-quoted text: an answer that quotes a refusal is not one (double quotes,
# single quotes around a phrase but not apostrophes, inline code, fenced code, "> " lines).
QUOTED = re.compile(r"```.*?(?:```|$)|`[^`\n]*`|\"[^\"\n]{0,400}\""
                    r"|(?<![\w'])'(?=\w)(?:[^'\n]|'(?=\w)){0,400}'(?!\w)|^[ \t]*>.*$", re.DOTALL | re.MULTILINE)
# What may precede a refusal inside its sentence: an apology, a connective, or a clause and comma.
_LEAD = (r"(?:^|[,;:\u2014\u2013]\s|(?:(?:i'm|i am|im) (?:so |very |really |truly |terribly )?sorry|sorry"
         r"|(?:my )?apologies|i (?:sincerely )?apologi[sz]e|i'm afraid|i am afraid|unfortunately|regrettably|sadly"
         r"|but|however|though|still|so|and|that said|that being said|respectfully|honestly|ultimately|even so|no)"
         r"(?:,|\s+but|\s+that|\s*[\u2014\u2013-])?\s)")
_FILL = (r"(?:(?:and will not|and won't|really|actually|currently|directly|personally|simply|in good conscience"
         r"|ethically|legally|responsibly|safely|fully|just|even|possibly|be able to|be),?\s)*")
_VERB = (r"(?:help(?!\s+(?:but|thinking|feeling|wondering|noticing|laughing|smiling|myself|it)\b)\w*|assist\w*"
         r"|provid\w*|compl(?:y|ying)\b|fulfil\w*|creat\w*|writ(?:e|ing)\b|generat\w*|produc\w*|giv(?:e|ing)\b"
         r"|shar(?:e|ing)\b|offer\w*|engag\w*|support\w*|participat\w*|answer(?:ing)?\b(?! for\b)|complet(?:e|ing)\b"
         r"|draft\w*|discuss\w*|continu\w*|condon\w*|encourag\w*|endors\w*|facilitat\w*|promot\w*|suppl(?:y|ying)"
         r"|disclos\w*|reveal\w*|build\w*|develop\w*|teach\w*|guid(?:e|ing)\b|walk you through|explain how"
         r"|diagnos\w*|prescrib\w*|advis(?:e|ing)\b"
         r"|tell you how|role-?play\w*|take part|be (?:a )?part of|be involved|be (?:of )?(?:any )?(?:help|assistance"
         r"|service)|contribut\w*|respond\w*|accommodat\w*|carry out|go along|browse the (?:internet|web)"
         r"|access (?:to )?(?:the internet|the web|real-time|live|current|external|websites?|links?|urls?)"
         r"|do(?:ing)?(?:\s+(?:that|this|so|it|what you(?:'re| are) asking)\b|(?=\s*(?:[.!?,;]|$|for you))))")
# "I can't give you an exact figure without more details" hedges before answering; "I can't
# recommend it enough" praises.
_HEDGE = (r"(?![^.!?]{0,60}\b(?:enough|definitive\w*|definite|exact\w*|precise\w*|for (?:certain|sure)"
          r"|with (?:certainty|confidence)|guarantee\w*|without (?:more|knowing|seeing|additional|further)"
          r"|straight|simple|single|universal|one-size|blanket|exhaustive|comprehensive|more than"
          r"|(?:medical|legal|financial|professional|tax|investment) advice\b[^.!?]*\bbut)\b)")
_ADVERB = r"(?:(?:really|just|simply|honestly|definitely|absolutely|unfortunately|currently|still) )?"
_I_AM = r"(?:i'm|i am|im) " + _ADVERB
_CANNOT = (r"(?:(?:i )?" + _ADVERB + r"(?:can ?not|can't|cant|could not|couldn't|won't|will not)"
           r"|i " + _ADVERB + r"(?:refuse to|would rather not|would prefer not to"
           r"|(?:do not|don't) think i (?:can|should))"
           r"|i'd rather not|i'd prefer not to|i can only|(?:i'm|i am) only able to"
           r"|" + _I_AM + r"(?:unable|not able|not going|not in a position|not allowed|not permitted|not programmed"
           r"|not designed|not willing)(?: to)?)\s")
_DONT = (r"i (?:don't|do not) (?:help|assist|engage|generate|produce|provide|create|write|do)"
         r" (?:with|in|people|anyone|content|that|this|those|such|requests?)\b")
_DECLINE = (r"(?:i|i'll|i'd|i'm|i am)(?: (?:must|have to|will have to|need to|going to(?: have to)?|will|would))?\s"
            r"(?:respectfully |politely )?(?:decline|refuse\b(?!\s+to\b)|pass on|pass(?=\s*(?:[.!,;]|$))|say no"
            r"|turn (?:this |that |it )?down)\b"
            r"|i (?:do not|don't) feel comfortable\b|" + _I_AM + r"not (?:comfortable|ok|okay)\b"
            r"|i (?:can't|cannot|won't)(?=\s*(?:[.!]|$))|no can do\b")
_AI = (r"(?:as|being) an? (?:responsible |helpful |ethical |honest |harmless |text-based |large )?"
       r"(?:ai|artificial intelligence|language model|llm|chatbot|virtual assistant)"
       r"(?: language model| model| assistant| chatbot| system)?"
       r"(?: (?:developed|created|trained|built|made|designed) by [\w.-]+(?: \w+)?)?,?\s(?:i|my|it)\b"
       r"|i(?:'m| am) (?:just |only |merely )?an? (?:ai|artificial intelligence|language model|large language model"
       r"|chatbot|virtual assistant)\b"
       r"|i (?:do not|don't) have (?:the (?:ability|capability|capacity|means) to|access to (?:real-time|the internet"
       r"|current|live|up-to-date|external|browsing)|real-time|browsing|internet access"
       r"|personal (?:opinions|experiences|feelings|beliefs|preferences|views)|opinions|feelings|emotions)\b")
_ABLE = (r"i(?:'m| am)? (?:can|could|will|'ll|feel comfortable|comfortable|able to|willing to|allowed to"
         r"|permitted to|going to)\s" + _FILL + _VERB)
_UNABLE = (r"(?:i (?:can't|cannot|can not|won't|will not)|(?:i'm|i am) (?:unable|not able|not comfortable|not allowed"
           r"|not permitted|not willing|not going)|i (?:must|have to|need to|'ll have to|will have to) (?:decline"
           r"|turn down|pass on|refuse))\b")
_THAT = r"(?:that|this|it)(?: request| question| task| topic)?"
_NOT_SOMETHING = (_THAT + r"(?:'s| is)(?: really| just)? not(?: really)? (?:something|a (?:request|task|topic|thing"
                  r"|subject|question)|anything) (?:that )?" + _ABLE +
                  r"|" + _THAT + r" isn't (?:something|a \w+|anything) (?:that )?" + _ABLE +
                  r"|" + _THAT + r"(?:'s| is) (?:something|a (?:request|task|topic|thing)) (?:that )?" + _UNABLE)
REFUSAL_STATEMENT = re.compile(_LEAD + r"(?:" + _CANNOT + _FILL + _VERB + _HEDGE + r"|" + "|".join(
    (_DONT, _DECLINE, _AI, _NOT_SOMETHING)) + r")")
# Refusals by policy, wherever they sit in an opening sentence.
REFUSAL_POLICY = re.compile(
    r"\b(?:this|that|your|such an?|the) (?:request|task|prompt|query|question|content)s? (?:goes against|violates"
    r"|is against|conflicts with|would violate|would go against|is not (?:allowed|permitted)"
    r"|isn't (?:allowed|permitted))\b"
    r"|\b(?:goes against|violates|is against|conflicts with|against) my (?:\w+ ){0,2}(?:guidelines|policies|policy"
    r"|principles|programming|values|ethics|rules)\b"
    r"|\b(?:outside|beyond) (?:of )?(?:the scope of )?(?:what i(?:'m| am)? (?:can|could|able to|allowed to"
    r"|permitted to) (?:\w+ )?" + _VERB + r"|my (?:scope|capabilities|abilities)\b)"
    r"|\bmy (?:\w+ )?(?:guidelines|policies|programming|principles|rules) (?:\w+ )?(?:prevent|prohibit|forbid"
    r"|don't allow|do not allow|doesn't allow|does not allow|won't allow)\b"
    r"|\bit(?: is(?:n't| not)?| would(?:n't| not)? be|'s(?: not)?|'d(?: not)? be) (?:appropriate|inappropriate"
    r"|ethical|unethical|responsible|irresponsible|right) for me to " + _FILL + _VERB)


def refusal_statement(text: str) -> str | None:
    """The refusal stated in the opening sentences of `text` (normalised), or None."""
    for s in sentences(QUOTED.sub(" ", ascii_quotes(text[:REFUSAL_CHARS])))[:REFUSAL_SENTENCES]:
        m = REFUSAL_STATEMENT.search(s) or REFUSAL_POLICY.search(s)
        if m:
            return s[max(m.start() - 20, 0):m.end() + 20].strip()
    return None


# --- filler ------------------------------------------------------------------------------------

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


# --- repetition --------------------------------------------------------------------------------

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


# --- the filters -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json))


def schema_violation(schema: dict[str, Any], text: str) -> str | None:
    """Why `text` is not JSON valid against `schema`, or None when it is."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return f"completion is not valid JSON: {e}"
    error = jsonschema.exceptions.best_match(
        _validator(json.dumps(schema, sort_keys=True)).iter_errors(value))
    return None if error is None else f"completion violates the schema at {error.json_path}: {error.message}"


@functools.lru_cache(maxsize=256)
def _pattern(p: str) -> re.Pattern[str]:
    return re.compile(p)


def _content_rejection(f: Filters, text: str, all_filler: bool) -> tuple[str, str] | None:
    """Refusal, filler and repetition, on the completion as stored."""
    if f.refusal and (found := refusal_statement(text)):
        return "refusal", f"states a refusal: {found!r}"
    if all_filler:
        return "filler", f"nothing but filler: {text.strip()[:60]!r}"
    if f.filler == "reject" and (found := filler(text)):
        return "filler", found
    if f.repetition and (found := degenerate_repetition(text)):
        return "repetition", found
    return None


def rejection(f: Filters, text: str, completion_tokens: int) -> tuple[str, str] | None:
    """(reason, detail) when a completion fails a filter, in a fixed order; None when it passes.

    The checks read the completion as stored (`stored_text`), so passing it stripped or not gives
    the same answer.
    """
    body = strip_filler(text) if f.filler == "strip" else text
    all_filler = ALNUM.search(body) is None and ALNUM.search(text) is not None
    text = text if all_filler else body  # as stored_text has it
    n = len(text)
    bounds = (("too_short", f.min_chars, n, "chars", lambda v, b: v < b),
              ("too_long", f.max_chars, n, "chars", lambda v, b: v > b),
              ("too_short", f.min_tokens, completion_tokens, "tokens", lambda v, b: v < b),
              ("too_long", f.max_tokens, completion_tokens, "tokens", lambda v, b: v > b))
    for reason, bound, value, unit, fails in bounds:
        if bound is not None and fails(value, bound):
            return reason, f"{value} {unit}, bound {bound}"
    for i, p in enumerate(f.deny):
        if _pattern(p).search(text):
            return "deny_pattern", f"matches filters.deny[{i}]"
    if f.allow and not any(_pattern(p).search(text) for p in f.allow):
        return "allow_pattern", "matches none of filters.allow"
    return _content_rejection(f, text, all_filler)
