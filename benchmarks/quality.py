"""Quality-gate costs, printed as one JSON line.

dedup: the finalize dedup pass (both passes, reading `_generated/` and writing `data/` and
`rejected/`) over 1,000,000 short rows in a child process pinned to one core; rows/s and the child's
peak RSS. Goals: >= 20,000 rows/s, <= 1 GB.

judge: on one warm tiny vLLM engine with a job's settings (prefix caching on, the CPU backend's
128-token KV blocks), 512 replies of `--reply-tokens` tokens, then `judge: self` on them as a job
runs it: each judgement continues its reply's conversation, so the engine reads the prompt and reply
from its prefix cache. Compared with plain generation of exactly the tokens the judge reads and
writes (its prompt ids with the prefix cache emptied, as many output tokens as its judgement and any
continuation for the score, no grammar). Goal: ratio <= 1. Also the judge with the cache emptied
(`without_kv_reuse`): what the grammar costs; and the score-first judge on the same replies
(`score_first_over_reason_first`): what reasoning first and continuing cut judgements cost. Random
weights write every reason to the budget, so every reason-first judgement is continued here.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = 1_000_000
ROWS_PER_SHARD = 20_000
VOCAB = [f"w{i}" for i in range(20_000)]


def _spec(out: str, rows: int, **extra: Any) -> Any:
    """A spec whose plan has `rows` rows (seed i x j, 1000 values of j)."""
    from orchestrator.spec.load import parse_spec

    seeds = {"i": list(range(max(1, rows // 1000))), "j": list(range(min(rows, 1000)))}
    return parse_spec({"name": "bench", "model": {"path": "fake", "engine": "fake"},
                       "prompts": {"template": {"text": "row {{ i }} {{ j }}", "seeds": seeds}},
                       "output": {"uri": out, "rows_per_shard": ROWS_PER_SHARD}, **extra})


def write_rows(folder: Path, rows: int, seed: int = 0) -> None:
    """Short rows (8-20 words), 5% exact and 5% near (one word changed) duplicates of earlier rows."""
    import pyarrow as pa

    from orchestrator.commit import layout
    from orchestrator.commit.schemas import data_schema
    from orchestrator.commit.shards import parquet_bytes
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
    from orchestrator.commit.schemas import variable_fields
    from orchestrator.finalize import diversity
    from orchestrator.finalize.passes import KeptRows, dedup_shards
    from orchestrator.finalize.samples import Examples
    from orchestrator.plan.planner import make_plan
    from orchestrator.storage import LocalStore

    spec = _spec(folder, rows, dedup={"exact": True, "near_threshold": 0.8})
    plan = make_plan(spec)
    kept = KeptRows(diversity.BottomK(spec.quality.sample_rows), Examples([f.name for f in variable_fields(spec)]))
    started = time.perf_counter()
    results = dedup_shards(LocalStore(folder), spec, plan, kept)
    seconds = time.perf_counter() - started
    dropped = sum(sum(r.duplicates.values()) for r in results.values())
    print(json.dumps({"seconds": seconds, "dropped": dropped, "peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM; `ru_maxrss` would carry the parent's from before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_dedup(rows: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        write_rows(Path(tmp), rows)
        out = subprocess.run([sys.executable, __file__, "--dedup-child", tmp, str(rows)], check=True,
                             capture_output=True, text=True).stdout
    child = json.loads(out.strip().splitlines()[-1])
    return {"rows": rows, "rows_per_s": round(rows / child["seconds"]), "peak_rss_mb": round(child["peak_rss_mb"]),
            "duplicates_dropped": child["dropped"], "seconds": round(child["seconds"], 2)}


async def _timed(coros: list[Any]) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    results = await asyncio.gather(*coros)
    return time.perf_counter() - started, results


async def _judge_runs(model: str, repeats: int, rows_wanted: int, gen_tokens: int) -> list[dict[str, Any]]:
    """Per repeat, fresh replies (new seeds), then four timed sides in alternating order:

    reuse: the judge as a job runs it (reason first), each judgement continuing its reply on the
           engine that wrote it (the reply's KV still in the prefix cache);
    score_first: the same with the score-first judge;
    plain: the judge's exact prompt ids, prefix cache emptied, generating as many tokens, no grammar;
    cold:  the judge again with the prefix cache emptied (what the grammar alone costs);
    and a whole job (4 shards in flight through the worker's shard path) without and with the judge:
    the judge's added time there, where judgements also fill the batch beside generation.
    One engine with a job's settings, made and used on one event loop (AsyncLLM is bound to its loop).
    """
    from orchestrator.plan.planner import make_plan
    from orchestrator.spec.job import Sampling
    from orchestrator.spec.load import parse_spec
    from orchestrator.spec.quality import Judge
    from orchestrator.storage import MemoryStore
    from workers.engine import SAME_TURN, VllmEngine
    from workers.judge import Verdict, judge_reply, judge_request, judge_sampling
    from workers.prompts import PromptRow, shard_rows
    from workers.shard import run_shard

    judge = Judge(min_score=1, reason_max_chars=60)
    score_first = judge.model_copy(update={"order": "score_first"})
    sampling, score_first_sampling = judge_sampling(judge), judge_sampling(score_first)

    def spec(seed: int, shards: int = 1, judged: bool = False) -> Any:
        return parse_spec({
            "name": "judge-bench", "model": {"path": model, "max_model_len": 512, "dtype": "float32"},
            "prompts": {"template": {"text": "Explain {{ topic }} in one line, take {{ k }}:",
                                     "seeds": {"topic": [f"topic {i}" for i in range(rows_wanted // 16)],
                                               "k": list(range(16))}}},
            "sampling": {"max_tokens": gen_tokens, "ignore_eos": True, "seed": seed},
            "output": {"uri": "mem", "rows_per_shard": rows_wanted // shards},
            **({"judge": judge.model_dump()} if judged else {})})

    engine = VllmEngine(spec(0).model, on_gpu=False)

    async def replies(seed: int) -> list[tuple[PromptRow, Any]]:
        s = spec(seed)
        plan = make_plan(s)
        rows = shard_rows(s, plan, plan.shard(0))
        results = await asyncio.gather(*(engine.generate(r, SAME_TURN) for r in rows))
        return [(r, res[0]) for r, res in zip(rows, results, strict=True)]

    async def judged(pairs: list[tuple[PromptRow, Any]], first: bool = False) -> tuple[float, list[Any]]:
        how, s = (score_first, score_first_sampling) if first else (judge, sampling)
        return await _timed([judge_reply(engine, how, r, 0, c, s) for r, c in pairs])

    def plain_request(row: PromptRow, reply: Any, verdict: Any, i: int) -> PromptRow:
        """The judge's first request, generating as many tokens as the whole judgement, with no grammar."""
        request = judge_request(judge, row, 0, reply, sampling)
        if not isinstance(request, PromptRow) or not isinstance(verdict, Verdict):
            raise RuntimeError(f"the benchmark's judge failed on row {row.index}: {request} {verdict}")
        return replace(request, row_id=f"plain-{i}", sampling=Sampling(
            temperature=0.0, max_tokens=verdict.completion_tokens, ignore_eos=True))

    async def job(seed: int, with_judge: bool) -> float:
        s = spec(seed, shards=4, judged=with_judge)
        plan, store = make_plan(s), MemoryStore()
        seconds, _ = await _timed([run_shard(engine, store, s, plan, shard, 1) for shard in plan.shards()])
        return seconds

    await judged(await replies(10_000))  # warm-up: grammar compiled, engine paths hot
    runs = []
    for k in range(repeats):
        pairs = await replies(k + 1)
        order = (["reuse", "score_first", "plain", "cold"] if k % 2 == 0 else
                 ["cold", "plain", "score_first", "reuse"])
        sides: dict[str, float] = {}
        verdicts: list[Any] = []  # the last reason-first side's: plain asks for as many tokens as each judgement
        for side in order:
            if side not in ("reuse", "score_first") or sides:
                await engine.llm.reset_prefix_cache()
            if side in ("reuse", "score_first") and sides:  # after an emptied cache: write the replies again
                pairs = await replies(k + 1)
            if side == "plain":
                plain = [plain_request(r, c, v, i) for i, ((r, c), v) in enumerate(zip(pairs, verdicts, strict=True))]
                sides[side], _ = await _timed([engine.generate(q) for q in plain])
            elif side == "score_first":
                sides[side], _ = await judged(pairs, first=True)
            else:
                sides[side], verdicts = await judged(pairs)
                if side == "reuse":
                    reuse_verdicts = verdicts
        for with_judge in (False, True) if k % 2 == 0 else (True, False):
            sides["job_judged" if with_judge else "job"] = await job(k + 1, with_judge)
        runs.append({**sides, "prompt_tokens": sum(v.prompt_tokens for v in reuse_verdicts),
                     "cached_tokens": sum(v.cached_tokens for v in reuse_verdicts),
                     "completion_tokens": sum(v.completion_tokens for v in reuse_verdicts),
                     "continued": sum(v.cut for v in reuse_verdicts)})
    return runs


def bench_judge(model: str, repeats: int, rows: int, gen_tokens: int) -> dict[str, Any]:
    runs = asyncio.run(_judge_runs(model, repeats, rows, gen_tokens))
    ratios = [r["reuse"] / r["plain"] for r in runs]
    cold = [r["cold"] / r["plain"] for r in runs]
    in_job = [(r["job_judged"] - r["job"]) / r["plain"] for r in runs]
    first = [r["score_first"] / r["reuse"] for r in runs]
    return {"judge_over_generating_its_tokens": round(statistics.median(ratios), 3),
            "ratios": [round(x, 3) for x in ratios],
            "without_kv_reuse": round(statistics.median(cold), 3), "ratios_without_kv_reuse": [round(x, 3) for x in cold],
            "job_added_over_generating": round(statistics.median(in_job), 3),
            "ratios_job_added": [round(x, 3) for x in in_job],
            "score_first_over_reason_first": round(statistics.median(first), 3),
            "ratios_score_first": [round(x, 3) for x in first],
            "judgements_continued": runs[0]["continued"],
            "rows_judged": rows, "reply_tokens": gen_tokens, "judge_prompt_tokens": runs[0]["prompt_tokens"],
            "judge_prompt_tokens_cached": runs[0]["cached_tokens"],
            "judge_completion_tokens": runs[0]["completion_tokens"],
            **{f"{side}_s": [round(r[side], 2) for r in runs]
               for side in ("reuse", "score_first", "plain", "cold", "job", "job_judged")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--model", default="models/tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reply-tokens", type=int, default=256, help="Tokens per generated reply the judge reads.")
    parser.add_argument("--judge-only", action="store_true")
    parser.add_argument("--skip-judge", action="store_true")
    parser.add_argument("--dedup-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dedup_child:
        dedup_child(args.dedup_child[0], int(args.dedup_child[1]))
        return
    result: dict[str, Any] = {} if args.judge_only else {"dedup": bench_dedup(args.rows)}
    if not args.skip_judge:
        result["judge"] = bench_judge(args.model, args.repeats, 512, args.reply_tokens)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
