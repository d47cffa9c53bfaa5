"""Bias drift: a filter that removes one group is flagged, an unbiased one is not."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

from orchestrator.drift import bias_drift

PERSONAS = ["student", "engineer", "retiree"]
TOPICS = ["health", "money", "travel", "cooking"]
REPEATS = 50
THRESHOLD, ALPHA = 0.2, 0.01

Row = tuple[int, str, str, int]  # (index, persona, topic, repeat)


def seed_product() -> list[Row]:
    """3 personas x 4 topics x 50 repeats = 600 planned rows."""
    combos = itertools.product(PERSONAS, TOPICS, range(REPEATS))
    return [(i, persona, topic, r) for i, (persona, topic, r) in enumerate(combos)]


def counts(rows: list[Row]) -> dict[str, Counter]:
    return {"persona": Counter(r[1] for r in rows), "topic": Counter(r[2] for r in rows)}


def drift_after(keep: Callable[[Row], bool]) -> dict:
    planned = seed_product()
    return bias_drift(counts(planned), counts([r for r in planned if keep(r)]), THRESHOLD, ALPHA)


def values_of(result: dict, variable: str) -> dict:
    return {v["value"]: v for v in result["variables"][variable]["values"]}


def test_planned_shares_come_from_the_seed_product() -> None:
    result = drift_after(lambda r: True)
    assert values_of(result, "persona")["student"]["planned"] == 200  # 4 topics x 50
    assert values_of(result, "topic")["money"]["planned_share"] == 0.25
    assert result["flagged_values"] == 0 and result["max_shift"] == 0.0


def test_filter_that_drops_most_of_one_persona_is_flagged() -> None:
    # keeps 1 retiree row in 5 (10 per topic), every other row: 40 + 200 + 200 = 440 kept
    result = drift_after(lambda r: r[1] != "retiree" or r[3] % 5 == 0)
    retiree = values_of(result, "persona")["retiree"]
    assert (retiree["planned"], retiree["kept"]) == (200, 40)
    assert retiree["kept_share"] == pytest.approx(40 / 440)
    assert retiree["shift"] == pytest.approx((40 / 440) / (1 / 3) - 1)  # -0.727
    assert retiree["flagged"] and result["max_shift"] == pytest.approx(abs(retiree["shift"]))
    # the others now fill 200 of 440 rows each instead of a third: +36%, over-represented, flagged too
    assert values_of(result, "persona")["student"]["shift"] == pytest.approx((200 / 440) / (1 / 3) - 1)
    assert result["flagged_values"] == 3
    assert result["variables"]["persona"]["p_value"] < 1e-20
    # the drop was even across topics, so their shares (110 of 440 each) did not move
    assert result["flagged_variables"] == ["persona"]
    assert not result["variables"]["topic"]["flagged"]


def test_filter_that_drops_the_same_share_at_random_is_not_flagged() -> None:
    dropped = set(np.random.default_rng(7).choice(600, size=160, replace=False).tolist())  # as many as the biased one
    result = drift_after(lambda r: r[0] not in dropped)
    assert sum(v["kept"] for v in result["variables"]["persona"]["values"]) == 440
    assert result["flagged_variables"] == [] and result["flagged_values"] == 0
    assert all(v["p_value"] > ALPHA for v in result["variables"].values())


def test_chi_square_matches_hand_computation_for_two_values() -> None:
    result = bias_drift({"v": Counter(a=50, b=50)}, {"v": Counter(a=30, b=10)}, THRESHOLD, ALPHA)
    variable = result["variables"]["v"]
    # expected 20 and 20: (30-20)^2/20 + (10-20)^2/20 = 10; 1 dof: p = erfc(sqrt(10/2)) = 0.001565
    assert variable["chi2"] == pytest.approx(10.0)
    assert variable["p_value"] == pytest.approx(math.erfc(math.sqrt(5.0)))
    # shares 0.75 and 0.25 against 0.5: shifts +0.5 and -0.5
    assert [v["shift"] for v in variable["values"]] == pytest.approx([0.5, -0.5])
    assert variable["flagged"] and result["flagged_values"] == 2


def test_chi_square_matches_hand_computation_for_three_values() -> None:
    planned = {"v": Counter(x=100, y=100, z=200)}
    result = bias_drift(planned, {"v": Counter(x=10, y=30, z=40)}, THRESHOLD, ALPHA)
    variable = result["variables"]["v"]
    # 80 kept, expected 20, 20, 40: 100/20 + 100/20 + 0 = 10; 2 dof: p = exp(-10/2)
    assert variable["chi2"] == pytest.approx(10.0)
    assert variable["p_value"] == pytest.approx(math.exp(-5.0))
    assert [v["flagged"] for v in variable["values"]] == [True, True, False]  # shifts -0.5, +0.5, 0


def test_large_shift_without_significance_is_not_flagged() -> None:
    # 3 of 4 kept rows are "a" (+50%) but 4 rows prove nothing: chi2 = 1, p = 0.32
    result = bias_drift({"v": Counter(a=50, b=50)}, {"v": Counter(a=3, b=1)}, THRESHOLD, ALPHA)
    assert result["variables"]["v"]["p_value"] == pytest.approx(math.erfc(math.sqrt(0.5)))
    assert result["flagged_values"] == 0 and result["max_shift"] == pytest.approx(0.5)


def test_single_value_variable_cannot_drift() -> None:
    result = bias_drift({"lang": Counter(en=100)}, {"lang": Counter(en=7)}, THRESHOLD, ALPHA)
    variable = result["variables"]["lang"]
    assert (variable["chi2"], variable["p_value"], variable["flagged"]) == (0.0, 1.0, False)
    assert variable["values"][0]["shift"] == 0.0


def test_no_kept_rows_leaves_shares_undefined_and_nothing_flagged() -> None:
    result = bias_drift({"v": Counter(a=5, b=5)}, {}, THRESHOLD, ALPHA)
    variable = result["variables"]["v"]
    assert (variable["chi2"], variable["p_value"]) == (0.0, 1.0)
    assert all(v["kept"] == 0 and v["kept_share"] is None and v["shift"] is None for v in variable["values"])
    assert result["flagged_values"] == 0 and result["max_shift"] == 0.0


def test_kept_value_that_was_never_planned_is_flagged() -> None:
    result = bias_drift({"v": Counter(a=50, b=50)}, {"v": Counter(a=20, b=20, c=2)}, THRESHOLD, ALPHA)
    c = values_of(result, "v")["c"]
    assert (c["planned"], c["planned_share"], c["shift"], c["flagged"]) == (0, 0.0, None, True)
    assert result["variables"]["v"]["chi2"] == 0.0  # a and b kept in their planned proportion
    assert result["flagged_variables"] == ["v"]


def test_planned_value_with_zero_count_is_ignored() -> None:
    result = bias_drift({"v": Counter(a=50, b=50, z=0)}, {"v": Counter(a=25, b=25)}, THRESHOLD, ALPHA)
    assert list(values_of(result, "v")) == ["a", "b"]


def test_scalar_values_stay_json_serialisable() -> None:
    planned = {"level": Counter({np.int64(1): 10, np.int64(2): 10}), "flag": Counter({True: 5, False: 5}),
               "temp": Counter({0.5: 3, 1.5: 3}), "opt": Counter({None: 4, "x": 4})}
    kept = {"level": Counter({np.int64(1): 5, np.int64(2): 5}), "flag": Counter({True: 5}),
            "temp": Counter({0.5: 3}), "opt": Counter({None: 2})}
    result = bias_drift(planned, kept, THRESHOLD, ALPHA)
    assert json.loads(json.dumps(result))["variables"]["level"]["values"][0]["value"] == 1
    assert [v["value"] for v in result["variables"]["flag"]["values"]] == [True, False]
    assert type(result["variables"]["level"]["values"][0]["value"]) is int
