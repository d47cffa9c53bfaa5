"""Bias drift: did the gates change the mix of seed values (persona, topic, ...) between plan and output?

A filter or judge that silently removes one group is how a synthetic dataset amplifies bias. For
each seed variable we compare each value's share among kept rows with its share among planned rows
(a chi-square goodness-of-fit test) and flag the values whose share moved by more than a relative
threshold, when the move is also significant.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from scipy import stats


def _scalar(value: Any) -> Any:
    """A JSON scalar for the value (numpy scalars become Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def _chi_square(observed: list[int], planned: list[int]) -> tuple[float, float]:
    """(chi2, p) of the observed counts against the planned shares; (0, 1) when there is nothing to test."""
    if len(planned) < 2 or sum(observed) == 0:
        return 0.0, 1.0
    expected = np.asarray(planned, dtype=np.float64) / sum(planned) * sum(observed)
    result = stats.chisquare(np.asarray(observed, dtype=np.float64), expected)
    return float(result.statistic), float(result.pvalue)


def _value_row(value: Any, planned: int, kept: int, planned_total: int, kept_total: int) -> dict[str, Any]:
    planned_share, kept_share = _share(planned, planned_total), _share(kept, kept_total)
    shift = None
    if planned_share and kept_share is not None:
        shift = kept_share / planned_share - 1.0
    return {"value": _scalar(value), "planned": planned, "kept": kept, "planned_share": planned_share,
            "kept_share": kept_share, "shift": shift}


def _is_flagged(row: dict[str, Any], p_value: float, threshold: float, alpha: float) -> bool:
    if row["planned"] == 0:
        return row["kept"] > 0  # kept rows of a value that was never planned
    return row["shift"] is not None and abs(row["shift"]) > threshold and p_value < alpha


def variable_drift(planned: Counter[Any], kept: Counter[Any], threshold: float, alpha: float) -> dict[str, Any]:
    """Shares, chi-square test and flags of one seed variable.

    The test covers the planned values; a kept value that was never planned has shift None and is
    always flagged. A value's shift is None when there are no kept rows (its share is undefined).
    """
    planned, kept = Counter(planned), Counter(kept)
    values = [v for v in planned if planned[v] > 0] + [v for v in kept if planned[v] == 0 and kept[v] > 0]
    testable = [v for v in values if planned[v] > 0]
    chi2, p_value = _chi_square([kept[v] for v in testable], [planned[v] for v in testable])
    planned_total, kept_total = sum(planned[v] for v in values), sum(kept[v] for v in values)
    rows = [_value_row(v, planned[v], kept[v], planned_total, kept_total) for v in values]
    for row in rows:
        row["flagged"] = _is_flagged(row, p_value, threshold, alpha)
    return {"chi2": chi2, "p_value": p_value, "flagged": any(r["flagged"] for r in rows), "values": rows}


def bias_drift(planned: dict[str, Counter[Any]], kept: dict[str, Counter[Any]], threshold: float,
               alpha: float) -> dict[str, Any]:
    """Drift of every seed variable's value shares from planned to kept rows (JSON-ready).

    A value is flagged when |kept_share / planned_share - 1| > `threshold` and its variable's
    chi-square p-value < `alpha`; a variable is flagged when one of its values is.
    """
    names = list(planned) + [name for name in kept if name not in planned]
    variables = {name: variable_drift(planned.get(name, Counter()), kept.get(name, Counter()), threshold, alpha)
                 for name in names}
    rows = [r for v in variables.values() for r in v["values"]]
    shifts = [abs(r["shift"]) for r in rows if r["shift"] is not None]
    return {"variables": variables, "flagged_values": sum(r["flagged"] for r in rows),
            "max_shift": max(shifts, default=0.0),
            "flagged_variables": [name for name, v in variables.items() if v["flagged"]]}
