"""Job-wide dedup in two streaming passes over the committed rows, memory bounded by signatures.

Exact duplicates share a hash of their normalised text (case, Unicode form and spacing folded).
Near duplicates are found with MinHash LSH: datasketch's MinHash (affine32 scheme) over word
n-gram shingles, applied to a whole batch of rows at once with numpy, and datasketch's choice of
bands and rows for the threshold. The LSH buckets are not datasketch's in-memory index, which keeps
a Python set per bucket (kilobytes per row): here each band is one uint64 column, grouped with
numpy, so a million rows need about 100 bytes each.

Pass 1 (`scan`) hashes every row. `close_scan` finds, for each row, the first earlier row sharing
a bucket in some band (its candidates). Pass 2 (`decide`), over the same rows in the same order,
keeps the first of each group: a row is an exact duplicate of an earlier equal text, or a near
duplicate when its signature agrees with a candidate's on at least `threshold` of the permutations
(the MinHash estimate of their Jaccard similarity). Only candidates' signatures are held.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH
from datasketch.minhash import _fmix

from orchestrator.gates import Dedup

SEED = 1
WORD = re.compile(r"\w+")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # combines a shingle's word hashes (wrapping arithmetic)
_BAND_MIX = np.random.RandomState(SEED).randint(1, 2**62, size=1024, dtype=np.uint64) | np.uint64(1)


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def text_hash(normalized: str) -> int:
    """64-bit hash of a normalised text: equal for exact duplicates."""
    return int.from_bytes(hashlib.blake2b(normalized.encode(), digest_size=8).digest(), "little")


def word_hashes(normalized: str) -> list[int]:
    return [zlib.crc32(w.encode()) for w in WORD.findall(normalized)]


def shingle_hashes(rows_words: Sequence[Sequence[int]], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every row's word n-grams, and how many each row has.

    A row shorter than `ngram` words is one shingle of all its words; a row without words has none.
    """
    lens = np.array([len(w) for w in rows_words], dtype=np.int64)
    words = np.fromiter((h for w in rows_words for h in w), dtype=np.uint64, count=int(lens.sum()))
    k = np.minimum(lens, ngram)
    counts = np.where(lens > 0, lens - k + 1, 0)
    row = np.repeat(np.arange(len(lens)), counts)
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = (np.concatenate([[0], np.cumsum(lens)[:-1]]) - firsts)[row] + np.arange(len(row))
    h = np.zeros(len(row), dtype=np.uint64)
    for j in range(ngram):
        valid = j < k[row]
        h = np.where(valid, h * _MIX + words[np.minimum(pos + j, max(len(words) - 1, 0))], h)
    return (h >> np.uint64(32)).astype(np.uint32), counts


class Signer:
    """MinHash signatures of many rows at once, equal to datasketch's `MinHash.update_batch`."""

    def __init__(self, num_perm: int, ngram: int):
        self.ngram = ngram
        a, b = MinHash(num_perm=num_perm, seed=SEED, scheme="affine32").permutations
        self.a, self.b = a.astype(np.uint32), b.astype(np.uint32)
        self.empty = np.full(num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)

    def sign(self, rows_words: Sequence[Sequence[int]]) -> np.ndarray:
        """(rows, num_perm) uint32; a row without words gets the empty signature."""
        out = np.tile(self.empty, (len(rows_words), 1))
        hv, counts = shingle_hashes(rows_words, self.ngram)
        nonempty = np.flatnonzero(counts)
        if len(nonempty):
            phv = self.a[:, None] * _fmix(hv, 32)[None, :] + self.b[:, None]  # (num_perm, shingles)
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
            lsh = MinHashLSH(threshold=config.near_threshold, num_perm=config.num_perm)
            self.bands, self.band_rows = lsh.b, lsh.r
            self.signer = Signer(config.num_perm, config.ngram)
        self._exact: list[np.ndarray] = []
        self._band_keys: list[np.ndarray] = []
        self.first: np.ndarray = np.zeros(0, dtype=np.int64)  # position of the first equal text
        self.mates: np.ndarray = np.zeros((0, 0), dtype=np.int64)  # first bucket-mate per band, or -1
        self._held: dict[int, np.ndarray] = {}  # signatures of rows that are some row's candidate
        self._needed: np.ndarray = np.zeros(0, dtype=bool)
        self._referenced: np.ndarray = np.zeros(0, dtype=bool)  # rows some later row may duplicate
        self._names: dict[int, str] = {}
        self._pos = 0

    def _band_key(self, sigs: np.ndarray) -> np.ndarray:
        r = self.band_rows
        banded = sigs[:, : self.bands * r].reshape(len(sigs), self.bands, r).astype(np.uint64)
        return (banded * _BAND_MIX[:r]).sum(axis=2, dtype=np.uint64)

    def scan(self, texts: Sequence[str]) -> None:
        normalized = [normalize(t) for t in texts]
        self._exact.append(np.fromiter((text_hash(t) for t in normalized), dtype=np.uint64, count=len(texts)))
        if self.near:
            self._band_keys.append(self._band_key(self.signer.sign([word_hashes(t) for t in normalized])))

    def close_scan(self) -> None:
        hashes = np.concatenate(self._exact) if self._exact else np.zeros(0, dtype=np.uint64)
        self._exact = []
        positions = np.arange(len(hashes))
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        self.first = first[inverse] if self.config.exact else positions
        self._referenced = np.zeros(len(hashes), dtype=bool)
        self._referenced[self.first[self.first != positions]] = True
        if not self.near:
            return
        keys = np.concatenate(self._band_keys) if self._band_keys else np.zeros((0, self.bands), np.uint64)
        self._band_keys = []
        self.mates = np.full(keys.shape, -1, dtype=np.int64)
        for j in range(self.bands):
            _, band_first, band_inverse = np.unique(keys[:, j], return_index=True, return_inverse=True)
            f = band_first[band_inverse]
            self.mates[:, j] = np.where(f != positions, f, -1)
        del keys
        self._needed = np.zeros(len(hashes), dtype=bool)
        self._needed[self.mates[self.mates >= 0]] = True
        self._referenced |= self._needed

    def decide(self, texts: Sequence[str], ids: Sequence[str]) -> list[Duplicate | None]:
        """For each row (continuing the scan order): None to keep it, or what it duplicates."""
        start, self._pos = self._pos, self._pos + len(texts)
        out: list[Duplicate | None] = [None] * len(texts)
        pending = []
        for i in range(len(texts)):
            p = start + i
            if self._referenced[p]:
                self._names[p] = ids[i]
            if self.first[p] != p:
                out[i] = Duplicate("exact_duplicate", self._names[int(self.first[p])])
            elif self.near and (self._needed[p] or (self.mates[p] >= 0).any()):
                pending.append(i)
        if pending:
            sigs = self.signer.sign([word_hashes(normalize(texts[i])) for i in pending])
            for i, sig in zip(pending, sigs, strict=True):
                out[i] = self._near(start + i, sig)
        return out

    def _near(self, p: int, sig: np.ndarray) -> Duplicate | None:
        threshold = self.config.near_threshold
        found = None
        for m in sorted({int(m) for m in self.mates[p] if m >= 0}):
            held = self._held.get(m)
            if held is not None and np.mean(held == sig) >= threshold:
                found = Duplicate("near_duplicate", self._names[m])
                break
        if self._needed[p]:
            self._held[p] = sig
        return found
