"""Job-wide dedup in two streaming passes over the committed rows, memory bounded by candidates.

Exact duplicates share a hash of their normalised text: Unicode compatibility forms (NFKC), case,
spacing and invisible format characters (category Cf: zero-width spaces and joiners, soft hyphens,
byte-order marks, bidi marks) folded.

Near duplicates are rows whose sets of word n-gram shingles (`\\w+` words of the normalised text)
have a Jaccard similarity to an earlier row's of at least `near_threshold`. A row with fewer words
than `ngram` is one shingle of all its words (so two different one-word answers share nothing); a
row without words has no shingles and is never a near duplicate. Each shingle is a 64-bit hash:
every word is hashed with blake2b, and the words are chained through splitmix64's mixer, so every
word reaches every bit. MinHash LSH only proposes candidates: datasketch's MinHash (affine32 scheme)
over the shingle hashes, a whole batch at once with numpy, banded so that a pair at the threshold
is a candidate with probability >= `defaults.LSH_CANDIDATE_PROBABILITY` (`lsh_bands`). Each
candidate is then checked on the Jaccard similarity of the two shingle sets themselves, so LSH's
false candidates cost time only. The buckets are not datasketch's in-memory index (a Python set per
bucket): each band is one uint64 column grouped with numpy, about 150 bytes per row at a million.

Pass 1 (`scan`) signs every row. `close_scan` finds each row's candidates: per band, the first row
of its bucket and the `LSH_MATES_PER_BAND - 1` rows just before it (a text's exact repeats take no
part: they share its buckets). Pass 2 (`decide`), over the same rows in the same order, keeps the
first of each group: a row is an exact duplicate of the first equal text, or a near duplicate of
its earliest candidate whose similarity reaches the threshold. Only rows that are some later row's
candidate have their shingle set held, each until its last such row has been decided, and at most
`defaults.NEAR_DUP_HELD_SHINGLES` of it: the smallest hashes, a bottom-k sample. Against a held
set that is whole the similarity is exact; against a sample it is the bottom-k estimate (unbiased,
standard error sqrt(J(1-J)/k)).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import re
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash
from datasketch.minhash import _fmix

from orchestrator import defaults
from orchestrator.finalize.tokens import word_tokens
from orchestrator.spec.quality import Dedup

SEED = 1
WORD_HASH_CACHE = 1 << 17  # words whose hashes are kept (about 120 bytes each): a hit costs half a hash
_SHINGLE_START = np.uint64(0x243F6A8885A308D3)  # the chain's state before a shingle's first word
_BAND_MIX = np.random.RandomState(SEED).randint(1, 2**62, size=1024, dtype=np.uint64) | np.uint64(1)


@functools.cache
def _format_chars() -> re.Pattern[str]:
    """Every Unicode format character (category Cf) of this Python's Unicode version."""
    chars = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if unicodedata.category(c) == "Cf")
    return re.compile(f"[{re.escape(chars)}]+")


def normalize(text: str) -> str:
    """The text with Unicode compatibility forms, case, spacing and format characters folded."""
    if text.isascii():  # no format characters, and NFKC leaves it as it is
        return " ".join(text.lower().split())
    text = _format_chars().sub("", unicodedata.normalize("NFKC", text))
    return " ".join(unicodedata.normalize("NFKC", text.casefold()).split())


def text_hash(normalized: str) -> int:
    """64-bit hash of a normalised text: equal for exact duplicates."""
    return int.from_bytes(hashlib.blake2b(normalized.encode(), digest_size=8).digest(), "little")


def word_hash(word: str) -> int:
    """64-bit blake2b hash of one word."""
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def word_hashes(normalized: str) -> list[int]:
    """The 64-bit hash of each `\\w+` word of a normalised text, in order."""
    return [word_hash(w) for w in word_tokens(normalized)]


class WordHasher:
    """`word_hashes` of many texts at once, the hashes of recent words cached (emptied past `cache_words`)."""

    def __init__(self, cache_words: int = WORD_HASH_CACHE):
        self.cache_words = cache_words
        self._cache: dict[str, int] = {}

    def __call__(self, normalized: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The hashes of every text's words (uint64, text after text), and how many words each has."""
        rows = [word_tokens(t) for t in normalized]
        words = list(itertools.chain.from_iterable(rows))
        try:
            hashes = list(map(self._cache.__getitem__, words))
        except KeyError:
            new = [w for w in dict.fromkeys(words) if w not in self._cache]
            if len(self._cache) + len(new) > self.cache_words:
                self._cache.clear()
                new = list(dict.fromkeys(words))
            self._cache.update(zip(new, map(word_hash, new), strict=True))
            hashes = list(map(self._cache.__getitem__, words))
        return np.fromiter(hashes, dtype=np.uint64, count=len(words)), np.array(list(map(len, rows)), dtype=np.int64)


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 in which every input bit reaches every output bit."""
    z = z ^ (z >> np.uint64(30))
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def shingle_hashes(rows_words: Sequence[Sequence[int]], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """`row_shingles` of rows given as lists of word hashes."""
    lens = np.array([len(w) for w in rows_words], dtype=np.int64)
    words = np.fromiter(itertools.chain.from_iterable(rows_words), dtype=np.uint64, count=int(lens.sum()))
    return row_shingles(words, lens, ngram)


def row_shingles(words: np.ndarray, lens: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every row's word n-grams (uint64, row after row), and how many each row has;
    `words`: every row's word hashes, row after row, `lens`: each row's word count.

    A shingle's hash chains its words: h = mix64(h ^ word), from a fixed start. A row shorter than
    `ngram` words is one shingle of all its words; a row without words has none.
    """
    k = np.minimum(lens, ngram)
    counts = np.where(lens > 0, lens - k + 1, 0)
    row = np.repeat(np.arange(len(lens)), counts)
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = (np.concatenate([[0], np.cumsum(lens)[:-1]]) - firsts)[row] + np.arange(len(row))
    h = np.full(len(row), _SHINGLE_START, dtype=np.uint64)
    short = k[row]
    for j in range(ngram):
        step = mix64(h ^ words[np.minimum(pos + j, max(len(words) - 1, 0))])
        h = step if j < short.min(initial=ngram) else np.where(j < short, step, h)
    return h, counts


def shingle_sets(words: np.ndarray, lens: np.ndarray, ngram: int) -> list[np.ndarray]:
    """Each row's distinct shingle hashes, sorted (views into one array: copy one to keep it alone)."""
    hv, counts = row_shingles(words, lens, ngram)
    row = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((hv, row))
    hv, row = hv[order], row[order]
    new = np.ones(len(hv), dtype=bool)
    new[1:] = (hv[1:] != hv[:-1]) | (row[1:] != row[:-1])
    hv, row = hv[new], row[new]
    bounds = np.searchsorted(row, np.arange(len(counts) + 1)).tolist()
    return [hv[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def similarity(mine: np.ndarray, held: np.ndarray, sampled: bool) -> float:
    """Jaccard similarity of two sorted shingle sets; `sampled`: `held` is only its set's smallest hashes.

    Whole sets: exact. A sample of k: the share of the k smallest hashes of the union that both sets
    have (the bottom-k estimate, unbiased because the hashes are uniform).
    """
    if sampled:
        mine, k = mine[: len(held)], len(held)
        cut = np.union1d(mine, held)[k - 1]
        return _overlap(mine[mine <= cut], held) / k
    overlap = _overlap(mine, held)
    union = len(mine) + len(held) - overlap
    return overlap / union if union else 0.0


def _overlap(a: np.ndarray, b: np.ndarray) -> int:
    """How many values two sorted arrays of distinct values share."""
    if not len(a) or not len(b):
        return 0
    at = np.searchsorted(b, a).clip(max=len(b) - 1)
    return int(np.count_nonzero(b[at] == a))


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """The chance that a pair of this similarity shares a bucket in at least one of `bands` bands."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band): the most rows (fewest dissimilar candidates) that make a pair at the
    threshold a candidate with probability >= LSH_CANDIDATE_PROBABILITY; one row per band if none does."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= defaults.LSH_CANDIDATE_PROBABILITY:
            return bands, rows
    return num_perm, 1


def _bucket_mates(keys: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Pairs (row, earlier row) as row * n + earlier among `rows` (ascending) with these band keys: for
    each, the first row of its bucket and the `LSH_MATES_PER_BAND - 1` rows just before it."""
    order = np.argsort(keys, kind="stable")  # a bucket's rows, in row order
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
    group_start = np.repeat(starts, np.diff(np.append(starts, len(keys))))
    rank = np.arange(len(keys)) - group_start
    pairs = []
    for back in range(defaults.LSH_MATES_PER_BAND):
        at = np.flatnonzero(rank > back)
        mate = order[group_start[at]] if back == 0 else order[at - back]
        pairs.append(rows[order[at]] * n + rows[mate])
    return np.concatenate(pairs)


class Signer:
    """MinHash signatures of many rows at once, equal to datasketch's `MinHash.update_batch` of the
    shingle hashes' top 32 bits (affine32 takes 32-bit values)."""

    def __init__(self, num_perm: int, ngram: int):
        self.ngram = ngram
        a, b = MinHash(num_perm=num_perm, seed=SEED, scheme="affine32").permutations
        self.a, self.b = a.astype(np.uint32), b.astype(np.uint32)
        self.empty = np.full(num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)

    def sign(self, rows_words: Sequence[Sequence[int]]) -> np.ndarray:
        """(rows, num_perm) uint32; a row without words gets the empty signature."""
        return self.sign_shingles(*shingle_hashes(rows_words, self.ngram))

    def sign_shingles(self, hv: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Signatures from `shingle_hashes`' output."""
        out = np.tile(self.empty, (len(counts), 1))
        nonempty = np.flatnonzero(counts)
        if len(nonempty):
            top = _fmix((hv >> np.uint64(32)).astype(np.uint32), 32)
            phv = self.a[:, None] * top[None, :] + self.b[:, None]  # (num_perm, shingles)
            starts = np.concatenate([[0], np.cumsum(counts[nonempty])[:-1]])
            out[nonempty] = np.minimum.reduceat(phv, starts, axis=1).T
        return out


@dataclass(frozen=True)
class Duplicate:
    reason: str  # exact_duplicate | near_duplicate
    of: str  # id of the earlier row it repeats


class Deduper:
    """Two passes over the same rows in the same order: `scan` all, `close_scan`, `decide` all."""

    def __init__(self, config: Dedup):
        self.config = config
        self.near = config.near_threshold is not None
        if self.near:
            assert config.near_threshold is not None
            self.threshold = config.near_threshold
            self.bands, self.band_rows = lsh_bands(self.threshold, config.num_perm)
            self.signer = Signer(config.num_perm, config.ngram)
        self._word_hashes = WordHasher()
        self._exact: list[np.ndarray] = []
        self._band_keys: list[np.ndarray] = []
        self._has_words: list[np.ndarray] = []
        self.first: np.ndarray = np.zeros(0, dtype=np.int64)  # position of the first equal text
        self._cand_start: np.ndarray = np.zeros(1, dtype=np.int64)  # row p's candidates: _cands[start[p]:start[p+1]]
        self._cands: np.ndarray = np.zeros(0, dtype=np.int64)  # earlier rows, ascending within a row
        self._needed: np.ndarray = np.zeros(0, dtype=bool)  # rows that are some later row's candidate
        self._last_use: np.ndarray = np.zeros(0, dtype=np.int64)  # the last row a needed row is a candidate of
        self._held: dict[int, tuple[np.ndarray, bool]] = {}  # needed rows' shingle sets (or samples: True)
        self._expiry: list[tuple[int, int]] = []  # heap of (last use, row) of the held sets
        self._referenced: np.ndarray = np.zeros(0, dtype=bool)  # rows some later row may duplicate
        self._names: dict[int, str] = {}
        self._pos = 0

    def _band_keys_of(self, sigs: np.ndarray) -> np.ndarray:
        """(bands, rows) uint64: one key per band of each signature."""
        r = self.band_rows
        banded = sigs[:, : self.bands * r].reshape(len(sigs), self.bands, r).astype(np.uint64)
        return np.ascontiguousarray((banded * _BAND_MIX[:r]).sum(axis=2, dtype=np.uint64).T)

    def scan(self, texts: Sequence[str]) -> None:
        normalized = [normalize(t) for t in texts]
        self._exact.append(np.fromiter((text_hash(t) for t in normalized), dtype=np.uint64, count=len(texts)))
        if self.near:
            hv, counts = row_shingles(*self._word_hashes(normalized), self.config.ngram)
            self._band_keys.append(self._band_keys_of(self.signer.sign_shingles(hv, counts)))
            self._has_words.append(counts > 0)

    def close_scan(self) -> None:
        hashes = np.concatenate(self._exact) if self._exact else np.zeros(0, dtype=np.uint64)
        self._exact = []
        positions = np.arange(len(hashes))
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        self.first = first[inverse] if self.config.exact else positions
        self._referenced = np.zeros(len(hashes), dtype=bool)
        self._referenced[self.first[self.first != positions]] = True
        if self.near:
            self._find_candidates(len(hashes))
            self._referenced |= self._needed

    def _find_candidates(self, n: int) -> None:
        """Each row's candidates: per band, the first row of its bucket and the rows just before it.

        Only rows with words take part, and not a text's exact repeats: they share all its buckets.
        """
        batches, self._band_keys = self._band_keys, []
        has_words = np.concatenate(self._has_words) if self._has_words else np.zeros(0, dtype=bool)
        self._has_words = []
        rows = np.flatnonzero(has_words & (self.first == np.arange(n)))
        pair = np.zeros(0, dtype=np.int64)
        for j in range(self.bands if batches else 0):
            keys = np.concatenate([b[j] for b in batches])
            pair = np.union1d(pair, _bucket_mates(keys[rows], rows, n))
        del batches
        later, self._cands = pair // max(n, 1), pair % max(n, 1)
        self._cand_start = np.searchsorted(later, np.arange(n + 1))
        self._needed = np.zeros(n, dtype=bool)
        self._needed[self._cands] = True
        self._last_use = np.full(n, -1, dtype=np.int64)
        np.maximum.at(self._last_use, self._cands, later)

    def decide(self, texts: Sequence[str], ids: Sequence[str]) -> list[Duplicate | None]:
        """For each row (continuing the scan order): None to keep it, or what it duplicates."""
        start, self._pos = self._pos, self._pos + len(texts)
        out: list[Duplicate | None] = [None] * len(texts)
        for i in range(len(texts)):
            p = start + i
            if self._referenced[p]:
                self._names[p] = ids[i]
            if self.first[p] != p:
                out[i] = Duplicate("exact_duplicate", self._names[int(self.first[p])])
        if self.near:
            self._decide_near(texts, start, out)
        return out

    def _decide_near(self, texts: Sequence[str], start: int, out: list[Duplicate | None]) -> None:
        end = start + len(texts)
        has_cands = np.diff(self._cand_start[start:end + 1]) > 0
        check = has_cands & (self.first[start:end] == np.arange(start, end))
        todo = np.flatnonzero(check | self._needed[start:end]).tolist()
        sets = shingle_sets(*self._word_hashes([normalize(texts[i]) for i in todo]), self.config.ngram)
        for i, mine in zip(todo, sets, strict=True):
            if check[i]:
                out[i] = self._verify(start + i, mine)
            if self._needed[start + i]:
                self._hold(start + i, mine)
        while self._expiry and self._expiry[0][0] < end:
            del self._held[heapq.heappop(self._expiry)[1]]

    def _verify(self, p: int, mine: np.ndarray) -> Duplicate | None:
        """The first candidate whose shingle set is at least `near_threshold` similar to this row's."""
        for m in self._cands[self._cand_start[p]:self._cand_start[p + 1]].tolist():
            held, sampled = self._held[m]
            if similarity(mine, held, sampled) >= self.threshold:
                return Duplicate("near_duplicate", self._names[m])
        return None

    def _hold(self, p: int, mine: np.ndarray) -> None:
        k = defaults.NEAR_DUP_HELD_SHINGLES
        self._held[p] = (mine[:k].copy(), len(mine) > k)
        heapq.heappush(self._expiry, (int(self._last_use[p]), p))
