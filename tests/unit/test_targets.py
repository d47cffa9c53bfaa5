"""Targets (`targets:` in a job spec) against truth computed by hand or by brute force in the test itself:
every bad `targets` is refused on its field path before anything runs; each stratum's planned share is
the samplers' exact law; the drawn rows follow it; rounds draw new rows for the short strata only, and
stop at their limits; the rows over target are each stratum's kept rows past its first `target`; and a
round's quotas ask a short stratum for its missing rows over its acceptance. No Ray, no engine."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml
from scipy import stats

from orchestrator.cli import main
from orchestrator.errors import Problem, SpecError
from orchestrator.finalize.targets import KeptStrata, order_keys
from orchestrator.plan.planner import Plan, make_plan
from orchestrator.plan.rounds import Standing, Strata, next_round, quotas, why_short
from orchestrator.run.preflight import spec_problems
from orchestrator.spec.job import JobSpec, TemplateSource
from orchestrator.spec.load import parse_spec
from orchestrator.spec.targets import planned_strata, strata
from tests.unit.specs import spec_data

ROWS = 20_000
ALPHA = 1e-4  # a correct draw fails a test this rarely; the draws are fixed, so never flaky

# topic: a 1/4, b 3/4; sub given a: x 1/3, y 2/3; given b: y 1/5, z 4/5.
TOPIC: dict[str, Any] = {"weighted": {"a": 1, "b": 3}}
SUB: dict[str, Any] = {"conditional": {"on": "topic", "values": {"a": {"x": 1, "y": 2}, "b": {"y": 1, "z": 4}}}}
SEEDS: dict[str, Any] = {"topic": TOPIC, "sub": SUB}
F = Fraction
TOPIC_SUB_SHARES: dict[tuple[str, ...], Fraction] = {
    ("a", "x"): F(1, 4) * F(1, 3), ("a", "y"): F(1, 4) * F(2, 3),
    ("b", "y"): F(3, 4) * F(1, 5), ("b", "z"): F(3, 4) * F(4, 5)}


# --- builders ---------------------------------------------------------------------------------------

def targets_data(targets: dict[str, Any], seeds: dict[str, Any] | None = None, **template: Any) -> dict[str, Any]:
    seeds = SEEDS if seeds is None else seeds
    text = " ".join(f"{{{{ {name} }}}}" for name in seeds)
    return spec_data(prompts={"template": {"text": text, "seeds": seeds, **template}}, targets=targets)


def targets_spec(targets: dict[str, Any], seeds: dict[str, Any] | None = None, **template: Any) -> JobSpec:
    return parse_spec(targets_data(targets, seeds, **template))


def refused(targets: dict[str, Any], seeds: dict[str, Any] | None = None, **template: Any) -> Problem:
    """The one problem a spec with these targets is refused with."""
    with pytest.raises(SpecError) as e:
        targets_spec(targets, seeds, **template)
    assert len(e.value.problems) == 1, e.value.problems
    return e.value.problems[0]


def source_of(spec: JobSpec) -> TemplateSource:
    assert spec.prompts.template is not None
    return spec.prompts.template


def spec_strata(spec: JobSpec) -> dict[tuple[Any, ...], tuple[float, int]]:
    """Each stratum's (planned share, target), by its values."""
    assert spec.targets is not None
    source = source_of(spec)
    return {s.values: (s.share, s.target) for s in strata(spec.targets, source.listed(), source.sampled())}


def key_of(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def brute_force_law(seeds: dict[str, Any], by: list[str]) -> dict[tuple[Any, ...], Fraction]:
    """The exact law of the `by` values: every assignment of every seed variable's values enumerated,
    its probability the product of each variable's probability given its parent (listed: uniform, as
    row i takes product combination i mod P)."""
    domains: dict[str, list[Any]] = {}
    for name, seed in seeds.items():
        if isinstance(seed, list):
            domains[name] = seed
        elif "weighted" in seed:
            domains[name] = list(seed["weighted"])
        elif "uniform_int" in seed:
            low, high = seed["uniform_int"]
            domains[name] = list(range(low, high + 1))
        else:
            domains[name] = list(dict.fromkeys(v for entry in seed["conditional"]["values"].values() for v in entry))

    def p(name: str, value: Any, row: dict[str, Any]) -> Fraction:
        seed = seeds[name]
        if isinstance(seed, list):
            return F(1, len(seed))
        if "weighted" in seed:
            return F(seed["weighted"][value]) / sum(F(w) for w in seed["weighted"].values())
        if "uniform_int" in seed:
            return F(1, len(domains[name]))
        entry = seed["conditional"]["values"][key_of(row[seed["conditional"]["on"]])]
        weights = {v: F(1) for v in entry} if isinstance(entry, list) else {v: F(w) for v, w in entry.items()}
        return weights.get(value, F(0)) / sum(weights.values())

    law: dict[tuple[Any, ...], Fraction] = {}
    names = list(domains)
    for combo in itertools.product(*(domains[n] for n in names)):
        row = dict(zip(names, combo, strict=True))
        prob = math.prod((p(n, row[n], row) for n in names), start=F(1))
        if prob:
            values = tuple(row[n] for n in by)
            law[values] = law.get(values, F(0)) + prob
    return law


# --- 1. validation: one message on its field path, before anything runs ------------------------------

@pytest.mark.parametrize("by,path", [(["nope"], "targets.by.0"), (["topic", "nope"], "targets.by.1")])
def test_an_unknown_by_variable_is_refused_on_its_place_in_by(by: list[str], path: str) -> None:
    problem = refused({"by": by, "kept_rows": 5})
    assert problem.path == path
    assert "'nope'" in problem.message and "not a seed variable" in problem.message


@pytest.mark.parametrize("sampler", [{"uniform": [0, 1]}, {"normal": {"mean": 0, "std": 1}}])
def test_a_by_variable_drawn_by_a_continuous_sampler_is_refused(sampler: dict[str, Any]) -> None:
    problem = refused({"by": ["topic", "t"], "kept_rows": 5}, {**SEEDS, "t": sampler})
    assert problem.path == "targets.by.1"
    assert next(iter(sampler)) in problem.message and "no fixed values" in problem.message


def test_a_conditional_on_an_unknown_parent_is_refused_on_its_on_field_with_targets_present() -> None:
    seeds = {"topic": TOPIC, "sub": {"conditional": {"on": "topc", "values": {"a": ["x"], "b": ["y"]}}}}
    problem = refused({"by": ["topic", "sub"], "kept_rows": 5}, seeds)
    assert problem.path == "prompts.template.seeds.sub.conditional.on"
    assert "'topc'" in problem.message


@pytest.mark.parametrize("weight", [0, -1, 0.0])
def test_a_non_positive_weight_is_refused_on_its_value(weight: float) -> None:
    problem = refused({"by": ["topic"], "kept_rows": 5}, {"topic": {"weighted": {"a": weight, "b": 3}}})
    assert problem.path == "prompts.template.seeds.topic.weighted.a"
    assert "greater than 0" in problem.message


@pytest.mark.parametrize("weight", [0, -1])
def test_a_non_positive_conditional_weight_is_refused_with_one_message_on_its_value(weight: float) -> None:
    seeds = {"topic": TOPIC, "sub": {"conditional": {"on": "topic", "values": {"a": {"x": weight, "y": 1},
                                                                                 "b": ["y"]}}}}
    problem = refused({"by": ["topic", "sub"], "kept_rows": 5}, seeds)
    assert problem.path == "prompts.template.seeds.sub.conditional.values.a.x"


def test_kept_rows_and_shares_together_are_refused() -> None:
    problem = refused({"by": ["topic"], "kept_rows": 5, "shares": {"a": 1, "b": 1}, "total_kept_rows": 10})
    assert problem.path == "targets"
    assert "kept_rows" in problem.message and "shares" in problem.message


def test_neither_kept_rows_nor_shares_is_refused() -> None:
    problem = refused({"by": ["topic"]})
    assert problem.path == "targets"
    assert "kept_rows" in problem.message and "shares" in problem.message


def test_shares_without_total_kept_rows_are_refused() -> None:
    problem = refused({"by": ["topic"], "shares": {"a": 1, "b": 1}})
    assert problem.path == "targets" and "total_kept_rows" in problem.message


def test_shares_missing_a_stratum_are_refused_naming_it() -> None:
    problem = refused({"by": ["topic", "sub"], "shares": {"a": {"x": 1, "y": 1}, "b": {"y": 1}},
                       "total_kept_rows": 100})
    assert problem.path == "targets.shares"
    assert "b / z" in problem.message and "a / x" not in problem.message


def test_a_share_for_a_combination_the_samplers_cannot_draw_is_refused_on_it() -> None:
    """z is a value of sub, but only under topic b: (a, z) is no stratum."""
    problem = refused({"by": ["topic", "sub"], "shares": {"a": {"x": 1, "y": 1, "z": 1}, "b": {"y": 1, "z": 1}},
                       "total_kept_rows": 100})
    assert problem.path == "targets.shares.a.z"
    assert "not a stratum the samplers can draw" in problem.message


def test_a_share_for_a_value_no_sampler_has_is_refused_on_it() -> None:
    problem = refused({"by": ["topic"], "shares": {"a": 1, "b": 1, "c": 1}, "total_kept_rows": 100})
    assert problem.path == "targets.shares.c"


@pytest.mark.parametrize("share", [0, -0.5, "half", True])
def test_a_share_that_is_not_a_positive_number_is_refused_on_it(share: Any) -> None:
    problem = refused({"by": ["topic"], "shares": {"a": 1, "b": share}, "total_kept_rows": 100})
    assert problem.path == "targets.shares.b"
    assert "positive share" in problem.message


def test_shares_keyed_by_numbers_as_yaml_writes_them_are_accepted() -> None:
    targets = yaml.safe_load("{by: [topic, level], shares: {a: {1: 1, 2: 1}, b: {1: 1, 2: 1}}, "
                             "total_kept_rows: 100}")
    spec = targets_spec(targets, {"topic": TOPIC, "level": {"uniform_int": [1, 2]}})
    assert sorted(t for _, t in spec_strata(spec).values()) == [25, 25, 25, 25]


def test_max_rows_below_the_targeted_kept_rows_is_refused_on_max_rows() -> None:
    """4 strata x 10 kept rows need 40 rows even if every row were kept."""
    problem = refused({"by": ["topic", "sub"], "kept_rows": 10, "max_rows": 39})
    assert problem.path == "targets.max_rows"
    assert "40" in problem.message and "39" in problem.message


def test_max_rows_equal_to_the_targeted_kept_rows_is_accepted() -> None:
    targets_spec({"by": ["topic", "sub"], "kept_rows": 10, "max_rows": 40})


def test_a_first_pass_above_max_rows_is_refused_on_max_rows() -> None:
    problem = refused({"by": ["topic", "sub"], "kept_rows": 10, "max_rows": 40}, rows=41)
    assert problem.path == "targets.max_rows"
    assert "prompts.template.rows" in problem.message and "41" in problem.message


def test_a_first_pass_of_exactly_max_rows_is_accepted() -> None:
    targets_spec({"by": ["topic", "sub"], "kept_rows": 10, "max_rows": 40}, rows=40)


def test_targets_without_any_sampler_are_refused_on_targets() -> None:
    problem = refused({"by": ["word"], "kept_rows": 5}, {"word": ["a", "b"]})
    assert problem.path == "targets" and "sampler" in problem.message


def test_a_by_variable_named_twice_is_refused() -> None:
    problem = refused({"by": ["topic", "topic"], "kept_rows": 5})
    assert problem.path == "targets" and "twice" in problem.message


def _write_spec(tmp_path: Path, data: dict[str, Any]) -> Path:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    data = {**data, "model": {"path": str(model)}, "output": {"uri": str(tmp_path / "out")},
            "resources": {"gpus_per_worker": 0}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_validate_exits_2_naming_the_bad_targets_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_spec(tmp_path, targets_data({"by": ["topic", "nope"], "kept_rows": 5}))
    assert main(["validate", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "targets.by.1" in err and "'nope'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_validate_exits_2_on_max_rows_below_the_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_spec(tmp_path, targets_data({"by": ["topic", "sub"], "kept_rows": 10, "max_rows": 39}))
    assert main(["validate", str(path)]) == 2
    assert "targets.max_rows" in capsys.readouterr().err


def test_validate_accepts_a_good_targets_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_spec(tmp_path, targets_data({"by": ["topic", "sub"], "kept_rows": 10}))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_a_seed_file_without_the_named_columns_is_refused_on_its_field_with_targets(tmp_path: Path) -> None:
    seed_file = tmp_path / "people.jsonl"
    seed_file.write_text("".join(json.dumps({"id": i, "name": f"p{i}"}) + "\n" for i in range(50)))
    seeds = {"topic": TOPIC, "p": {"from_file": {"uri": str(seed_file), "columns": ["id", "persona"],
                                                 "replace": True}}}
    spec = parse_spec(spec_data(prompts={"template": {"text": "{{ topic }} {{ p.id }}", "seeds": seeds}},
                                targets={"by": ["topic"], "kept_rows": 5}))
    problems = spec_problems(spec, check_output=False)
    assert [p.path for p in problems] == ["prompts.template.seeds.p.from_file.columns"], problems
    assert "'persona'" in problems[0].message
    with pytest.raises(SpecError, match="'persona'"):
        make_plan(spec)


# --- 2. planned strata: exact shares ---------------------------------------------------------------

def test_planned_shares_of_topic_and_subtopic_are_the_weights_multiplied_out() -> None:
    planned = dict(planned_strata(["topic", "sub"], {}, source_of(targets_spec({"by": ["topic"], "kept_rows": 1}))
                                  .sampled()))
    assert set(planned) == set(TOPIC_SUB_SHARES)
    for values, share in TOPIC_SUB_SHARES.items():
        assert planned[values] == pytest.approx(float(share), rel=1e-12, abs=0)


def test_the_spec_strata_carry_the_planned_shares_in_value_order() -> None:
    spec = targets_spec({"by": ["topic", "sub"], "kept_rows": 7})
    got = spec_strata(spec)
    assert list(got) == [("a", "x"), ("a", "y"), ("b", "y"), ("b", "z")]
    assert {v: s for v, (s, _) in got.items()} == pytest.approx({v: float(s) for v, s in TOPIC_SUB_SHARES.items()},
                                                                 rel=1e-12, abs=0)


def test_a_subtopic_stratum_sums_its_share_over_every_parent_that_can_draw_it() -> None:
    """y is drawn under a (1/4 x 2/3) and under b (3/4 x 1/5)."""
    got = {v: s for v, (s, _) in spec_strata(targets_spec({"by": ["sub"], "kept_rows": 7})).items()}
    expected = {("x",): F(1, 12), ("y",): F(1, 6) + F(3, 20), ("z",): F(3, 5)}
    assert got == pytest.approx({v: float(s) for v, s in expected.items()}, rel=1e-12, abs=0)


def test_a_combination_no_draw_can_reach_is_not_a_stratum() -> None:
    got = spec_strata(targets_spec({"by": ["topic", "sub"], "kept_rows": 7}))
    assert ("a", "z") not in got and ("b", "x") not in got
    assert len(got) == 4  # of the 2 x 3 combinations


def test_planned_shares_match_a_brute_force_enumeration_of_the_joint_law() -> None:
    """A listed variable, a conditional on it keyed by its JSON text, a conditional on that conditional, a
    small uniform_int and a weighted variable: the planned shares are the enumerated law, and sum to 1."""
    seeds: dict[str, Any] = {
        "level": [1, 2, 3],
        "style": {"conditional": {"on": "level", "values": {"1": ["plain"], "2": {"plain": 1, "fancy": 3},
                                                            "3": ["fancy", "odd"]}}},
        "tone": {"conditional": {"on": "style", "values": {"plain": {"dry": 2, "warm": 1}, "fancy": ["warm"],
                                                           "odd": {"dry": 1, "warm": 1, "wry": 2}}}},
        "dice": {"uniform_int": [1, 3]},
        "topic": TOPIC,
    }
    for by in (["tone"], ["level", "tone"], ["tone", "dice"], ["style", "topic"], ["level", "style", "tone"]):
        spec = targets_spec({"by": by, "kept_rows": 1}, seeds, rows=10)
        got = {v: s for v, (s, _) in spec_strata(spec).items()}
        truth = brute_force_law(seeds, by)
        assert set(got) == set(truth), by
        assert got == pytest.approx({v: float(p) for v, p in truth.items()}, rel=1e-12, abs=0), by
        assert math.fsum(got.values()) == pytest.approx(1.0, abs=1e-12)


def test_kept_rows_gives_every_stratum_the_same_target() -> None:
    assert {t for _, t in spec_strata(targets_spec({"by": ["topic", "sub"], "kept_rows": 7})).values()} == {7}


def test_shares_split_total_kept_rows_by_largest_remainder() -> None:
    """Shares 1:2:3:4 of 7 are 0.7, 1.4, 2.1, 2.8: floors 0, 1, 2, 2 (5), and the two largest remainders
    (0.8 of b/z, 0.7 of a/x) get the 2 rows left."""
    spec = targets_spec({"by": ["topic", "sub"], "shares": {"a": {"x": 1, "y": 2}, "b": {"y": 3, "z": 4}},
                         "total_kept_rows": 7})
    assert {v: t for v, (_, t) in spec_strata(spec).items()} == {("a", "x"): 1, ("a", "y"): 1, ("b", "y"): 2,
                                                                 ("b", "z"): 3}


def test_shares_that_divide_evenly_give_their_exact_targets() -> None:
    spec = targets_spec({"by": ["topic", "sub"], "shares": {"a": {"x": 0.2, "y": 0.3}, "b": {"y": 0.25, "z": 0.25}},
                         "total_kept_rows": 2000})
    assert {v: t for v, (_, t) in spec_strata(spec).items()} == {("a", "x"): 400, ("a", "y"): 600,
                                                                 ("b", "y"): 500, ("b", "z"): 500}


@pytest.mark.parametrize("total", [1, 2, 3, 7, 99, 1001, 123_457])
def test_share_targets_sum_exactly_to_total_kept_rows_each_within_one_of_its_exact_part(total: int) -> None:
    shares = {"a": {"x": 1 / 3, "y": 0.1}, "b": {"y": 2, "z": math.pi}}
    spec = targets_spec({"by": ["topic", "sub"], "shares": shares, "total_kept_rows": total})
    targets = {v: t for v, (_, t) in spec_strata(spec).items()}
    assert sum(targets.values()) == total
    weight_sum = sum(w for inner in shares.values() for w in inner.values())
    for (topic, sub), target in targets.items():
        exact = shares[topic][sub] / weight_sum * total
        assert math.floor(exact) <= target <= math.ceil(exact), (topic, sub, target, exact)


# --- 3. the drawn strata follow the planned shares --------------------------------------------------

def assert_drawn_follow_planned(spec: JobSpec) -> None:
    plan = Strata.of(spec)
    ids = plan.of_rows(source_of(spec), np.arange(ROWS, dtype=np.int64))
    counts = np.bincount(ids, minlength=len(plan.items))
    assert counts.sum() == ROWS
    for s, stratum in enumerate(plan.items):
        assert stats.binomtest(int(counts[s]), ROWS, stratum.share).pvalue > ALPHA, (stratum, counts[s])


def test_drawn_topic_and_subtopic_strata_follow_their_planned_shares() -> None:
    spec = targets_spec({"by": ["topic", "sub"], "kept_rows": 10})
    strata_ = Strata.of(spec)
    assert {s.values: s.share for s in strata_.items} == pytest.approx(
        {v: float(p) for v, p in TOPIC_SUB_SHARES.items()}, rel=1e-12, abs=0)  # the exact shares tested against
    assert_drawn_follow_planned(spec)


def test_drawn_strata_of_a_listed_a_conditional_and_a_uniform_int_follow_their_planned_shares() -> None:
    seeds = {"level": [1, 2, 3],
             "style": {"conditional": {"on": "level", "values": {"1": ["plain"], "2": {"plain": 1, "fancy": 3},
                                                                 "3": ["fancy", "odd"]}}},
             "dice": {"uniform_int": [1, 3]}}
    spec = targets_spec({"by": ["style", "dice", "level"], "kept_rows": 10}, seeds)
    truth = brute_force_law(seeds, ["style", "dice", "level"])
    assert {s.values: s.share for s in Strata.of(spec).items} == pytest.approx(
        {v: float(p) for v, p in truth.items()}, rel=1e-12, abs=0)
    assert_drawn_follow_planned(spec)


def test_drawn_subtopic_strata_follow_their_shares_summed_over_parents() -> None:
    assert_drawn_follow_planned(targets_spec({"by": ["sub"], "kept_rows": 10}))


# --- 4. rounds ---------------------------------------------------------------------------------------

def round_indexes(plan: Plan) -> np.ndarray:
    return plan.rounds[-1].indexes


def per_stratum(spec: JobSpec, strata_: Strata, indexes: np.ndarray) -> np.ndarray:
    return np.bincount(strata_.of_rows(source_of(spec), indexes), minlength=len(strata_.items))


def first_round(targets: dict[str, Any], **template: Any) -> tuple[JobSpec, Strata, Plan]:
    spec = targets_spec(targets, **template)
    strata_ = Strata.of(spec)
    plan = next_round(spec, make_plan(spec), strata_, None)
    assert plan is not None
    return spec, strata_, plan


def test_the_first_round_draws_each_strata_target_exactly() -> None:
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "shares": {"a": {"x": 1, "y": 2},
                                                                          "b": {"y": 3, "z": 4}},
                                       "total_kept_rows": 70})
    assert len(plan.rounds) == 1 and plan.total_rows == 0
    assert per_stratum(spec, strata_, round_indexes(plan)).tolist() == [7, 14, 21, 28]


def test_the_first_round_is_the_first_target_rows_of_each_stratum_in_the_sequence() -> None:
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "kept_rows": 30})
    r = plan.rounds[0]
    ids = strata_.of_rows(source_of(spec), np.arange(r.end, dtype=np.int64))
    expected = sorted(i for s in range(len(strata_.items)) for i in [j for j, t in enumerate(ids) if t == s][:30])
    assert r.start == 0 and r.indexes.tolist() == expected and r.end == expected[-1] + 1


def test_with_n_samples_per_row_the_first_round_draws_target_over_n_rows() -> None:
    spec = parse_spec({**targets_data({"by": ["topic", "sub"], "kept_rows": 31}),
                       "sampling": {"max_tokens": 8, "seed": 1, "n": 2}})
    strata_ = Strata.of(spec)
    plan = next_round(spec, make_plan(spec), strata_, None)
    assert plan is not None
    assert per_stratum(spec, strata_, round_indexes(plan)).tolist() == [16] * 4  # ceil(31 / 2)


def short_standing(spec: JobSpec, strata_: Strata, plan: Plan, short: int, kept: int) -> Standing:
    """Every row of `plan` generated; every stratum met but `short`, which kept `kept` rows."""
    generated = per_stratum(spec, strata_, np.concatenate([r.indexes for r in plan.rounds]))
    kept_ = strata_.targets.copy()
    kept_[short] = kept
    return Standing(generated, kept_)


def test_a_further_round_selects_only_rows_of_the_short_stratum() -> None:
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "kept_rows": 30})
    further = next_round(spec, plan, strata_, short_standing(spec, strata_, plan, short=2, kept=12))
    assert further is not None and len(further.rounds) == 2
    counts = per_stratum(spec, strata_, round_indexes(further))
    assert counts[2] > 0 and counts.sum() == counts[2]


def test_a_further_round_draws_only_new_rows_after_the_previous_round() -> None:
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "kept_rows": 30})
    further = next_round(spec, plan, strata_, short_standing(spec, strata_, plan, short=0, kept=5))
    assert further is not None
    second = further.rounds[1]
    assert second.start == plan.rounds[0].end
    assert second.indexes.min() >= plan.rounds[0].end
    assert len(set(second.indexes.tolist())) == len(second.indexes)
    assert not set(second.indexes.tolist()) & set(plan.rounds[0].indexes.tolist())
    assert further.rows == plan.rows + len(second.indexes)


def test_a_further_round_asks_the_short_stratum_for_its_missing_rows_over_its_acceptance() -> None:
    """b/y kept 12 of its 30 rows (acceptance 0.4) and misses 18: it needs at least 18 / 0.4 = 45 rows."""
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "kept_rows": 30})
    further = next_round(spec, plan, strata_, short_standing(spec, strata_, plan, short=2, kept=12))
    assert further is not None
    assert per_stratum(spec, strata_, round_indexes(further))[2] >= 45


def test_a_further_round_is_deterministic() -> None:
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "kept_rows": 30})
    standing = short_standing(spec, strata_, plan, short=1, kept=10)
    once, again = next_round(spec, plan, strata_, standing), next_round(spec, plan, strata_, standing)
    assert once is not None and again is not None
    assert once.rounds[1].indexes.tolist() == again.rounds[1].indexes.tolist()
    assert (once.rounds[1].start, once.rounds[1].end) == (again.rounds[1].start, again.rounds[1].end)
    rebuilt = Strata.of(targets_spec({"by": ["topic", "sub"], "kept_rows": 30}))  # and from a fresh spec
    fresh = next_round(spec, plan, rebuilt, standing)
    assert fresh is not None and fresh.rounds[1].indexes.tolist() == once.rounds[1].indexes.tolist()


def test_with_a_first_pass_the_first_further_round_starts_after_it() -> None:
    spec = targets_spec({"by": ["topic", "sub"], "kept_rows": 30}, rows=100)
    strata_ = Strata.of(spec)
    plan = make_plan(spec)
    assert plan.total_rows == 100 and plan.rounds_done == 1
    first = per_stratum(spec, strata_, np.arange(100, dtype=np.int64))
    further = next_round(spec, plan, strata_, Standing(first, np.minimum(first, strata_.targets)))
    assert further is not None
    assert further.rounds[0].indexes.min() >= 100
    assert further.rounds_done == 2


def test_no_round_when_every_stratum_is_met() -> None:
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "kept_rows": 30})
    generated = per_stratum(spec, strata_, round_indexes(plan))
    assert next_round(spec, plan, strata_, Standing(generated, strata_.targets.copy())) is None
    assert next_round(spec, plan, strata_, Standing(generated, strata_.targets + 3)) is None


@pytest.mark.parametrize("max_rounds", [1, 2, 3])
def test_no_round_after_max_rounds(max_rounds: int) -> None:
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "kept_rows": 30, "max_rounds": max_rounds})
    for _ in range(max_rounds - 1):
        further = next_round(spec, plan, strata_, short_standing(spec, strata_, plan, short=3, kept=1))
        assert further is not None
        plan = further
    assert plan.rounds_done == max_rounds
    assert next_round(spec, plan, strata_, short_standing(spec, strata_, plan, short=3, kept=1)) is None


def test_no_round_when_max_rows_is_spent() -> None:
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "kept_rows": 30, "max_rows": 120})
    assert plan.rows == 120
    assert next_round(spec, plan, strata_, short_standing(spec, strata_, plan, short=0, kept=1)) is None


def test_a_further_round_never_takes_the_rows_beyond_max_rows() -> None:
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "kept_rows": 30, "max_rows": 130})
    further = next_round(spec, plan, strata_, short_standing(spec, strata_, plan, short=0, kept=1))
    assert further is not None and 0 < len(round_indexes(further)) <= 10 and further.rows <= 130


def test_the_default_row_budget_is_four_times_the_targeted_rows() -> None:
    """4 strata x 30 kept rows: rounds for a stratum that never keeps a row stop at 4 x 120 rows."""
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "kept_rows": 30, "max_rounds": 100})
    while (further := next_round(spec, plan, strata_, short_standing(spec, strata_, plan, short=0, kept=0))):
        plan = further
    assert plan.rows == 4 * 120 and plan.rounds_done < 100


# --- why a stratum ended short ----------------------------------------------------------------------

def test_a_met_stratum_has_no_reason_to_be_short() -> None:
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "kept_rows": 30})
    standing = short_standing(spec, strata_, plan, short=0, kept=5)
    assert why_short(standing, 1, 1, plan, spec, strata_) is None


def test_a_stratum_the_gates_reject_almost_always_says_so() -> None:
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "kept_rows": 30})
    reason = why_short(short_standing(spec, strata_, plan, short=0, kept=0), 0, 1, plan, spec, strata_)
    assert reason is not None and "reject" in reason


def test_a_stratum_short_after_the_last_round_names_max_rounds() -> None:
    spec, strata_, plan = first_round({"by": ["topic", "sub"], "kept_rows": 30, "max_rounds": 1})
    reason = why_short(short_standing(spec, strata_, plan, short=0, kept=20), 0, 1, plan, spec, strata_)
    assert reason is not None and "max_rounds" in reason


# --- 5. rows over target -----------------------------------------------------------------------------

def planted_kept(seed: int, shards: int = 4, rows: int = 60, n_strata: int = 4) -> KeptStrata:
    """Shards of rows with random strata, distinct random order keys and a random dedup verdict."""
    rng = np.random.default_rng(seed)
    keys = rng.permutation(shards * rows * 3)[: shards * rows].astype(np.int64) * 7 + 1
    return KeptStrata(ids=[rng.integers(0, n_strata, rows).astype(np.int64) for _ in range(shards)],
                      keys=[keys[i * rows:(i + 1) * rows] for i in range(shards)],
                      kept=[rng.random(rows) < 0.7 for _ in range(shards)])


def over_target_truth(kept: KeptStrata, targets: list[int]) -> set[tuple[int, int]]:
    """(shard, row) of each kept row past its stratum's first `target` kept rows by order key."""
    rows = [(int(k), int(s), shard, r) for shard, (ids, keys, mask) in enumerate(zip(kept.ids, kept.keys, kept.kept,
                                                                                      strict=True))
            for r, (s, k, m) in enumerate(zip(ids.tolist(), keys.tolist(), mask.tolist(), strict=True)) if m]
    over: set[tuple[int, int]] = set()
    for stratum, target in enumerate(targets):
        mine = sorted(row for row in rows if row[1] == stratum)
        over |= {(shard, r) for _, _, shard, r in mine[target:]}
    return over


def marked(masks: list[np.ndarray]) -> set[tuple[int, int]]:
    return {(shard, int(r)) for shard, mask in enumerate(masks) for r in np.flatnonzero(mask)}


@pytest.mark.parametrize("seed", range(5))
def test_over_target_rows_are_each_strata_kept_rows_beyond_its_first_target_by_order_key(seed: int) -> None:
    kept = planted_kept(seed)
    targets = [5, 30, 0, 1000]
    masks = kept.over_target(np.array(targets, dtype=np.int64))
    assert [len(m) for m in masks] == [len(i) for i in kept.ids]
    assert marked(masks) == over_target_truth(kept, targets)


def test_a_row_dedup_dropped_is_never_over_target() -> None:
    kept = planted_kept(11)
    masks = kept.over_target(np.zeros(4, dtype=np.int64))  # every kept row is over a target of 0
    for mask, dedup_kept in zip(masks, kept.kept, strict=True):
        assert not (mask & ~dedup_kept).any()
        assert (mask == dedup_kept).all()


def test_a_stratum_at_or_below_its_target_has_no_row_over_target() -> None:
    kept = planted_kept(3)
    per_stratum_kept = kept.counts(4)
    assert per_stratum_kept.tolist() == [sum(int(((i == s) & k).sum()) for i, k in zip(kept.ids, kept.kept,
                                                                                        strict=True))
                                         for s in range(4)]
    targets = per_stratum_kept.copy()
    targets[1] += 5  # stratum 0 at, 1 below, 2 and 3 at its target
    assert marked(kept.over_target(targets)) == set()
    targets[2] -= 1  # now one row of stratum 2 is over: its last by order key
    over = marked(kept.over_target(targets))
    assert over == over_target_truth(kept, targets.tolist()) and len(over) == 1


def test_order_keys_order_rows_by_row_index_then_sample_index() -> None:
    rows = [(12, 1), (3, 0), (12, 0), (999_999_999, 2), (0, 3), (3, 1), (1 << 31, 0)]
    table = pa.table({"row_id": [f"0123abcdef-{i:010d}" for i, _ in rows], "sample_index": [s for _, s in rows]})
    keys = order_keys(table).tolist()
    assert len(set(keys)) == len(rows)
    assert [rows[i] for i in sorted(range(len(rows)), key=lambda i: keys[i])] == sorted(rows)


# --- 6. quotas ----------------------------------------------------------------------------------------

def test_a_short_stratum_asks_at_least_its_missing_rows_over_its_acceptance() -> None:
    """Kept 40 of 100 (acceptance 0.4), 60 missing: at least 60 / 0.4 = 150 rows."""
    out = quotas(np.array([60]), np.array([40]), np.array([100]), samples=1, left=10**9)
    assert out[0] >= 150


def test_with_n_samples_a_short_stratum_asks_its_missing_samples_over_acceptance_and_n() -> None:
    """Kept 80 of 100 rows x 2 samples (acceptance 0.4), 60 missing: at least 60 / (0.4 x 2) = 75 rows."""
    out = quotas(np.array([60]), np.array([80]), np.array([100]), samples=2, left=10**9)
    assert out[0] >= 75


def test_a_met_stratum_asks_no_rows() -> None:
    out = quotas(np.array([0, 60, 0]), np.array([500, 40, 7]), np.array([600, 100, 7]), samples=1, left=10**9)
    assert out[0] == 0 and out[2] == 0 and out[1] >= 150


def test_a_stratum_never_generated_asks_exactly_its_missing_rows() -> None:
    out = quotas(np.array([60, 7]), np.array([0, 0]), np.array([0, 0]), samples=1, left=10**9)
    assert out.tolist() == [60, 7]


def test_the_quotas_are_scaled_down_to_the_rows_left() -> None:
    missing, kept, generated = np.array([60, 300, 0, 20]), np.array([40, 100, 9, 1]), np.array([100, 400, 9, 50])
    unscaled = quotas(missing, kept, generated, samples=1, left=10**9)
    total = int(unscaled.sum())
    for left in (total, total - 1, total // 3, 17, 1):
        out = quotas(missing, kept, generated, samples=1, left=left)
        assert out.sum() <= left
        assert out.tolist() == [math.floor(F(q * left, total)) for q in unscaled.tolist()], left
    assert quotas(missing, kept, generated, samples=1, left=total).tolist() == unscaled.tolist()
