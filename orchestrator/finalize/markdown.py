"""Markdown that user text cannot break: inline text escaped, tables built from escaped cells, fenced blocks.

A seed value, template or pattern may hold `|`, backticks, newlines or HTML; written through these
helpers it stays one table cell, one line, or the inside of one code block, and renders as its text.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_CELL_CHARS = 80
_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")  # line breaks and other control characters
_MARKUP = re.compile(r"([\\`*_\[\]<>|#~&$])")  # what could start markup inline or end a table cell
_IDENTIFIER = re.compile(r"[\w.:/@+-]+")
_TICKS = re.compile(r"`+")


def label(value: Any) -> str:
    """How a value reads: strings as they are, anything else as JSON (true, 3, null, [1, 2])."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def text(value: Any, limit: int | None = MAX_CELL_CHARS) -> str:
    """`value` as inline Markdown: one line, cut to `limit` characters, every markup character escaped."""
    flat = _BREAKS.sub(" ", label(value)).strip()
    if limit is not None and len(flat) > limit:
        flat = flat[:limit - 1] + "…"
    return _MARKUP.sub(r"\\\1", flat)


def code(value: str) -> str:
    """A code span for a name made of safe characters (ids, keys, file names); other text escaped."""
    return f"`{value}`" if _IDENTIFIER.fullmatch(value) else text(value)


def fenced(body: str, lang: str = "text", limit: int = 2000) -> str:
    """`body` as a fenced code block whose fence is longer than any backtick run inside it."""
    if len(body) > limit:
        body = body[:limit - 1] + "…"
    fence = "`" * max(3, 1 + max((len(m) for m in _TICKS.findall(body)), default=0))
    return f"{fence}{lang}\n{body}\n{fence}"


def table(head: list[str], rows: list[list[str]]) -> str:
    """A pipe table of cells already made safe (`text`, `code`, numbers)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def bullets(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def num(x: float | None, digits: int = 3) -> str:
    """A count with thousands separators; a measure to `digits` significant digits, never in exponent form
    when it is large (12,346 s, not 1.23e+04 s)."""
    if x is None:
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.0f}" if abs(x) >= 10 ** digits else f"{x:.{digits}g}"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"
