"""Bias drift: did the gates remove the rows of some seed values (persona, topic, ...) more than others?

Kept rows are a subset of the planned rows, not a fresh sample, so the question is whether dropping
a row depended on its seed value: each value's loss rate (dropped / planned) against the others'.
A goodness-of-fit test of kept shares against planned shares answers it badly: its statistic shrinks
with the dropped fraction, and with many values one value's loss is diluted over all the degrees of
freedom.

Per value: Fisher's exact test of its dropped count against the other values' (the 2x2 table of
kept and dropped rows, the value vs the rest), two-sided by doubling the smaller tail, Bonferroni-
corrected over every value tested in the job. A value is flagged when that corrected p-value is
below `alpha` and its loss rate differs from the rest's by more than `margin` (absolute). The most
significant flagged value is then set aside and the others are tested again among themselves, so a
value that lost nothing is not flagged merely because another value lost much (with three values,
one heavy loser makes the other two look lucky). When two values are left, their one comparison
flags both or neither. Under independent drops the chance that a job gets any flag is at most
`alpha`. Per variable the 2 x k chi-square test of independence of kept/dropped and value is
reported too.

A value with more kept rows than planned (one never planned, say) is always flagged and not tested.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats


def _scalar(value: Any) -> Any:
    """A JSON scalar for the value (numpy scalars become Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def _hypotheses(values: int) -> int:
    """Comparisons a variable of this many values adds to the job's family: two values make one."""
    return values if values > 2 else values - 1 if values == 2 else 0


def value_vs_rest(planned: np.ndarray, dropped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(two-sided Fisher exact p, the rest's loss rate) of each value's dropped count against the others'.

    Given the table's margins a value's dropped count is hypergeometric under independence; its
    p-value is twice the smaller tail, at most 1. With one value, or no drops, or nothing kept, every
    p is 1 (nothing can differ); the rest's loss rate is NaN where there is no rest.
    """
    total, lost = int(planned.sum()), int(dropped.sum())
    rest = planned.sum() - planned
    with np.errstate(divide="ignore", invalid="ignore"):
        rest_loss = (lost - dropped) / rest
    if len(planned) < 2 or lost == 0 or lost == total:
        return np.ones(len(planned)), rest_loss
    lower = stats.hypergeom.cdf(dropped, total, lost, planned)
    upper = stats.hypergeom.sf(dropped - 1, total, lost, planned)
    return np.minimum(1.0, 2.0 * np.minimum(lower, upper)), rest_loss


def independence_test(planned: np.ndarray, dropped: np.ndarray) -> tuple[float, float]:
    """(chi2, p) of the 2 x k table of kept and dropped rows by value; (0, 1) when nothing can differ."""
    lost = int(dropped.sum())
    if len(planned) < 2 or lost == 0 or lost == int(planned.sum()):
        return 0.0, 1.0
    result = stats.chi2_contingency(np.vstack([planned - dropped, dropped]), correction=False)
    return float(result.statistic), float(result.pvalue)


@dataclass
class Verdicts:
    """The outcome of testing one variable's values: per value, flagged, corrected p and the rest's loss rate."""

    flagged: np.ndarray
    p_value: np.ndarray
    rest_loss: np.ndarray


def flag_values(planned: np.ndarray, dropped: np.ndarray, tests: int, margin: float, alpha: float) -> Verdicts:
    """Flag values one at a time, the most significant first, re-testing the rest without the flagged ones.

    p-values are Bonferroni-corrected for `tests` comparisons. A value's p and rest loss rate are
    those of the comparison that flagged it, or of the last one when it was not flagged.
    """
    n = len(planned)
    out = Verdicts(np.zeros(n, dtype=bool), np.ones(n), np.full(n, np.nan))
    loss = dropped / planned
    active = np.arange(n)
    while len(active) >= 2:
        p, rest_loss = value_vs_rest(planned[active], dropped[active])
        p = np.minimum(1.0, p * tests)
        out.p_value[active], out.rest_loss[active] = p, rest_loss
        candidate = (p < alpha) & (np.abs(loss[active] - rest_loss) > margin)
        if not candidate.any():
            break
        if len(active) == 2:  # one comparison: neither value is the odd one out
            out.flagged[active] = True
            break
        pick = active[np.flatnonzero(candidate)[np.argmin(p[candidate])]]
        out.flagged[pick] = True
        active = active[active != pick]
    return out


def _value_row(value: Any, planned: int, kept: int, planned_total: int, kept_total: int) -> dict[str, Any]:
    planned_share, kept_share = _share(planned, planned_total), _share(kept, kept_total)
    shift = kept_share / planned_share - 1.0 if planned_share and kept_share is not None else None
    return {"value": _scalar(value), "planned": planned, "kept": kept, "planned_share": planned_share,
            "kept_share": kept_share, "shift": shift, "loss_rate": (planned - kept) / planned if planned else None,
            "rest_loss_rate": None, "p_value": None, "flagged": kept > planned}


def _nan_to_none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _counts(planned: Counter[Any], kept: Counter[Any]) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """(values, planned, dropped) of the values that are tested: planned, with no more kept rows than planned."""
    values = [v for v, n in planned.items() if n > 0 and kept.get(v, 0) <= n]
    p_counts = np.array([planned[v] for v in values], dtype=np.int64)
    return values, p_counts, p_counts - np.array([kept.get(v, 0) for v in values], dtype=np.int64)


def _loss_rate(planned: np.ndarray, dropped: np.ndarray) -> float | None:
    total = int(planned.sum())
    return int(dropped.sum()) / total if total else None


def variable_drift(planned: Counter[Any], kept: Counter[Any], tests: int, margin: float,
                   alpha: float) -> dict[str, Any]:
    """Loss rates, tests and flags of one seed variable; `tests` is the job's Bonferroni count."""
    planned, kept = Counter(planned), Counter(kept)
    values = [v for v in planned if planned[v] > 0] + [v for v in kept if planned[v] <= 0 and kept[v] > 0]
    planned_total, kept_total = sum(planned[v] for v in values), sum(kept[v] for v in values)
    rows = {v: _value_row(v, planned[v], kept[v], planned_total, kept_total) for v in values}
    tested, p_counts, d_counts = _counts(planned, kept)
    chi2, p_value = independence_test(p_counts, d_counts)
    verdicts = flag_values(p_counts, d_counts, tests, margin, alpha)
    for i, v in enumerate(tested):
        rows[v].update(flagged=bool(verdicts.flagged[i]), p_value=float(verdicts.p_value[i]),
                       rest_loss_rate=_nan_to_none(verdicts.rest_loss[i]))
    return {"chi2": chi2, "p_value": p_value, "loss_rate": _loss_rate(p_counts, d_counts),
            "flagged": any(r["flagged"] for r in rows.values()), "values": list(rows.values())}


def _max_gap(rows: list[dict[str, Any]]) -> float:
    gaps = [abs(r["loss_rate"] - r["rest_loss_rate"]) for r in rows if r["rest_loss_rate"] is not None]
    return max(gaps, default=0.0)


def bias_drift(planned: dict[str, Counter[Any]], kept: dict[str, Counter[Any]], margin: float,
               alpha: float) -> dict[str, Any]:
    """Loss rate by seed value of every seed variable, and the values the gates removed unevenly (JSON-ready).

    A value is flagged when its loss rate differs from the rest's by more than `margin` and Fisher's
    exact test, Bonferroni-corrected over the job's values, rejects at `alpha` (see the module
    docstring); a variable is flagged when one of its values is. The job's loss rate pools every
    variable's tested counts (each variable partitions the same rows).
    """
    names = list(planned) + [name for name in kept if name not in planned]
    empty: Counter[Any] = Counter()
    counts = [_counts(planned.get(name, empty), kept.get(name, empty)) for name in names]
    tests = sum(_hypotheses(len(values)) for values, _, _ in counts)
    variables = {name: variable_drift(planned.get(name, empty), kept.get(name, empty), max(tests, 1), margin, alpha)
                 for name in names}
    rows = [r for v in variables.values() for r in v["values"]]
    shifts = [abs(r["shift"]) for r in rows if r["shift"] is not None]
    pooled = [np.concatenate([c[i] for c in counts]) if counts else np.zeros(0, np.int64) for i in (1, 2)]
    return {"variables": variables, "flagged_values": sum(r["flagged"] for r in rows),
            "flagged_variables": [name for name, v in variables.items() if v["flagged"]],
            "loss_rate": _loss_rate(*pooled), "max_loss_gap": _max_gap(rows),
            "max_shift": max(shifts, default=0.0), "tests": tests, "margin": margin, "alpha": alpha}
