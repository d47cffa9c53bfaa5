"""How right the job-wide dedup is, measured against planted ground truth; JSON-ready figures.

near: about 20,000 texts, the corpus's paragraphs and sentences and word-edited variants of its
paragraphs at true Jaccard spread over 0.5-1.0, shuffled. The truth is computed here, exactly, over
every pair: a row should be dropped when some earlier row's word-3-gram set (Python sets of word
tuples of the normalised text's `\\w+` words) has a Jaccard similarity with its own of at least the
threshold (an all-pairs join with prefix filtering, exact). Precision: near drops whose named row
truly reaches the threshold; recall: rows that should be dropped that were (for either reason).
bias: the MinHash estimate the LSH bands are built on, minus the true Jaccard, averaged over the
planted (paragraph, variant) pairs per 0.05 bin of true Jaccard.
short answers: distinct one-word answers, "The answer is N." for N = 1..1000, and "Paris, France"
beside "Paris, Texas"; every drop is false.
exact variants: corpus sentences, then copies with zero-width spaces or soft hyphens inside words,
other format characters, case, spacing and NFKC (full-width, ligature) changes; each copy should be
an exact duplicate of its sentence.
speed: `benchmarks/quality.py`'s dedup pass over 1,000,000 rows (rows/s, peak RSS).
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.accuracy.corpus import paragraphs, sentences, vocabulary  # noqa: E402
from orchestrator.finalize.dedup import Deduper, Duplicate, Signer, normalize, word_hashes  # noqa: E402
from orchestrator.spec.quality import Dedup  # noqa: E402

WORD = re.compile(r"\w+")
NGRAM = 3
THRESHOLD = 0.8
NEAR_TEXTS = 20_000
MIN_VARIANT_WORDS = 16  # paragraphs this long or longer get variants (finer steps of Jaccard)
SHARD_ROWS = 1000
BIN = 0.05
FORMAT_CHARS = ["\u2060", "\ufeff", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202c", "\u2066", "\u2069",
                "\u061c", "\u180e"]
Shingles = frozenset[tuple[str, ...]]


def shingles(text: str, n: int = NGRAM) -> Shingles:
    """The word n-grams of the normalised text; fewer than n words: one shingle of them all."""
    words = WORD.findall(normalize(text))
    if len(words) < n:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(zip(*(words[i:] for i in range(n)), strict=False))


def jaccard(a: Shingles, b: Shingles) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def should_drop(sets: Sequence[Shingles], threshold: float) -> list[bool]:
    """Whether each row has an earlier row at least `threshold` similar: exact, by prefix filtering.

    With shingles ordered rarest first, two sets with J >= t share one of their first
    |x| - ceil(t|x|) + 1 shingles, so only rows sharing a prefix shingle are compared (exactly).
    """
    freq = Counter(s for x in sets for s in x)
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    out = []
    for p, x in enumerate(sets):
        prefix = sorted(x, key=lambda s: (freq[s], s))[: len(x) - math.ceil((threshold - 1e-9) * len(x)) + 1]
        seen: set[int] = set()
        hit = False
        for s in prefix:
            for q in index[s]:
                if q not in seen:
                    seen.add(q)
                    hit = hit or jaccard(x, sets[q]) >= threshold
            index[s].append(p)
        out.append(hit)
    return out


def run(texts: Sequence[str], config: Dedup) -> list[Duplicate | None]:
    """Both passes over the texts in shards, as the finalize pass runs them; row ids are positions."""
    d = Deduper(config)
    shards = [list(range(s, min(s + SHARD_ROWS, len(texts)))) for s in range(0, len(texts), SHARD_ROWS)]
    for shard in shards:
        d.scan([texts[i] for i in shard])
    d.close_scan()
    return [v for shard in shards for v in d.decide([texts[i] for i in shard], [str(i) for i in shard])]


def _edit(words: list[str], rng: random.Random, vocab: Sequence[str]) -> list[str]:
    words, at, op = list(words), rng.randrange(len(words)), rng.random()
    if op < 0.5:
        words[at] = rng.choice(vocab)
    elif op < 0.75 and len(words) > 1:
        del words[at]
    else:
        words.insert(at, rng.choice(vocab))
    return words


def variant(text: str, target: float, rng: random.Random, vocab: Sequence[str]) -> str:
    """Word edits of the text, one at a time; of the texts on the way, the one closest to `target` Jaccard.

    A target of 1.0 gives a copy with different punctuation (a different text, the same shingles).
    """
    if target >= 1.0:
        return re.sub(r"[,.;:]", "", text) + "!"
    base, words, best = shingles(text), text.split(), None
    while True:
        words = _edit(words, rng, vocab)
        j = jaccard(base, shingles(" ".join(words)))
        if best is None or abs(j - target) < abs(best[0] - target):
            best = (j, " ".join(words))
        if j < target - 0.05:
            return best[1]


def planted_near(seed: int = 0, texts: int = NEAR_TEXTS) -> tuple[list[str], list[tuple[int, int]]]:
    """Shuffled texts, and the (paragraph, variant) position pairs planted among them."""
    rng, vocab = random.Random(seed), vocabulary()
    bases = list(dict.fromkeys([*paragraphs(), *sentences()]))
    sources = [b for b in paragraphs() if len(b.split()) >= MIN_VARIANT_WORDS]
    rows, pairs, position = list(bases), [], {b: i for i, b in enumerate(bases)}
    for k in range(max(0, texts - len(bases))):
        base = sources[k % len(sources)]
        target = 1.0 if rng.random() < 0.05 else rng.uniform(0.5, 1.0)
        pairs.append((position[base], len(rows)))
        rows.append(variant(base, target, rng, vocab))
    order = list(range(len(rows)))
    rng.shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    return [rows[i] for i in order], [(where[a], where[b]) for a, b in pairs]


def near_accuracy(texts: Sequence[str], threshold: float = THRESHOLD) -> dict[str, Any]:
    sets = [shingles(t) for t in texts]
    truth = should_drop(sets, threshold)
    verdicts = run(texts, Dedup(near_threshold=threshold, ngram=NGRAM))
    near = [(p, int(v.of)) for p, v in enumerate(verdicts) if v is not None and v.reason == "near_duplicate"]
    right = sum(jaccard(sets[p], sets[q]) >= threshold for p, q in near)
    dropped = sum(t and v is not None for t, v in zip(truth, verdicts, strict=True))
    return {"near_threshold": threshold, "near_texts": len(texts), "near_should_drop": sum(truth),
            "near_dropped": len(near), "exact_dropped": sum(v is not None and v.reason == "exact_duplicate"
                                                            for v in verdicts),
            "near_precision": round(right / len(near), 4) if near else 1.0,
            "near_recall": round(dropped / sum(truth), 4) if any(truth) else 1.0}


def estimate_bias(texts: Sequence[str], pairs: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """Mean MinHash estimate minus true Jaccard of the planted pairs, per bin of true Jaccard from 0.5."""
    config = Dedup()
    signer = Signer(config.num_perm, config.ngram)
    sigs = signer.sign([word_hashes(normalize(t)) for t in texts])
    errors: dict[str, list[float]] = defaultdict(list)
    for a, b in pairs:
        j = jaccard(shingles(texts[a]), shingles(texts[b]))
        if j >= 0.5:
            lo = min(math.floor(j / BIN + 1e-9) * BIN, 1 - BIN)
            errors[f"{lo:.2f}-{lo + BIN:.2f}"].append(float((sigs[a] == sigs[b]).mean()) - j)
    bias = {k: round(sum(v) / len(v), 4) for k, v in sorted(errors.items())}
    return {"bias_by_j": bias, "pairs_by_j": {k: len(v) for k, v in sorted(errors.items())},
            "max_abs_bias": max(abs(b) for b in bias.values())}


def short_answers() -> dict[str, Any]:
    vocab = vocabulary()
    sets = {"one_word": [w.capitalize() for w in vocab[:: len(vocab) // 1000][:1000]],
            "the_answer_is_n": [f"The answer is {n}." for n in range(1, 1001)],
            "paris": ["Paris, France", "Paris, Texas"]}
    drops = {name: sum(v is not None for v in run(texts, Dedup())) for name, texts in sets.items()}
    return {"short_answer_false_drops": sum(drops.values()), "short_answers": sum(map(len, sets.values())),
            "short_answer_drops": drops}


def _inside_words(mark: Callable[[random.Random], str]) -> Callable[[str, random.Random], str]:
    """A change that puts `mark(rng)` inside (or, for one-letter words, after) every word."""
    def change(text: str, rng: random.Random) -> str:
        def put(m: re.Match[str]) -> str:
            w = m.group()
            at = rng.randrange(1, len(w)) if len(w) > 1 else 1
            return w[:at] + mark(rng) + w[at:]
        return re.sub(r"\w+", put, text)
    return change


def _full_width(text: str, rng: random.Random) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" and rng.random() < 0.5 else c for c in text)


EXACT_VARIANTS: dict[str, Callable[[str, random.Random], str]] = {
    "zero_width_space": _inside_words(lambda rng: "\u200b"),
    "soft_hyphen": _inside_words(lambda rng: "\u00ad"),
    "other_format_chars": _inside_words(lambda rng: rng.choice(FORMAT_CHARS)),
    "case": lambda t, rng: rng.choice([t.upper(), t.swapcase(), t.title()]),
    "spacing": lambda t, rng: "  " + re.sub(" ", lambda _: rng.choice(["  ", "\t", "\n", "\u00a0", "\u3000"]), t)
    + " \n",
    "nfkc": lambda t, rng: _full_width(t.replace("fi", "\ufb01").replace("ff", "\ufb00"), rng),
}


def exact_variants(seed: int = 0, bases: int = 2000) -> dict[str, Any]:
    assert all(unicodedata.category(c) == "Cf" for c in [*FORMAT_CHARS, "\u200b", "\u00ad"])
    rng = random.Random(seed)
    originals = list({" ".join(s.casefold().split()): s for s in sentences()}.values())[:bases]
    planted = [(kind, b, change(originals[b], rng)) for kind, change in EXACT_VARIANTS.items()
               for b in range(len(originals))]
    rng.shuffle(planted)
    texts = originals + [t for _, _, t in planted]
    base_of = list(range(len(originals))) + [b for _, b, _ in planted]
    verdicts = run(texts, Dedup(near_threshold=None))
    found: Counter[str] = Counter()
    for (kind, b, _), v in zip(planted, verdicts[len(originals):], strict=True):
        found[kind] += v is not None and v.reason == "exact_duplicate" and base_of[int(v.of)] == b
    return {"exact_variant_recall": round(sum(found.values()) / len(planted), 4),
            "exact_variant_recall_by_kind": {k: round(found[k] / len(originals), 4) for k in EXACT_VARIANTS},
            "exact_variants": len(planted),
            "exact_false_drops": sum(v is not None for v in verdicts[: len(originals)])}


def speed(rows: int) -> dict[str, Any]:
    """`benchmarks/quality.py`'s dedup pass (its own child process, pinned to one core)."""
    from benchmarks.quality import bench_dedup

    result = bench_dedup(rows)
    return {"dedup_rows": rows, "dedup_rows_per_s": result["rows_per_s"], "dedup_peak_mb": result["peak_rss_mb"]}


def measure(rows: int = 1_000_000) -> dict[str, Any]:
    """Every figure of this module; `rows`: the size of the speed run."""
    texts, pairs = planted_near()
    return {**near_accuracy(texts), **estimate_bias(texts, pairs), **short_answers(), **exact_variants(),
            **speed(rows)}


if __name__ == "__main__":
    print(json.dumps(measure()))
