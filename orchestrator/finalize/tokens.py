"""Word tokens as the finalize measures read them: runs of word characters (`\\w+`).

Dedup shingles and the diversity measures count the same words; each normalises the text its own
way first (dedup folds format characters and case, diversity applies NFKC and lower case).
"""

from __future__ import annotations

import re

WORD = re.compile(r"\w+")


def word_tokens(text: str) -> list[str]:
    """The word tokens of `text`, as it is (normalise it first)."""
    return WORD.findall(text)
