"""Job-wide dedup, checked against truth computed here with Python sets: shingle hashes that keep
distinct shingles apart, an unbiased MinHash estimate, decisions on the exact Jaccard similarity,
format characters folded for exact dedup, bounded memory."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from datasketch import MinHash

from orchestrator import defaults
from orchestrator.finalize.dedup import (
    Deduper,
    Duplicate,
    Signer,
    candidate_probability,
    lsh_bands,
    normalize,
    shingle_hashes,
    similarity,
    text_hash,
    word_hashes,
)
from orchestrator.spec.quality import Dedup

VOCAB = [f"w{i}" for i in range(3000)]


def true_shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """Word n-grams of an ASCII text, independently of the code under test."""
    words = re.findall(r"\w+", text.lower())
    return set(zip(*(words[i:] for i in range(n)), strict=False)) if len(words) >= n else {tuple(words)}


def true_jaccard(a: str, b: str, n: int = 3) -> float:
    x, y = true_shingles(a, n), true_shingles(b, n)
    return len(x & y) / len(x | y)


def hashes(texts: list[str], ngram: int) -> np.ndarray:
    return shingle_hashes([word_hashes(normalize(t)) for t in texts], ngram)[0]


def run(texts: list[str], config: Dedup, shard_rows: int = 97) -> list[Duplicate | None]:
    d = Deduper(config)
    shards = [texts[i:i + shard_rows] for i in range(0, len(texts), shard_rows)]
    for shard in shards:
        d.scan(shard)
    d.close_scan()
    out = []
    for s, shard in enumerate(shards):
        out += d.decide(shard, [f"{s}-{i}" for i in range(len(shard))])
    return out


def test_shingles_that_differ_only_in_their_last_word_hash_apart() -> None:
    assert len(set(hashes(["the cat sat", "the cat ran"], 3).tolist())) == 2
    rng = random.Random(0)
    small = VOCAB[:40]  # few words: many 3-grams share their first two words
    texts = [" ".join(rng.choices(small, k=50)) for _ in range(400)]
    distinct = set().union(*(true_shingles(t) for t in texts))
    assert len(set(hashes(texts, 3).tolist())) == len(distinct) > 15_000


def test_one_word_shingles_of_distinct_words_are_distinct_and_not_zero() -> None:
    h = hashes([" ".join(VOCAB + [f"v{i}" for i in range(2000)])], 1)
    assert len(h) == 5000 and len(set(h.tolist())) == 5000 and not (h == 0).any()


def test_short_rows_are_one_shingle_and_empty_rows_none() -> None:
    hv, counts = shingle_hashes([[1, 2, 3, 4], [5, 6], []], 3)
    assert counts.tolist() == [2, 1, 0] and len(hv) == 3


@pytest.mark.parametrize("answers", [
    [w.capitalize() for w in VOCAB[:1000]],
    [f"The answer is {n}." for n in range(1, 1001)],
    ["Paris, France", "Paris, Texas"],
], ids=["one_word", "the_answer_is_n", "paris"])
def test_distinct_short_answers_are_kept(answers: list[str]) -> None:
    assert run(answers, Dedup()) == [None] * len(answers)


def test_rows_without_words_are_never_near_duplicates() -> None:
    assert run(["!!!", "???", "...", "-- --"], Dedup(), shard_rows=2) == [None] * 4


@pytest.mark.parametrize("variant", [
    "Co\u200boperation is the key",  # zero-width space inside a word
    "Co\u00adoper\u00adation is the key",  # soft hyphens
    "Cooper\u2060ation is the key",  # word joiner
    "\ufeffCooperation is the\ufeff key",  # byte-order marks
    "Coop\u200d\u200eeration is the key",  # joiner and a bidi mark
    "COOPERATION  is\tthe\u00a0key ",  # case and spacing
    "Ｃｏｏｐｅｒａｔｉｏｎ is the key",  # full-width forms (NFKC)
])
def test_format_characters_case_spacing_and_compatibility_forms_fold_to_the_same_text(variant: str) -> None:
    assert text_hash(normalize(variant)) == text_hash(normalize("Cooperation is the key"))
    verdicts = run(["Cooperation is the key", variant], Dedup(near_threshold=None))
    assert verdicts[1] == Duplicate("exact_duplicate", "0-0")


def edited(words: list[str], edits: int, rng: random.Random, tag: str) -> list[str]:
    out = list(words)
    for k in range(edits):
        out[rng.randrange(len(out))] = f"{tag}e{k}"
    return out


def planted_by_edits(seed: int, originals: int, variants: int) -> list[str]:
    """80-word texts, then copies with 1-8 words replaced (true Jaccard about 0.55-0.95), shuffled."""
    rng = random.Random(seed)
    texts = [rng.choices(VOCAB, k=80) for _ in range(originals)]
    texts += [edited(rng.choice(texts[:originals]), rng.randint(1, 8), rng, f"v{i}") for i in range(variants)]
    rng.shuffle(texts)
    return [" ".join(t) for t in texts]


def test_near_duplicate_decisions_follow_the_exact_jaccard_of_every_pair() -> None:
    texts, threshold = planted_by_edits(seed=1, originals=300, variants=300), 0.8
    verdicts = run(texts, Dedup(near_threshold=threshold))
    sets = [true_shingles(t) for t in texts]

    def similar(p: int, q: int) -> bool:
        return len(sets[p] & sets[q]) / len(sets[p] | sets[q]) >= threshold

    position = {f"{i // 97}-{i % 97}": i for i in range(len(texts))}
    should = {p for p in range(len(texts)) if any(similar(p, q) for q in range(p))}
    dropped = {p: position[v.of] for p, v in enumerate(verdicts) if v is not None}
    assert all(v.reason == "near_duplicate" for v in verdicts if v is not None)
    assert all(similar(p, q) for p, q in dropped.items())  # precision 1: every drop checked on the exact sets
    assert len(should) > 80 and len(should & dropped.keys()) / len(should) >= 0.97


def pair_at(j_shared: int, j_own: int, rng: random.Random, tag: str) -> tuple[str, str]:
    """Two texts of distinct words sharing `j_shared` words, each with `j_own` of its own: with 1-word
    shingles their Jaccard similarity is j_shared / (j_shared + 2 * j_own)."""
    shared = [f"{tag}s{i}" for i in range(j_shared)]
    a, b = shared + [f"{tag}a{i}" for i in range(j_own)], shared + [f"{tag}b{i}" for i in range(j_own)]
    rng.shuffle(a)
    rng.shuffle(b)
    return " ".join(a), " ".join(b)


def test_pairs_at_the_threshold_are_dropped_and_pairs_below_it_never() -> None:
    rng, config = random.Random(2), Dedup(near_threshold=0.8, ngram=1)
    at = [pair_at(80, 10, rng, f"t{k}") for k in range(300)]  # J = 80/100
    below = [pair_at(78, 11, rng, f"u{k}") for k in range(300)]  # J = 78/100
    assert {true_jaccard(a, b, 1) for a, b in at} == {0.8} and {true_jaccard(a, b, 1) for a, b in below} == {0.78}
    dropped_at = sum(v is not None for v in run([t for pair in at for t in pair], config))
    dropped_below = sum(v is not None for v in run([t for pair in below for t in pair], config))
    assert dropped_at >= 0.95 * len(at) and dropped_below == 0


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9, 0.95])
def test_bands_make_a_pair_at_the_threshold_a_candidate_nearly_always(threshold: float) -> None:
    bands, rows = lsh_bands(threshold, 128)
    assert bands * rows <= 128
    assert candidate_probability(threshold, bands, rows) >= defaults.LSH_CANDIDATE_PROBABILITY


def test_minhash_estimate_is_unbiased_at_known_jaccard() -> None:
    rng, signer = random.Random(3), Signer(num_perm=128, ngram=3)
    small = VOCAB[:60]  # shingles sharing their first words, as natural text has them
    errors: dict[int, list[float]] = {}
    for edits in (2, 4, 6):
        for _ in range(300):
            a = rng.choices(small, k=60)
            b = edited(a, edits, rng, "x")
            sig = signer.sign([word_hashes(" ".join(a)), word_hashes(" ".join(b))])
            errors.setdefault(edits, []).append(float((sig[0] == sig[1]).mean()) - true_jaccard(" ".join(a), " ".join(b)))
    assert all(abs(sum(e) / len(e)) <= 0.01 for e in errors.values()), {k: sum(e) / len(e) for k, e in errors.items()}


def test_signatures_equal_datasketch_minhash_of_the_same_shingles() -> None:
    signer = Signer(num_perm=64, ngram=3)
    texts = ["The quick brown fox jumps over the lazy dog", "two words", "", "one"]
    rows = [word_hashes(normalize(t)) for t in texts]
    for words, sig in zip(rows, signer.sign(rows), strict=True):
        m = MinHash(num_perm=64, seed=1, scheme="affine32", hashfunc=lambda x: x)
        m.update_batch([int(h) >> 32 for h in shingle_hashes([words], 3)[0]])
        assert np.array_equal(m.hashvalues, sig)


def test_similarity_of_a_sampled_set_estimates_the_jaccard_of_the_whole() -> None:
    rng, k = np.random.default_rng(4), defaults.NEAR_DUP_HELD_SHINGLES
    errors = []
    for _ in range(200):
        pool = rng.permutation(np.unique(rng.integers(0, 2**63, size=6000, dtype=np.int64)).astype(np.uint64))
        a, b = np.sort(pool[:3000]), np.sort(pool[600:3600])  # J = 2400 / 3600
        assert similarity(a, b, sampled=False) == pytest.approx(2400 / 3600)
        errors.append(similarity(a, b[:k], sampled=True) - 2400 / 3600)
    assert abs(np.mean(errors)) <= 0.01 and np.std(errors) <= 0.04


def planted(seed: int = 0, originals: int = 600, exact: int = 60, near: int = 60) -> tuple[list[str], set[int]]:
    """Distinct 30-word texts, then exact copies (case and spacing changed) and one-word edits of some."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(VOCAB) for _ in range(30)) for _ in range(originals)]
    dups = set()
    for _ in range(exact):
        dups.add(len(texts))
        texts.append("  " + rng.choice(texts[:originals]).upper().replace(" ", "   "))
    for _ in range(near):
        words = rng.choice(texts[:originals]).split()
        words[rng.randrange(len(words))] = "edited"
        dups.add(len(texts))
        texts.append(" ".join(words))
    order = list(range(len(texts)))
    rng.shuffle(order[originals:])  # duplicates come after their originals, spread over the shards
    return [texts[i] for i in order], {order.index(i) for i in dups}


def test_planted_exact_and_near_duplicates_are_found_across_shards() -> None:
    texts, truth = planted()
    verdicts = run(texts, Dedup(near_threshold=0.7))
    found = {i for i, v in enumerate(verdicts) if v is not None}
    assert found == truth
    assert {v.reason for v in verdicts if v is not None} == {"exact_duplicate", "near_duplicate"}


def test_a_duplicate_names_the_earlier_row_it_repeats() -> None:
    verdicts = run(["alpha beta gamma delta", "something else entirely here", "Alpha  BETA gamma delta"],
                   Dedup(), shard_rows=2)
    assert verdicts[:2] == [None, None] and verdicts[2] == Duplicate("exact_duplicate", "0-0")


def test_exact_only_keeps_near_duplicates() -> None:
    texts, _ = planted(originals=200, exact=20, near=20)
    verdicts = run(texts, Dedup(near_threshold=None))
    assert {v.reason for v in verdicts if v is not None} == {"exact_duplicate"}
    assert sum(v is not None for v in verdicts) == 20


def test_dedup_is_deterministic() -> None:
    texts, _ = planted(seed=3, originals=300)
    assert run(texts, Dedup()) == run(texts, Dedup())


@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_only_candidates_shingle_sets_are_held_and_each_only_until_its_last_candidate(threshold: float) -> None:
    texts, truth = planted(originals=500, exact=0, near=25)
    d = Deduper(Dedup(near_threshold=threshold))
    d.scan(texts)
    d.close_scan()
    most = 0
    for start in range(0, len(texts), 50):
        d.decide(texts[start:start + 50], [str(i) for i in range(start, start + 50)])
        most = max(most, len(d._held))  # noqa: SLF001 - the memory bound is the point of this test
    assert 0 < most <= 2 * len(truth) and d._held == {}  # noqa: SLF001
