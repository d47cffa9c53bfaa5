"""Seed samplers at scale: planning a 10,000,000-row job with weighted, conditional, integer, normal
and choice samplers beside a listed variable and a seed file of 1,000,000 personas (JSONL, drawn with
replacement), then drawing every row as the finalize pass does to count the planned mix
(`planned_seed_counts`), in a child process of its own so its peak memory is its own.

Beside it, in the same run, the path the workers take (`shard_variables`: a 256-row shard drawn at
once, its personas read from the file's blocks) and one row at a time (`template_variables`, what
`validate` uses on the first rows), each on 20,000 rows. Goals: ≥ 1,000,000 rows/s and ≤ 300 MB peak. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOPICS = [f"topic{i}" for i in range(12)]
SEEDS: dict[str, Any] = {
    "lang": ["en", "fr", "de", "es"],
    "topic": {"weighted": {t: i + 1 for i, t in enumerate(TOPICS)}},
    "subtopic": {"conditional": {"on": "topic", "values": {t: [f"{t}.{j}" for j in range(5)] for t in TOPICS}}},
    "age": {"uniform_int": [8, 80]},
    "temperature_hint": {"normal": {"mean": 0.8, "std": 0.2, "min": 0.1, "max": 1.5}},
    "styles": {"choice": {"values": ["plain", "playful", "formal", "visual", "terse", "socratic"], "k": 2}},
}
PER_ROW, SHARD = 20_000, 256


def _spec(rows: int, seeds: dict[str, Any]) -> Any:
    from orchestrator.spec.load import parse_spec

    template: dict[str, Any] = {"text": " ".join(f"{{{{ {n} }}}}" for n in seeds), "seeds": seeds}
    if any(isinstance(v, dict) for v in seeds.values()):
        template["rows"] = rows
    else:
        template["sample"] = {"n": rows}
    return parse_spec({"name": "samplers", "model": {"id": "org/model"}, "prompts": {"template": template},
                       "output": {"uri": "unused"}})


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _personas(path: Path, rows: int) -> Path:
    with path.open("w") as f:
        f.writelines(json.dumps({"name": f"person {i}", "age": 18 + i % 60, "bio": "b" * 80}) + "\n"
                     for i in range(rows))
    return path


def child(rows: int, seed_file_rows: int) -> dict[str, Any]:
    """Plan and count the planned mix of `rows` sampled rows; then the per-row path on PER_ROW rows."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        personas = _personas(Path(tmp) / "personas.jsonl", seed_file_rows)
        seeds = SEEDS | {"persona": {"from_file": {"uri": str(personas), "columns": ["name", "age"], "replace": True}}}
        return _measure(_spec(rows, seeds), rows, personas.stat().st_size)


def _measure(spec: Any, rows: int, file_bytes: int) -> dict[str, Any]:
    from orchestrator.finalize.passes import planned_seed_counts
    from orchestrator.plan.planner import Shard, make_plan, shard_variables, template_variables

    before = _peak_rss_mb()
    started = time.perf_counter()
    plan = make_plan(spec)
    planning = time.perf_counter() - started
    counts = planned_seed_counts(spec, plan)
    seconds = time.perf_counter() - started
    assert all(sum(c.values()) == rows for c in counts.values()), {k: sum(c.values()) for k, c in counts.items()}
    source = spec.prompts.template
    started = time.perf_counter()
    for start in range(0, PER_ROW, SHARD):
        assert all("persona" in v for v in shard_variables(source, Shard(0, start, start + SHARD), plan.seed_files))
    shards = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(PER_ROW):
        template_variables(source, i)
    per_row = time.perf_counter() - started
    return {"seconds": seconds, "planning_seconds": planning, "file_mb": file_bytes / 2**20,
            "peak_rss_mb": _peak_rss_mb(), "rss_before_mb": before, "strata": sorted(counts),
            "shard_rows_per_s": PER_ROW / shards, "per_row_rows_per_s": PER_ROW / per_row}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--seed-file-rows", type=int, default=1_000_000)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.rows, args.seed_file_rows)))
        return
    print(json.dumps(run(args.rows, args.seed_file_rows)))


def run(rows: int, seed_file_rows: int) -> dict[str, Any]:
    """The benchmark's figures (what `main` prints), measured in a child process of its own."""
    out = subprocess.run([sys.executable, __file__, "--child", "--rows", str(rows), "--seed-file-rows",
                          str(seed_file_rows)], check=True,
                         capture_output=True, text=True).stdout
    c = json.loads(out.strip().splitlines()[-1])
    rate = rows / c["seconds"]
    return {
        "benchmark": "samplers", "rows": rows,
        "samplers": sorted(k for k, v in SEEDS.items() if isinstance(v, dict)),
        "seed_file_rows": seed_file_rows, "seed_file_mb": round(c["file_mb"]),
        "stratified": c["strata"], "seconds": round(c["seconds"], 2), "rows_per_s": round(rate),
        "planning_seconds": round(c["planning_seconds"], 2),
        "peak_rss_mb": round(c["peak_rss_mb"]), "rss_at_start_mb": round(c["rss_before_mb"]),
        "worker_shard_rows_per_s": round(c["shard_rows_per_s"]), "one_row_at_a_time_rows_per_s":
        round(c["per_row_rows_per_s"]), "goal_rows_per_s": 1_000_000, "goal_peak_rss_mb": 300,
    }


if __name__ == "__main__":
    main()
