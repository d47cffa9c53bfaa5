"""Bias drift: a gate that removes one group's rows more than others' is flagged; independent drops are not."""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from orchestrator import defaults
from orchestrator.finalize.drift import bias_drift, value_vs_rest
from orchestrator.spec.quality import Quality

PERSONAS = ["student", "engineer", "retiree"]
TOPICS = ["health", "money", "travel", "cooking"]
REPEATS = 50
MARGIN, ALPHA = 0.01, 0.01

Row = tuple[int, str, str, int]  # (index, persona, topic, repeat)


def seed_product() -> list[Row]:
    """3 personas x 4 topics x 50 repeats = 600 planned rows."""
    combos = itertools.product(PERSONAS, TOPICS, range(REPEATS))
    return [(i, persona, topic, r) for i, (persona, topic, r) in enumerate(combos)]


def counts(rows: list[Row]) -> dict[str, Counter]:
    return {"persona": Counter(r[1] for r in rows), "topic": Counter(r[2] for r in rows)}


def drift_after(keep: Callable[[Row], bool]) -> dict:
    planned = seed_product()
    return bias_drift(counts(planned), counts([r for r in planned if keep(r)]), MARGIN, ALPHA)


def values_of(result: dict, variable: str) -> dict:
    return {v["value"]: v for v in result["variables"][variable]["values"]}


def one_variable(planned: list[int], dropped: np.ndarray | list[int], margin: float = MARGIN) -> dict:
    """bias_drift of one variable whose value i had planned[i] rows and lost dropped[i] of them."""
    kept = {i: int(p - d) for i, (p, d) in enumerate(zip(planned, dropped, strict=True))}
    return bias_drift({"v": Counter(dict(enumerate(planned)))}, {"v": Counter(kept)}, margin, ALPHA)


def flagged_indices(result: dict) -> list[int]:
    return [v["value"] for v in result["variables"]["v"]["values"] if v["flagged"]]


def simulate_flags(rng: np.random.Generator, values: int, rows: int, loss: float, extra: float,
                   trials: int) -> tuple[int, int]:
    """(trials where value 0 is flagged, trials where another value is): every row of value 0 is dropped
    with probability loss + extra, every other row with probability loss, independently."""
    probabilities = np.full(values, loss)
    probabilities[0] += extra
    hit = other = 0
    for _ in range(trials):
        flags = flagged_indices(one_variable([rows] * values, rng.binomial(rows, probabilities)))
        hit += 0 in flags
        other += any(i != 0 for i in flags)
    return hit, other


# what the report shows

def test_planned_counts_come_from_the_seed_product() -> None:
    result = drift_after(lambda r: True)
    assert values_of(result, "persona")["student"]["planned"] == 200  # 4 topics x 50
    assert values_of(result, "topic")["money"]["planned_share"] == 0.25
    assert result["loss_rate"] == 0.0 and result["flagged_values"] == 0 and result["max_shift"] == 0.0


def test_loss_rates_of_values_variables_and_job() -> None:
    # keeps 1 retiree row in 5 (10 per topic), every other row: 40 + 200 + 200 = 440 of 600 kept
    result = drift_after(lambda r: r[1] != "retiree" or r[3] % 5 == 0)
    retiree = values_of(result, "persona")["retiree"]
    assert (retiree["planned"], retiree["kept"], retiree["loss_rate"]) == (200, 40, 0.8)
    assert retiree["rest_loss_rate"] == 0.0  # students and engineers lost nothing
    assert result["variables"]["persona"]["loss_rate"] == pytest.approx(160 / 600)
    assert result["variables"]["topic"]["loss_rate"] == pytest.approx(160 / 600)
    assert result["loss_rate"] == pytest.approx(160 / 600)  # both variables count the same 600 rows
    assert retiree["kept_share"] == pytest.approx(40 / 440)
    assert retiree["shift"] == pytest.approx((40 / 440) / (1 / 3) - 1)  # -0.727, descriptive only
    assert result["max_loss_gap"] == pytest.approx(0.8)
    assert (result["margin"], result["alpha"]) == (MARGIN, ALPHA)


def test_result_is_json_with_the_documented_keys() -> None:
    result = drift_after(lambda r: r[0] % 3 != 0)
    assert set(result) == {"variables", "flagged_values", "flagged_variables", "loss_rate", "max_loss_gap",
                           "max_shift", "tests", "margin", "alpha"}
    assert set(result["variables"]["persona"]) == {"chi2", "p_value", "loss_rate", "flagged", "values"}
    assert set(result["variables"]["persona"]["values"][0]) == {
        "value", "planned", "kept", "planned_share", "kept_share", "shift", "loss_rate", "rest_loss_rate",
        "p_value", "flagged"}
    json.dumps(result)


# the decisions

def test_filter_that_drops_most_of_one_persona_flags_that_persona_only() -> None:
    result = drift_after(lambda r: r[1] != "retiree" or r[3] % 5 == 0)
    assert [v for v, row in values_of(result, "persona").items() if row["flagged"]] == ["retiree"]
    assert values_of(result, "persona")["retiree"]["p_value"] < 1e-20
    # the drop was even across topics (each lost 40 of 150)
    assert result["flagged_variables"] == ["persona"] and result["flagged_values"] == 1
    assert all(v["loss_rate"] == pytest.approx(40 / 150) for v in result["variables"]["topic"]["values"])


def test_filter_that_drops_the_same_share_at_random_is_not_flagged() -> None:
    dropped = set(np.random.default_rng(7).choice(600, size=160, replace=False).tolist())  # as many as above
    result = drift_after(lambda r: r[0] not in dropped)
    assert sum(v["kept"] for v in result["variables"]["persona"]["values"]) == 440
    assert result["flagged_variables"] == [] and result["flagged_values"] == 0


def test_one_heavy_loser_among_three_does_not_make_the_others_look_lucky() -> None:
    # teacher and nurse keep all 60 rows, pirate loses 30: against the rest (30 of 120 lost) each of
    # the two lost significantly less, but set pirate aside and they agree with each other.
    result = bias_drift({"persona": Counter(teacher=60, pirate=60, nurse=60)},
                        {"persona": Counter(teacher=60, pirate=30, nurse=60)}, MARGIN, ALPHA)
    flagged = [v["value"] for v in result["variables"]["persona"]["values"] if v["flagged"]]
    assert flagged == ["pirate"]
    teacher = values_of(result, "persona")["teacher"]
    assert (teacher["rest_loss_rate"], teacher["p_value"]) == (0.0, 1.0)  # compared with nurse alone


def test_a_protected_value_is_the_one_flagged() -> None:
    # b and c lose a quarter, a loses nothing: a is the odd one out
    result = one_variable([400, 400, 400], [0, 100, 100])
    assert flagged_indices(result) == [0]


def test_two_values_are_one_comparison_flagging_both() -> None:
    result = one_variable([100, 100], [50, 10])
    a, b = result["variables"]["v"]["values"]
    assert a["flagged"] and b["flagged"] and a["p_value"] == pytest.approx(b["p_value"])
    assert (a["rest_loss_rate"], b["rest_loss_rate"]) == (0.1, 0.5)
    assert result["tests"] == 1


def test_goodness_of_fit_is_deflated_by_the_subset_and_the_independence_test_is_not() -> None:
    # Null: 4 values of 1,000 rows, every row dropped with probability 0.1. Kept counts against the
    # planned shares (chisquare, the old test) average (k - 1) x 0.1 = 0.3, not its nominal 3 degrees
    # of freedom; the 2 x 4 kept/dropped table averages 3, as a chi-square with 3 dof should.
    rng = np.random.default_rng(11)
    goodness, independence = [], []
    for _ in range(400):
        dropped = rng.binomial(1000, 0.1, size=4)
        kept = 1000 - dropped
        goodness.append(stats.chisquare(kept, np.full(4, kept.sum() / 4)).statistic)
        independence.append(one_variable([1000] * 4, dropped)["variables"]["v"]["chi2"])
    assert np.mean(goodness) == pytest.approx(0.3, abs=0.06)
    assert np.mean(independence) == pytest.approx(3.0, abs=0.35)


def test_one_of_sixty_values_losing_30pct_is_flagged_where_goodness_of_fit_sees_nothing() -> None:
    planned, dropped = [100] * 60, [30] + [0] * 59
    kept = np.array(planned) - np.array(dropped)
    assert stats.chisquare(kept, np.full(60, kept.sum() / 60)).pvalue > 0.99  # the old test: no drift
    result = one_variable(planned, dropped)
    assert flagged_indices(result) == [0]
    assert result["variables"]["v"]["values"][0]["loss_rate"] == 0.3


@pytest.mark.parametrize(("rows", "loss"), [(5000, 0.1), (200, 0.3)])
def test_independent_drops_flag_at_most_alpha_of_jobs(rows: int, loss: float) -> None:
    # Null: 60 values, every row dropped with the same probability. Neither margin binds here (a
    # significant gap is > 0.016 at 5,000 rows a value), so significance decides: the share of jobs
    # with any flag must be within alpha, + 3 standard errors of 1,000 trials (0.019).
    rng = np.random.default_rng(rows)
    flagged = sum(bool(one_variable([rows] * 60, rng.binomial(rows, loss, size=60))["flagged_values"])
                  for _ in range(1000))
    assert flagged <= 19


def test_3pct_extra_loss_at_5000_rows_a_value_is_flagged() -> None:
    hit, other = simulate_flags(np.random.default_rng(22), values=60, rows=5000, loss=0.1, extra=0.03, trials=50)
    assert hit >= 49 and other <= 1


def test_significant_loss_below_the_margin_is_not_flagged() -> None:
    # 200,000 rows a value: 10.5% lost against 10% is ~7 standard errors, but 0.005 < the 0.01 margin
    planned, dropped = [200_000] * 60, [21_000] + [20_000] * 59
    below = one_variable(planned, dropped)
    assert below["variables"]["v"]["values"][0]["p_value"] < 1e-6
    assert below["flagged_values"] == 0
    assert flagged_indices(one_variable(planned, dropped, margin=0.004)) == [0]


def test_large_loss_gap_without_significance_is_not_flagged() -> None:
    # 1 of 4 rows lost against 0 of 4: a 25% gap that 8 rows cannot show
    result = one_variable([4, 4], [1, 0])
    assert result["variables"]["v"]["values"][0]["p_value"] == 1.0
    assert result["flagged_values"] == 0 and result["max_loss_gap"] == 0.25


# the tests' arithmetic

def test_fisher_p_value_by_hand() -> None:
    # 5 + 5 planned, a keeps all, b loses all: given 5 dropped rows, a loses none with probability
    # C(5,0) C(5,5) / C(10,5) = 1/252; two-sided (doubled): 2/252. One comparison: no correction.
    result = one_variable([5, 5], [0, 5])
    assert [v["p_value"] for v in result["variables"]["v"]["values"]] == pytest.approx([2 / 252] * 2)
    assert result["flagged_values"] == 2


def test_fisher_p_values_equal_scipys_one_sided_tests_doubled() -> None:
    planned = np.array([120, 300, 80, 500])
    dropped = np.array([40, 60, 10, 110])
    p, rest = value_vs_rest(planned, dropped)
    for i in range(4):
        table = [[dropped[i], planned[i] - dropped[i]],
                 [dropped.sum() - dropped[i], (planned.sum() - planned[i]) - (dropped.sum() - dropped[i])]]
        one_sided = min(stats.fisher_exact(table, alternative=side).pvalue for side in ("less", "greater"))
        assert p[i] == pytest.approx(min(1.0, 2 * one_sided), rel=1e-9)
        assert rest[i] == pytest.approx((dropped.sum() - dropped[i]) / (planned.sum() - planned[i]))


def test_p_values_are_bonferroni_corrected_over_every_value_of_the_job() -> None:
    # v: one comparison (raw 2/252); w: 3 values, 3 comparisons -> the job tests 4 hypotheses
    planned = {"v": Counter(a=5, b=5), "w": Counter(x=10, y=10, z=10)}
    kept = {"v": Counter(a=5, b=0), "w": Counter(x=8, y=8, z=9)}
    result = bias_drift(planned, kept, MARGIN, ALPHA)
    assert result["tests"] == 4
    assert values_of(result, "v")["a"]["p_value"] == pytest.approx(4 * 2 / 252)
    assert result["flagged_variables"] == []  # 0.032 > alpha once corrected


def test_independence_chi_square_by_hand() -> None:
    # kept 30 and 10, dropped 20 and 40 of 50 each: expected kept 20, 20 and dropped 30, 30;
    # chi2 = 2 x 10^2/20 + 2 x 10^2/30 = 50/3; 1 dof: p = erfc(sqrt(chi2 / 2))
    variable = one_variable([50, 50], [20, 40])["variables"]["v"]
    assert variable["chi2"] == pytest.approx(50 / 3)
    assert variable["p_value"] == pytest.approx(math.erfc(math.sqrt(25 / 3)))


# edge cases

def test_single_value_variable_cannot_drift() -> None:
    result = bias_drift({"lang": Counter(en=100)}, {"lang": Counter(en=7)}, MARGIN, ALPHA)
    variable = result["variables"]["lang"]
    assert (variable["chi2"], variable["p_value"], variable["flagged"], result["tests"]) == (0.0, 1.0, False, 0)
    en = variable["values"][0]
    assert (en["loss_rate"], en["rest_loss_rate"], en["p_value"], en["shift"]) == (0.93, None, 1.0, 0.0)


def test_no_dropped_rows_leaves_nothing_to_test() -> None:
    result = one_variable([100, 200, 300], [0, 0, 0])
    variable = result["variables"]["v"]
    assert (variable["chi2"], variable["p_value"], variable["loss_rate"]) == (0.0, 1.0, 0.0)
    assert all(v["p_value"] == 1.0 and v["loss_rate"] == 0.0 for v in variable["values"])
    assert result["flagged_values"] == 0


def test_value_with_zero_kept_rows_is_tested_and_flagged() -> None:
    result = one_variable([100, 100, 100], [100, 10, 10])
    a = result["variables"]["v"]["values"][0]
    assert (a["kept"], a["kept_share"], a["loss_rate"], a["rest_loss_rate"]) == (0, 0.0, 1.0, 0.1)
    assert flagged_indices(result) == [0]


def test_no_kept_rows_leaves_shares_undefined_and_nothing_flagged() -> None:
    result = bias_drift({"v": Counter(a=5, b=5)}, {}, MARGIN, ALPHA)
    variable = result["variables"]["v"]
    assert (variable["chi2"], variable["p_value"], variable["loss_rate"]) == (0.0, 1.0, 1.0)
    assert all(v["kept"] == 0 and v["kept_share"] is None and v["shift"] is None for v in variable["values"])
    assert result["flagged_values"] == 0 and result["max_shift"] == 0.0


def test_kept_value_that_was_never_planned_is_flagged_untested() -> None:
    result = bias_drift({"v": Counter(a=50, b=50)}, {"v": Counter(a=20, b=20, c=2)}, MARGIN, ALPHA)
    c = values_of(result, "v")["c"]
    assert (c["planned"], c["planned_share"], c["loss_rate"], c["p_value"], c["flagged"]) == (0, 0.0, None, None, True)
    assert not values_of(result, "v")["a"]["flagged"]  # a and b lost alike
    assert result["flagged_variables"] == ["v"]


def test_value_with_more_kept_than_planned_rows_is_flagged_untested() -> None:
    result = bias_drift({"v": Counter(a=50, b=50, c=50)}, {"v": Counter(a=40, b=40, c=60)}, MARGIN, ALPHA)
    c = values_of(result, "v")["c"]
    assert (c["loss_rate"], c["p_value"], c["flagged"]) == (pytest.approx(-0.2), None, True)
    assert result["tests"] == 1 and not values_of(result, "v")["a"]["flagged"]  # a against b only


def test_planned_value_with_zero_count_is_ignored() -> None:
    result = bias_drift({"v": Counter(a=50, b=50, z=0)}, {"v": Counter(a=25, b=25)}, MARGIN, ALPHA)
    assert list(values_of(result, "v")) == ["a", "b"]


def test_no_seed_variables() -> None:
    result = bias_drift({}, {}, MARGIN, ALPHA)
    assert (result["variables"], result["loss_rate"], result["flagged_values"], result["tests"]) == ({}, None, 0, 0)


def test_scalar_values_stay_json_serialisable() -> None:
    planned = {"level": Counter({np.int64(1): 10, np.int64(2): 10}), "flag": Counter({True: 5, False: 5}),
               "temp": Counter({0.5: 3, 1.5: 3}), "opt": Counter({None: 4, "x": 4})}
    kept = {"level": Counter({np.int64(1): 5, np.int64(2): 5}), "flag": Counter({True: 5}),
            "temp": Counter({0.5: 3}), "opt": Counter({None: 2})}
    result = bias_drift(planned, kept, MARGIN, ALPHA)
    assert json.loads(json.dumps(result))["variables"]["level"]["values"][0]["value"] == 1
    assert [v["value"] for v in result["variables"]["flag"]["values"]] == [True, False]
    assert type(result["variables"]["level"]["values"][0]["value"]) is int


# the spec

def test_spec_margin_defaults_to_the_named_constant() -> None:
    assert (Quality().drift_margin, Quality().drift_alpha) == (defaults.DRIFT_MARGIN, defaults.DRIFT_ALPHA)
    assert Quality(drift_margin=0).drift_margin == 0.0  # significance alone


def test_replaced_drift_threshold_still_loads_and_says_it_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.spec.quality"):
        stored = Quality.model_validate({"drift_threshold": 0.2, "drift_alpha": 0.05})  # as every stored spec has it
        assert caplog.records == []
        custom = Quality.model_validate({"drift_threshold": 0.3})
    assert "drift_threshold" not in stored.model_dump() and stored.drift_alpha == 0.05
    assert custom.drift_margin == defaults.DRIFT_MARGIN
    assert "quality.drift_threshold is ignored" in caplog.text and "drift_margin" in caplog.text
