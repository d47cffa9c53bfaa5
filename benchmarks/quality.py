"""Quality-gate costs, printed as one JSON line.

dedup: the finalize dedup pass (both passes, reading `_generated/` and writing `data/` and
`rejected/`) over 1,000,000 short rows in a child process pinned to one core; rows/s and the child's
peak RSS. Goals: >= 20,000 rows/s, <= 1 GB.

judge: on one warm tiny vLLM engine, the same shards generated without and with `judge: self`; the
judge's added time is compared with plain generation of exactly the tokens it reads and writes (its
prompts, and as many output tokens, without a grammar). Goal: ratio <= 1. Prefix caching is off so
repeated prompts are not free.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = 1_000_000
ROWS_PER_SHARD = 20_000
VOCAB = [f"w{i}" for i in range(20_000)]


def _spec(out: str, rows: int, **extra: Any) -> Any:
    """A spec whose plan has `rows` rows (seed i x j, 1000 values of j)."""
    from orchestrator.spec import parse_spec

    seeds = {"i": list(range(max(1, rows // 1000))), "j": list(range(min(rows, 1000)))}
    return parse_spec({"name": "bench", "model": {"path": "fake", "engine": "fake"},
                       "prompts": {"template": {"text": "row {{ i }} {{ j }}", "seeds": seeds}},
                       "output": {"uri": out, "rows_per_shard": ROWS_PER_SHARD}, **extra})


def write_rows(folder: Path, rows: int, seed: int = 0) -> None:
    """Short rows (8-20 words), 5% exact and 5% near (one word changed) duplicates of earlier rows."""
    import pyarrow as pa

    from orchestrator import layout
    from orchestrator.commit import parquet_bytes
    from orchestrator.rows import data_schema
    from orchestrator.storage import LocalStore

    spec, rng = _spec(str(folder), rows), random.Random(seed)
    schema = data_schema(spec)
    store, shards = LocalStore(folder), (rows + ROWS_PER_SHARD - 1) // ROWS_PER_SHARD
    recent: list[str] = []
    for s in range(shards):
        first, n = s * ROWS_PER_SHARD, min(ROWS_PER_SHARD, rows - s * ROWS_PER_SHARD)
        texts = []
        for _ in range(n):
            roll = rng.random()
            if recent and roll < 0.05:
                text = rng.choice(recent)
            elif recent and roll < 0.10:
                words = rng.choice(recent).split()
                words[rng.randrange(len(words))] = "changed"
                text = " ".join(words)
            else:
                text = " ".join(rng.choices(VOCAB, k=rng.randint(8, 20)))
            texts.append(text)
        recent = texts[:1000]
        cols = {"row_id": [f"r{first + k}" for k in range(n)], "sample_index": [0] * n, "completion": texts,
                "completion_tokens": [len(t.split()) for t in texts],
                "i": [(first + k) // 1000 for k in range(n)], "j": [(first + k) % 1000 for k in range(n)]}
        table = pa.Table.from_arrays([pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type)
                                      for f in schema], schema=schema)
        store.put(layout.commit_key(s, shards, staged=True), parquet_bytes(table))


def dedup_child(folder: str, rows: int) -> None:
    """Run in a child pinned to one core: the dedup pass, then its figures on stdout."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    from orchestrator import diversity
    from orchestrator.planner import make_plan
    from orchestrator.quality import KeptRows, dedup_shards
    from orchestrator.storage import LocalStore

    spec = _spec(folder, rows, dedup={"exact": True, "near_threshold": 0.8})
    plan = make_plan(spec)
    kept = KeptRows(diversity.BottomK(spec.quality.sample_rows))
    started = time.perf_counter()
    results = dedup_shards(LocalStore(folder), spec, plan, kept)
    seconds = time.perf_counter() - started
    dropped = sum(sum(r.duplicates.values()) for r in results.values())
    print(json.dumps({"seconds": seconds, "dropped": dropped,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_dedup(rows: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        write_rows(Path(tmp), rows)
        out = subprocess.run([sys.executable, __file__, "--dedup-child", tmp, str(rows)], check=True,
                             capture_output=True, text=True).stdout
    child = json.loads(out.strip().splitlines()[-1])
    return {"rows": rows, "rows_per_s": round(rows / child["seconds"]), "peak_rss_mb": round(child["peak_rss_mb"]),
            "duplicates_dropped": child["dropped"], "seconds": round(child["seconds"], 2)}


async def _generated_rows(engine: Any, spec: Any) -> list[dict[str, Any]]:
    """The data rows of a plain job on `engine` (what the judge is asked about)."""
    from orchestrator import layout
    from orchestrator.planner import make_plan
    from orchestrator.commit import read_parquet
    from orchestrator.storage import MemoryStore
    from workers.shard import run_shard

    plan, store = make_plan(spec), MemoryStore()
    await asyncio.gather(*(run_shard(engine, store, spec, plan, s, 1) for s in plan.shards()))
    return [r for i in range(plan.num_shards) for r in read_parquet(store, layout.data_key(i, plan.num_shards)).to_pylist()]


async def _timed(coros: list[Any]) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    results = await asyncio.gather(*coros)
    return time.perf_counter() - started, results


async def _judge_runs(model: str, repeats: int, rows_wanted: int) -> list[dict[str, float]]:
    """Judge every row, then generate exactly its tokens without a grammar; alternate the order.

    One engine, made and used on one event loop (AsyncLLM is bound to its loop).
    """
    from orchestrator.gates import Judge
    from orchestrator.spec import ModelSpec, Sampling, parse_spec
    from workers.engine import VllmEngine
    from workers.judge import judge_request, judge_row, judge_sampling

    engine = VllmEngine(ModelSpec(path=model, max_model_len=512, dtype="float32",
                                  engine_args={"enable_prefix_caching": False}), on_gpu=False)
    spec = parse_spec({
        "name": "judge-bench", "model": {"path": model, "max_model_len": 512, "dtype": "float32"},
        "prompts": {"template": {"text": "Explain {{ topic }} in one line, take {{ k }}:",
                                 "seeds": {"topic": [f"topic {i}" for i in range(rows_wanted // 16)],
                                           "k": list(range(16))}}},
        "sampling": {"max_tokens": 48, "ignore_eos": True, "seed": 3}, "output": {"uri": "mem", "rows_per_shard": 64}})
    judge = Judge(min_score=1, reason_max_chars=60)
    rows = await _generated_rows(engine, spec)
    sampling = judge_sampling(judge)
    _, verdicts = await _timed([judge_row(engine, judge, r, sampling) for r in rows])  # warm-up
    # Greedy judgements repeat exactly, so the plain requests ask for each judgement's own token count.
    plain = [type(q)(**{**q.__dict__, "sampling": Sampling(temperature=0.0, max_tokens=v.completion_tokens,
                                                             ignore_eos=True)})
             for q, v in zip((judge_request(judge, r, sampling) for r in rows), verdicts, strict=True)]
    runs = []
    for k in range(repeats):  # alternate which side goes first, against drift in the machine's load
        sides: dict[str, float] = {}
        for side in (("judge", "plain") if k % 2 == 0 else ("plain", "judge")):
            coros = [judge_row(engine, judge, r, sampling) for r in rows] if side == "judge" else \
                [engine.generate(q) for q in plain]
            sides[side], _ = await _timed(coros)
        runs.append({"judge_s": sides["judge"], "plain_s": sides["plain"], "rows": len(rows),
                     "judge_prompt_tokens": sum(v.prompt_tokens for v in verdicts),
                     "judge_completion_tokens": sum(v.completion_tokens for v in verdicts)})
    return runs


def bench_judge(model: str, repeats: int, rows: int) -> dict[str, Any]:
    runs = asyncio.run(_judge_runs(model, repeats, rows))
    ratios = [r["judge_s"] / r["plain_s"] for r in runs]
    return {"judge_over_generating_its_tokens": round(statistics.median(ratios), 3),
            "ratios": [round(x, 3) for x in ratios], "rows_judged": runs[0]["rows"],
            "judge_prompt_tokens": runs[0]["judge_prompt_tokens"],
            "judge_completion_tokens": runs[0]["judge_completion_tokens"],
            "judge_s": [round(r["judge_s"], 2) for r in runs], "plain_s": [round(r["plain_s"], 2) for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--model", default="models/tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-judge", action="store_true")
    parser.add_argument("--dedup-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dedup_child:
        dedup_child(args.dedup_child[0], int(args.dedup_child[1]))
        return
    result: dict[str, Any] = {"dedup": bench_dedup(args.rows)}
    if not args.skip_judge:
        result["judge"] = bench_judge(args.model, args.repeats, 512)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
