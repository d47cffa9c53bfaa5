"""A two-stage pipeline: vLLM's LLM.generate in two batch passes vs a synthfleet job with stages, side by side.

The recipe: a question (a chat prompt per row), then an answer that `continue`s the question's
conversation. The direct side runs it as two passes of LLM.generate over the same token ids the job
sends: all questions, then every conversation (prompt, question, the answer's user turn) as token
ids. Fixed token counts (ignore_eos) and the same per-request seeds, so both sides generate the same
number of tokens. The job runs one worker on local Ray and writes to a local folder; its rows flow
from stage to stage with no barrier between them. The second stage's prompt is served from the
prefix cache on both sides: the job's cached prompt tokens are reported.

Each side runs in a child process (see e2e.py), `--repeats` pairs alternating which goes first; the
ratio is the median of the pairs' ratios. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from benchmarks.e2e import paired, side_output  # noqa: E402

TOPICS = ["rivers", "proofs", "markets", "cells", "orbits", "poems", "bridges", "storms"]
SEED, MAX_MODEL_LEN, WARM_ROWS = 0, 512, 64
BLOCK = 32  # KV block tokens: the CPU default (128) would hold no whole block of a short conversation
ASK = "Job {job}: write a question number {{{{ i }}}} about {{{{ topic }}}}."  # a new prefix per job: cold cache
ANSWER = "Now answer your question."


def seeds(n: int) -> dict[str, list[Any]]:
    """Seed values whose product is n rows (n a multiple of len(TOPICS)): i x topic."""
    return {"i": list(range(n // len(TOPICS))), "topic": TOPICS}


def job_spec(args: argparse.Namespace, name: str, rows: int, job: str) -> Any:
    from orchestrator.spec.load import parse_spec

    return parse_spec({
        "name": name,
        "model": {"path": str(args.model), "dtype": "float32", "max_model_len": MAX_MODEL_LEN,
                  "engine_args": {"block_size": BLOCK}},
        "prompts": {"template": {"seeds": seeds(rows)}},
        "sampling": {"max_tokens": args.max_tokens, "ignore_eos": True, "temperature": 1.0, "seed": SEED},
        "stages": [{"name": "question", "messages": [{"role": "user", "content": ASK.format(job=job)}]},
                   {"name": "answer", "continue": "question", "text": ANSWER}],
        "output": {"uri": str(args.work / "out"), "rows_per_shard": args.rows_per_shard},
        "resources": {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": os.cpu_count() or 1,
                      "shards_in_flight": args.in_flight},
    })


def direct(args: argparse.Namespace) -> dict[str, Any]:
    """Tokens/s of the two stages as two LLM.generate passes, `args.runs` times on one warm engine."""
    from vllm import LLM, SamplingParams

    from orchestrator.plan.planner import make_plan, row_seed, template_variables
    from orchestrator.spec.model import ModelSpec
    from workers import sandbox
    from workers.engine import FollowUps, memory_args
    from workers.stages import stage_seed

    spec = job_spec(args, "direct", args.prompts, "0")
    source, plan = spec.prompts.template, make_plan(spec)
    memory = memory_args(ModelSpec(path=str(args.model)), on_gpu=False)
    llm = LLM(model=str(args.model), dtype="float32", max_model_len=MAX_MODEL_LEN, enable_chunked_prefill=False,
              block_size=BLOCK, **memory)
    tokenizer = llm.get_tokenizer()
    turn = FollowUps(tokenizer).turn(ANSWER)
    asked = [tokenizer.apply_chat_template([{"role": "user", "content": sandbox.render_all(
        [ASK.format(job="0")], template_variables(source, i))[0]}], tokenize=False, add_generation_prompt=True)
        for i in range(plan.total_rows)]

    def params(stage: int) -> list[Any]:
        return [SamplingParams(max_tokens=args.max_tokens, ignore_eos=True, temperature=1.0,
                               seed=stage_seed(row_seed(SEED, i), stage, 0)) for i in range(plan.total_rows)]

    def two_passes(rows: int) -> tuple[int, int]:
        first = llm.generate([{"prompt": p} for p in asked[:rows]], params(0)[:rows], use_tqdm=False)
        conversations = [[*o.prompt_token_ids, *o.outputs[0].token_ids, *turn] for o in first]
        second = llm.generate([{"prompt_token_ids": c} for c in conversations], params(1)[:rows], use_tqdm=False)
        return (sum(len(o.outputs[0].token_ids) for o in first + second),
                sum(o.num_cached_tokens or 0 for o in second))

    two_passes(WARM_ROWS)
    rates, cached = [], 0
    for _ in range(args.runs):
        llm.reset_prefix_cache()  # each run starts cold, as a new job's rows do
        started = time.perf_counter()
        tokens, cached = two_passes(plan.total_rows)
        rates.append(tokens / (time.perf_counter() - started))
    llm.llm_engine.engine_core.shutdown()
    return {"rates": rates, "cached": cached}


def synthfleet(args: argparse.Namespace) -> dict[str, Any]:
    """Tokens/s of `args.runs` staged jobs (a new job id each) on one warm worker."""
    import asyncio

    import pyarrow.dataset as ds

    from orchestrator.run.driver import run_job
    from orchestrator.run.pool import WorkerPool
    from orchestrator.run.ray_runtime import ensure_ray

    ensure_ray(worker_logs=False)
    warm = job_spec(args, f"warm-{os.getpid()}", WARM_ROWS, "warm")
    pool = WorkerPool(warm.model, warm.resources)
    asyncio.run(pool.grow(1))
    run_job(warm, pool=pool)
    rates, cached, prompt = [], 0, 0
    for k in range(args.runs):
        result = run_job(job_spec(args, f"pipeline-{os.getpid()}-{k}", args.prompts, str(k)), pool=pool)
        assert result.rows_ok == args.prompts, result
        rates.append(result.tokens_per_s)
        table = ds.dataset(Path(result.uri) / "data", format="parquet").to_table(
            columns=["answer_cached_tokens", "answer_prompt_tokens"])
        cached = sum(table.column("answer_cached_tokens").to_pylist())
        prompt = sum(table.column("answer_prompt_tokens").to_pylist())
    pool.close()
    return {"rates": rates, "cached": cached, "cached_share": round(cached / prompt, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=1024, help="rows (a multiple of 8)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per stage")
    ap.add_argument("--rows-per-shard", type=int, default=128)
    ap.add_argument("--in-flight", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="pairs of sides; the median pair ratio is reported")
    ap.add_argument("--runs", type=int, default=2, help="timed passes per side in each pair (their median counts)")
    ap.add_argument("--model", type=Path, help="model folder (default: build the tiny model)")
    ap.add_argument("--side", choices=["direct", "synthfleet"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print(json.dumps((direct if args.side == "direct" else synthfleet)(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.work = Path(tmp)
        if args.model is None:
            from workers.tiny_model import build_tiny_model

            args.model = build_tiny_model(args.work / "tiny")
        flags = ["--model", str(args.model), "--work", str(args.work), "--runs", str(args.runs), "--prompts",
                 str(args.prompts), "--max-tokens", str(args.max_tokens), "--rows-per-shard",
                 str(args.rows_per_shard), "--in-flight", str(args.in_flight)]
        outs: dict[str, list[dict[str, Any]]] = {"direct": [], "synthfleet": []}
        steal: list[float] = []

        def run(name: str) -> float:
            out = side_output(__file__, name, flags)
            outs[name].append(out)
            steal.append(out["host_steal_s"])
            return statistics.median(out["rates"])

        pairs = paired(args.repeats, run)
    ratios = [j / d for d, j in pairs]
    print(json.dumps({
        "benchmark": "pipeline", "stages": 2, "rows": args.prompts, "max_tokens_per_stage": args.max_tokens,
        "rows_per_shard": args.rows_per_shard, "shards_in_flight": args.in_flight, "repeats": args.repeats,
        "runs": args.runs,
        "direct_tokens_per_s": round(statistics.median(d for d, _ in pairs)),
        "synthfleet_tokens_per_s": round(statistics.median(j for _, j in pairs)),
        "ratio": round(statistics.median(ratios), 3), "pair_ratios": [round(r, 3) for r in ratios],
        "answer_cached_tokens_direct": outs["direct"][-1]["cached"],
        "answer_cached_tokens_synthfleet": outs["synthfleet"][-1]["cached"],
        "answer_cached_share_synthfleet": outs["synthfleet"][-1]["cached_share"],
        "host_steal_s_per_side": steal,  # in the order the sides ran (pairs alternate which goes first)
    }))


if __name__ == "__main__":
    main()
