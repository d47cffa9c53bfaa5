"""Targets at scale: what planning costs, and how many rows a targets job generates beyond the least it could.

Planning: a 10,000,000-row job with samplers and a 1,000,000-row seed file, planned and drawn in a
child process of its own (benchmarks/samplers.py, reused): rows planned per second (goal >= 1,000,000)
and peak RSS (goal <= 300 MB).

The cost of a targets job: a job on the fake engine, which echoes each prompt at the start of its
completion, so a deny pattern on the prompt text rejects a planted share of a stratum's rows. The
prompt is "{topic} {coin}", the coin uniform over 0..9; stratum a keeps every row, b the coins 3..9
(70%), c the coins 6..9 (40%). With `targets: {by: [topic], kept_rows: K}` no job can generate fewer
than sum over strata of K / p_s rows on average, p_s the planted acceptance; the figure is the rows
it generated over that minimum (goal <= 1.10). The baseline is the planted truth, computed from the
deny patterns and the coin's law, not the acceptance the job measured: a ratio against the job's own
estimate (its manifest's cost_ratio, reported beside) would check the code against itself. Generated
and kept rows are counted from the files the job wrote (data/ and rejected/), and every stratum must
end with exactly K rows in data/. Prints one JSON line; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.samplers import run as samplers_run  # noqa: E402

WEIGHTS = {"a": 1, "b": 1, "c": 2}  # topic: its weight among the draws
DENY = ["^b [0-2] ", "^c [0-5] "]  # matched against the echoed completion "{topic} {coin} tok tok"
COINS = range(10)
MAX_TOKENS, MAX_ROUNDS = 2, 8
GOAL_COST_RATIO, GOAL_ROWS_PER_S, GOAL_PEAK_RSS_MB = 1.10, 1_000_000, 300


def log(message: str) -> None:
    print(f"[targets] {message}", file=sys.stderr, flush=True)


def planted_acceptance(topic: str) -> float:
    """The share of `topic`'s rows no deny pattern rejects: every coin equally likely, its completion echoed."""
    echoed = [f"{topic} {coin} " + " ".join(["tok"] * MAX_TOKENS) for coin in COINS]
    return sum(not any(re.search(p, text) for p in DENY) for text in echoed) / len(echoed)


def job_spec(uri: Path, kept_rows: int, rows_per_shard: int) -> Any:
    from orchestrator.spec.load import parse_spec

    return parse_spec({
        "name": "targets-bench",
        "model": {"path": "fake", "engine": "fake", "engine_args": {"tokens_per_s": 20000, "echo": True}},
        "prompts": {"template": {"text": "{{ topic }} {{ coin }}", "seeds": {
            "topic": {"weighted": WEIGHTS}, "coin": {"uniform_int": [COINS[0], COINS[-1]]}}}},
        "sampling": {"max_tokens": MAX_TOKENS},
        "filters": {"deny": DENY},
        "targets": {"by": ["topic"], "kept_rows": kept_rows, "max_rounds": MAX_ROUNDS},
        "output": {"uri": str(uri), "rows_per_shard": rows_per_shard},
        "resources": {"workers": 2, "gpus_per_worker": 0, "cpus_per_worker": 0},
    })


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Whatever is written to stdout meanwhile (Ray's, the job's) goes to stderr: stdout has one line."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def topic_counts(folder: Path, prefix: str = "") -> Counter[str]:
    """Rows per topic in the Parquet files of `folder` whose names start with `prefix`."""
    import pyarrow.dataset as ds

    files = sorted(str(p) for p in folder.glob(f"{prefix}*.parquet"))
    if not files:
        return Counter()
    topics = ds.dataset(files, format="parquet").to_table(columns=["topic"]).column("topic").to_pylist()
    return Counter(topics)


def strata_figures(job: Path, kept_rows: int, manifest_strata: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stratum, from the job's files: rows generated, rows in data/, the planted and observed acceptance."""
    data, rejected = topic_counts(job / "data"), topic_counts(job / "rejected")
    over = topic_counts(job / "rejected", "over_target-")
    rounds = {s["stratum"]: s["rounds"] for s in manifest_strata}
    out = {}
    for topic in WEIGHTS:
        generated, p = data[topic] + rejected[topic], planted_acceptance(topic)
        out[topic] = {"generated": generated, "in_data": data[topic], "over_target": over[topic],
                      "true_acceptance": p, "observed_acceptance": round((data[topic] + over[topic]) / generated, 4),
                      "minimum_rows": round(kept_rows / p, 1), "rounds": rounds[topic]}
    return out


def targets_job(kept_rows: int, rows_per_shard: int) -> dict[str, Any]:
    """Run the planted job in a temporary folder and measure what it cost against the planted minimum."""
    from orchestrator.run.driver import run_job

    with tempfile.TemporaryDirectory(prefix="synthfleet-targets-") as tmp:
        started = time.perf_counter()
        with stdout_to_stderr():
            result = run_job(job_spec(Path(tmp), kept_rows, rows_per_shard), worker_logs=False)
        wall = time.perf_counter() - started
        job = Path(result.uri)
        report = json.loads((job / "_manifest.json").read_text())["quality"]["targets"]
        strata = strata_figures(job, kept_rows, report["strata"])
    generated = sum(s["generated"] for s in strata.values())
    assert generated == report["rows_generated"], (generated, report["rows_generated"])
    minimum = sum(kept_rows / s["true_acceptance"] for s in strata.values())
    return {"rows_per_stratum": kept_rows, "rows_per_shard": rows_per_shard, "max_rounds": MAX_ROUNDS,
            "rounds": report["rounds"], "rows_generated": generated, "minimum_rows": round(minimum, 1),
            "cost_ratio": round(generated / minimum, 4), "goal_cost_ratio": GOAL_COST_RATIO,
            "job_cost_ratio": round(report["cost_ratio"], 4) if report["cost_ratio"] else None,
            "exactly_k_in_data": all(s["in_data"] == kept_rows for s in strata.values()),
            "unmet": report["unmet"], "strata": strata, "wall_seconds": round(wall, 1)}


def planning(rows: int, seed_file_rows: int) -> dict[str, Any]:
    """benchmarks/samplers.py's figures: rows planned per second and peak RSS of the planning process."""
    s = samplers_run(rows, seed_file_rows)
    return {"rows": rows, "seed_file_rows": seed_file_rows, "seconds": s["seconds"], "rows_per_s": s["rows_per_s"],
            "peak_rss_mb": s["peak_rss_mb"], "goal_rows_per_s": GOAL_ROWS_PER_S,
            "goal_peak_rss_mb": GOAL_PEAK_RSS_MB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows planned")
    ap.add_argument("--seed-file-rows", type=int, default=1_000_000)
    ap.add_argument("--rows-per-stratum", type=int, default=2000, help="targets.kept_rows")
    ap.add_argument("--rows-per-shard", type=int, default=200)
    ap.add_argument("--skip-planning", action="store_true", help="only the targets job")
    args = ap.parse_args()
    started = time.perf_counter()
    plan = None
    if not args.skip_planning:
        log(f"planning {args.rows:,} rows with a {args.seed_file_rows:,}-row seed file")
        plan = planning(args.rows, args.seed_file_rows)
    log(f"targets job: {args.rows_per_stratum:,} kept rows in each of {len(WEIGHTS)} strata")
    job = targets_job(args.rows_per_stratum, args.rows_per_shard)
    print(json.dumps({"benchmark": "targets", "planning": plan, "job": job,
                      "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    if not job["exactly_k_in_data"]:
        sys.exit(f"a stratum does not have exactly {args.rows_per_stratum} rows in data/: "
                 f"{ {t: s['in_data'] for t, s in job['strata'].items()} }")


if __name__ == "__main__":
    main()
