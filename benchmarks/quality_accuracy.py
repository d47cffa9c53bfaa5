"""Are the quality gates right? Measured on planted ground truth, printed as one JSON line.

Every set is built offline (prose from the Python standard library's docstrings, hand-written
refusals and helpful answers, simulated drops) and every answer is computed exactly, outside the
code under test: the true word-3-gram Jaccard of every candidate pair, the rows that were planted to
be dropped, the values planted to lose rows. Goals (issue: quality gates that are right):

- near-dup precision >= 0.99 and recall >= 0.97 at threshold 0.8; the Jaccard estimate's bias per
  true-J bin within 0.01; no false drop among 1,000 distinct short answers; recall 1.0 on exact
  variants (Unicode format characters, case, spacing, compatibility forms);
- the drift test's smallest detected extra loss at n = 5,000 per value <= 2% at every job loss rate
  where a test with its false-alarm rate can reach 2% at all, and within 0.2 points of that limit
  (`drift_min_detectable_any_test_*`, computed for an oracle z-test) at every job loss rate; its
  false-positive rate under independent drops <= 1%. (At a 10% job loss with 60 values the limit
  is 2.3%: no test with a 1% false-alarm rate catches 2 points in 9 trials of 10 there.)
- refusal recall >= 0.9 and helpful-answer false positives <= 0.05, on >= 50 of each;
- the dedup pass keeps >= 20,000 rows/s and <= 1 GB on 1,000,000 rows.

`--rows` sets the size of the dedup throughput run (default 1,000,000).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.accuracy import dedup, drift, filters  # noqa: E402 - after the path set-up above

GOALS: dict[str, tuple[str, float]] = {
    "near_precision": (">=", 0.99), "near_recall": (">=", 0.97), "max_abs_bias": ("<=", 0.01),
    "short_answer_false_drops": ("<=", 0), "exact_variant_recall": (">=", 1.0),
    "drift_min_detected_loss_n5000_where_bound_allows_2pct": ("<=", 0.02),
    "drift_excess_over_bound_n5000": ("<=", 0.002), "drift_null_fpr": ("<=", 0.01),
    "refusal_recall": (">=", 0.9), "helpful_false_positives": ("<=", 0.05),
    "dedup_rows_per_s": (">=", 20_000), "dedup_peak_mb": ("<=", 1024),
}


def goals_met(result: dict[str, Any]) -> dict[str, bool]:
    """Each goal's figure against its bound (a figure missing from the result is not met)."""
    met = {}
    for name, (op, bound) in GOALS.items():
        value = result.get(name)
        met[name] = value is not None and (value >= bound if op == ">=" else value <= bound)
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="Rows of the dedup throughput run.")
    args = parser.parse_args()
    result: dict[str, Any] = {**dedup.measure(rows=args.rows), **drift.measure(), **filters.measure()}
    met = goals_met(result)
    result["goals_met"] = all(met.values())
    result["goals_missed"] = [name for name, ok in met.items() if not ok]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
