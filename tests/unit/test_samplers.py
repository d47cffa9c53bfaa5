"""Seed samplers: each draw follows its distribution (tested against the distribution itself, with
scipy.stats at a significance of 1e-4 on 20,000 rows), depends on nothing but the spec and the row,
and every malformed sampler is refused on its field path."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
import yaml
from scipy import stats

from orchestrator.errors import SpecError
from orchestrator.plan.draws import columns, index_sampling, index_values
from orchestrator.plan.planner import make_plan, template_variables
from orchestrator.spec.job import JobSpec
from tests.unit.specs import make_spec

ROWS = 20_000
ALPHA = 1e-4  # a correct sampler fails a test this rarely; each test's draws are fixed, so never flaky


def sampled(seeds: dict[str, Any], rows: int = ROWS, **template: Any) -> JobSpec:
    text = " ".join(f"{{{{ {name} }}}}" for name in seeds)
    return make_spec(prompts={"template": {"text": text, "seeds": seeds, "rows": rows, **template}})


def drawn(spec: JobSpec, rows: int = ROWS) -> dict[str, list[Any]]:
    source = spec.prompts.template
    assert source is not None
    return {name: c.values() for name, c in columns(source, np.arange(rows, dtype=np.int64)).items()}


def problem_at(path: str, seeds: dict[str, Any], **template: Any) -> str:
    with pytest.raises(SpecError) as e:
        sampled(seeds, **template)
    assert [p.path for p in e.value.problems] == [path], e.value.problems
    return e.value.problems[0].message


def test_weighted_frequencies_follow_the_weights() -> None:
    weights = {"tides": 1, "rust": 3, "jazz": 6}
    counts = Counter(drawn(sampled({"topic": {"weighted": weights}}))["topic"])
    total = sum(weights.values())
    for value, weight in weights.items():
        assert stats.binomtest(counts[value], ROWS, weight / total).pvalue > ALPHA, (value, counts)


def test_conditional_draws_only_the_parents_values_with_their_weights() -> None:
    seeds = {"topic": {"weighted": {"sea": 1, "code": 1}},
             "sub": {"conditional": {"on": "topic", "values": {"sea": ["tides", "waves"],
                                                               "code": {"rust": 1, "go": 4}}}}}
    rows = drawn(sampled(seeds))
    pairs = Counter(zip(rows["topic"], rows["sub"], strict=True))
    assert set(pairs) == {("sea", "tides"), ("sea", "waves"), ("code", "rust"), ("code", "go")}
    sea, code = pairs["sea", "tides"] + pairs["sea", "waves"], pairs["code", "rust"] + pairs["code", "go"]
    assert stats.binomtest(pairs["sea", "tides"], sea, 0.5).pvalue > ALPHA
    assert stats.binomtest(pairs["code", "go"], code, 0.8).pvalue > ALPHA
    assert stats.binomtest(sea, ROWS, 0.5).pvalue > ALPHA


def test_a_conditional_on_a_listed_variable_keys_non_text_values_by_their_json() -> None:
    seeds = {"level": [1, 2], "word": {"conditional": {"on": "level", "values": {"1": ["easy"], 2: ["hard"]}}}}
    rows = drawn(sampled(seeds, rows=10), rows=10)
    assert rows["level"] == [1, 2] * 5
    assert rows["word"] == ["easy", "hard"] * 5


def test_a_bare_yaml_on_key_is_taken_as_on() -> None:
    """YAML 1.1 reads `on:` as true; the sampler says `on` all the same."""
    seeds = yaml.safe_load("t: [a, b]\ns: {conditional: {on: t, values: {a: [x], b: [y]}}}")
    assert True in seeds["s"]["conditional"]
    assert drawn(sampled(seeds, rows=4), rows=4)["s"] == ["x", "y", "x", "y"]


def test_uniform_int_covers_both_ends_evenly() -> None:
    values = drawn(sampled({"age": {"uniform_int": [18, 27]}}))["age"]
    counts = Counter(values)
    assert sorted(counts) == list(range(18, 28)) and all(isinstance(v, int) for v in values)
    assert stats.chisquare([counts[v] for v in range(18, 28)]).pvalue > ALPHA


def test_a_wide_uniform_int_is_a_number_not_a_category() -> None:
    values = drawn(sampled({"n": {"uniform_int": [0, 10**12]}}), rows=5000)["n"]
    assert all(isinstance(v, int) and 0 <= v <= 10**12 for v in values)
    assert stats.kstest(np.array(values) / 10**12, "uniform").pvalue > ALPHA


def test_uniform_is_uniform_on_its_range() -> None:
    values = np.array(drawn(sampled({"x": {"uniform": [0.6, 1.1]}}))["x"])
    assert values.min() > 0.6 and values.max() < 1.1
    assert stats.kstest(values, "uniform", args=(0.6, 0.5)).pvalue > ALPHA


def test_a_bounded_normal_is_the_truncated_normal() -> None:
    values = np.array(drawn(sampled({"x": {"normal": {"mean": 10, "std": 4, "min": 8, "max": 20}}}))["x"])
    assert values.min() >= 8 and values.max() <= 20
    assert stats.kstest(values, "truncnorm", args=((8 - 10) / 4, (20 - 10) / 4, 10, 4)).pvalue > ALPHA
    free = np.array(drawn(sampled({"x": {"normal": {"mean": -1, "std": 2}}}))["x"])
    assert stats.kstest(free, "norm", args=(-1, 2)).pvalue > ALPHA


def test_choice_gives_k_distinct_values_each_equally_often() -> None:
    options = ["a", "b", "c", "d", "e"]
    rows = drawn(sampled({"tags": {"choice": {"values": options, "k": 2}}}))["tags"]
    assert all(len(r) == 2 and r[0] != r[1] and options.index(r[0]) < options.index(r[1]) for r in rows)
    counts = Counter(v for r in rows for v in r)
    for v in options:
        assert stats.binomtest(counts[v], ROWS, 2 / 5).pvalue > ALPHA, counts
    pairs = Counter(tuple(r) for r in rows)
    assert len(pairs) == math.comb(5, 2) and stats.chisquare(list(pairs.values())).pvalue > ALPHA


def test_listed_variables_keep_their_exact_shares_beside_samplers() -> None:
    rows = drawn(sampled({"lang": ["en", "fr", "de"], "x": {"uniform": [0, 1]}}, rows=3000), rows=3000)
    assert Counter(rows["lang"]) == {"en": 1000, "fr": 1000, "de": 1000}


def test_variables_are_independent_streams() -> None:
    rows = drawn(sampled({"a": {"uniform": [0, 1]}, "b": {"uniform": [0, 1]}}))
    assert abs(stats.pearsonr(rows["a"], rows["b"]).statistic) < 4 / math.sqrt(ROWS)


def test_a_row_is_drawn_the_same_alone_in_any_range_and_on_any_shard_size() -> None:
    seeds = {"topic": {"weighted": {"a": 1, "b": 2}}, "x": {"normal": {"mean": 0, "std": 1}},
             "tags": {"choice": {"values": [1, 2, 3], "k": 2}}, "lang": ["en", "fr"]}
    spec = sampled(seeds, rows=500)
    source = spec.prompts.template
    assert source is not None
    whole = drawn(spec, 500)
    for index in (0, 7, 499):
        assert index_values(source, np.arange(index, index + 1)) == [{name: whole[name][index] for name in whole}]
        assert [template_variables(source, index)] == index_values(source, np.arange(index, index + 1))
    part = {name: c.values() for name, c in columns(source, np.arange(200, 300, dtype=np.int64)).items()}
    assert part == {name: values[200:300] for name, values in whole.items()}
    resharded = spec.model_copy(update={"output": spec.output.model_copy(update={"rows_per_shard": 7})})
    assert make_plan(resharded).total_rows == make_plan(spec).total_rows == 500
    assert resharded.job_id == spec.job_id


def test_the_template_seed_changes_the_draws_and_the_job() -> None:
    seeds = {"x": {"uniform": [0, 1]}}
    assert drawn(sampled(seeds, seed=1), 50) != drawn(sampled(seeds), 50)
    assert sampled(seeds, seed=1).job_id != sampled(seeds).job_id
    assert drawn(sampled(seeds, seed=0), 50) == drawn(sampled(seeds), 50)


def test_a_drawn_temperature_is_the_rows_own_and_in_range() -> None:
    spec = make_spec(sampling={"max_tokens": 8, "seed": 1, "temperature": {"uniform": [0.6, 1.1]},
                               "top_p": {"normal": {"mean": 0.9, "std": 0.05, "min": 0.5, "max": 1.0}}})
    rows = index_sampling(spec.sampling, np.arange(0, 2000))
    temperatures = np.array([r.temperature for r in rows])
    assert stats.kstest(temperatures, "uniform", args=(0.6, 0.5)).pvalue > ALPHA
    assert all(0.5 <= r.top_p <= 1.0 for r in rows)  # type: ignore[operator]
    assert index_sampling(spec.sampling, np.arange(3, 4)) == [rows[3]] and rows[3] != rows[4]
    other_seed = spec.sampling.model_copy(update={"seed": 2})
    assert index_sampling(other_seed, np.arange(3, 4))[0].temperature != rows[3].temperature
    fixed = make_spec().sampling
    assert all(s is fixed for s in index_sampling(fixed, np.arange(3, 9)))


@pytest.mark.parametrize(("sampling", "path", "words"), [
    ({"temperature": {"uniform": [-0.5, 1]}}, "sampling.temperature", "within [0.0, inf]"),
    ({"top_p": {"uniform": [0.5, 1.5]}}, "sampling.top_p", "within [0.0, 1.0]"),
    ({"top_p": {"normal": {"mean": 0.9, "std": 0.1, "min": 0.5}}}, "sampling.top_p", "needs min and max"),
    ({"temperature": {"weighted": {"a": 1}}}, "sampling.temperature", "uniform or normal, not weighted"),
])
def test_a_drawn_sampling_parameter_out_of_its_range_is_refused(sampling: dict[str, Any], path: str,
                                                                words: str) -> None:
    with pytest.raises(SpecError) as e:
        make_spec(sampling={"max_tokens": 8, **sampling})
    assert [p.path for p in e.value.problems] == [path] and words in e.value.problems[0].message


def test_samplers_need_rows_and_rows_need_samplers() -> None:
    assert "give rows: N" in problem_at("prompts.template.rows", {"x": {"uniform": [0, 1]}}, rows=None)
    with pytest.raises(SpecError, match="rows needs a sampler"):
        make_spec(prompts={"template": {"text": "{{ w }}", "seeds": {"w": ["a"]}, "rows": 5}})
    with pytest.raises(SpecError, match="seed needs a sampler"):
        make_spec(prompts={"template": {"text": "{{ w }}", "seeds": {"w": ["a"]}, "seed": 5}})
    assert "give rows: N instead" in problem_at("prompts.template.sample", {"x": {"uniform": [0, 1]}},
                                                sample={"n": 1})


@pytest.mark.parametrize(("seeds", "path", "words"), [
    ({"s": {"conditional": {"on": "nope", "values": {"a": [1]}}}}, "prompts.template.seeds.s.conditional.on",
     "'nope' is not a seed variable"),
    ({"x": {"uniform": [0, 1]}, "s": {"conditional": {"on": "x", "values": {"a": [1]}}}},
     "prompts.template.seeds.s.conditional.on", "drawn by uniform, which has no fixed values"),
    ({"t": ["a", "b"], "s": {"conditional": {"on": "t", "values": {"a": [1]}}}},
     "prompts.template.seeds.s.conditional.values", "no values for t = 'b'"),
    ({"t": ["a"], "s": {"conditional": {"on": "t", "values": {"a": [1], "z": [2]}}}},
     "prompts.template.seeds.s.conditional.values.z", "'z' is not a value of t"),
    ({"a": {"conditional": {"on": "b", "values": {"1": ["1"]}}},
      "b": {"conditional": {"on": "a", "values": {"1": ["1"]}}}},
     "prompts.template.seeds.a.conditional.on", "cycle (a -> b -> a)"),
    ({"t": [1, "1"], "s": {"conditional": {"on": "t", "values": {"1": [1]}}}},
     "prompts.template.seeds.s.conditional.on", "cannot tell apart"),
    ({"t": {"weighted": {"a": 0}}}, "prompts.template.seeds.t.weighted.a", "greater than 0"),
    ({"t": {"choice": {"values": [1, 2], "k": 3}}}, "prompts.template.seeds.t.choice", "k=3 exceeds its 2 values"),
    ({"t": {"normal": {"mean": 0, "std": 1, "min": 2, "max": 1}}}, "prompts.template.seeds.t.normal",
     "must be below"),
    ({"t": {"uniform_int": [5, 1]}}, "prompts.template.seeds.t", "low (5) is above high (1)"),
    ({"t": {"uniform": [0, 1], "normal": {"mean": 0, "std": 1}}}, "prompts.template.seeds.t",
     "exactly one sampler"),
])
def test_a_malformed_sampler_is_refused_on_its_field(seeds: dict[str, Any], path: str, words: str) -> None:
    message = problem_at(path, seeds)
    assert words in message, message
