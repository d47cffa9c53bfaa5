"""Job-wide dedup: datasketch-compatible signatures; planted duplicates found across shards."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash

from orchestrator.dedup import Deduper, Signer, normalize, shingle_hashes, word_hashes
from orchestrator.gates import Dedup

VOCAB = [f"w{i}" for i in range(3000)]


def test_signatures_equal_datasketch_minhash_of_the_same_shingles() -> None:
    signer = Signer(num_perm=64, ngram=3)
    texts = ["The quick brown fox jumps over the lazy dog", "two words", "", "one"]
    rows = [word_hashes(normalize(t)) for t in texts]
    sigs = signer.sign(rows)
    for words, sig in zip(rows, sigs, strict=True):
        m = MinHash(num_perm=64, seed=1, scheme="affine32", hashfunc=lambda x: x)
        m.update_batch([int(h) for h in shingle_hashes([words], 3)[0]])
        assert np.array_equal(m.hashvalues, sig)


def test_short_rows_are_one_shingle_and_empty_rows_none() -> None:
    hashes, counts = shingle_hashes([[1, 2, 3, 4], [5, 6], []], 3)
    assert counts.tolist() == [2, 1, 0] and len(hashes) == 3


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


def run(texts: list[str], config: Dedup, shard_rows: int = 97) -> list:  # type: ignore[type-arg]
    d = Deduper(config)
    shards = [texts[i:i + shard_rows] for i in range(0, len(texts), shard_rows)]
    for shard in shards:
        d.scan(shard)
    d.close_scan()
    out = []
    for s, shard in enumerate(shards):
        out += d.decide(shard, [f"{s}-{i}" for i in range(len(shard))])
    return out


def test_planted_exact_and_near_duplicates_are_found_across_shards() -> None:
    texts, truth = planted()
    verdicts = run(texts, Dedup(near_threshold=0.7))
    found = {i for i, v in enumerate(verdicts) if v is not None}
    precision, recall = len(found & truth) / len(found), len(found & truth) / len(truth)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    reasons = {v.reason for v in verdicts if v is not None}
    assert reasons == {"exact_duplicate", "near_duplicate"}


def test_a_duplicate_names_the_earlier_row_it_repeats() -> None:
    verdicts = run(["alpha beta gamma delta", "something else entirely here", "Alpha  BETA gamma delta"],
                   Dedup(), shard_rows=2)
    assert verdicts[0] is None and verdicts[1] is None
    assert verdicts[2] is not None and (verdicts[2].reason, verdicts[2].of) == ("exact_duplicate", "0-0")


def test_exact_only_keeps_near_duplicates() -> None:
    texts, _ = planted(originals=200, exact=20, near=20)
    verdicts = run(texts, Dedup(near_threshold=None))
    assert {v.reason for v in verdicts if v is not None} == {"exact_duplicate"}
    assert sum(v is not None for v in verdicts) == 20


def test_dedup_is_deterministic() -> None:
    texts, _ = planted(seed=3, originals=300)
    assert run(texts, Dedup()) == run(texts, Dedup())


@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_only_candidates_signatures_are_held(threshold: float) -> None:
    texts, truth = planted(originals=500, exact=0, near=25)
    d = Deduper(Dedup(near_threshold=threshold))
    d.scan(texts)
    d.close_scan()
    d.decide(texts, [str(i) for i in range(len(texts))])
    assert len(d._held) <= 2 * len(truth)  # noqa: SLF001 - the memory bound is the point of this test
