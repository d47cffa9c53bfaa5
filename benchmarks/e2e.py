"""End-to-end throughput: vLLM's LLM.generate directly vs a synthfleet job, side by side in one run.

Same tiny model, same prompts, same per-row seeds and sampling (fixed max_tokens, ignore_eos), the
same engine settings; the job runs one worker on a local Ray runtime and commits Parquet shards to a
local S3 server (moto over HTTP through boto3). Engine loading is excluded from both timings.
Each side runs `--repeats` times on its warm engine (one engine alive at a time) and the medians are
compared, which damps this shared machine's noise. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

PROMPT_TOPICS = ["rivers", "proofs", "markets", "cells", "orbits", "poems", "bridges", "storms"]


def prompts(n: int) -> list[str]:
    return [f"Write a short note number {i} about {PROMPT_TOPICS[i % len(PROMPT_TOPICS)]}." for i in range(n)]


def engine_kwargs(model: Path, max_model_len: int) -> dict[str, object]:
    return dict(model=str(model), dtype="float32", max_model_len=max_model_len, gpu_memory_utilization=0.1,
                enable_chunked_prefill=False)


def direct(model: Path, texts: list[str], max_tokens: int, seed: int, max_model_len: int,
           repeats: int) -> list[float]:
    """Tokens/s of LLM.generate on all prompts at once (after a warm-up batch), `repeats` times."""
    from vllm import LLM, SamplingParams

    from orchestrator.planner import row_seed

    llm = LLM(**engine_kwargs(model, max_model_len))  # type: ignore[arg-type]
    params = [SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=1.0, seed=row_seed(seed, i))
              for i in range(len(texts))]
    llm.generate(texts[:64], params[:64], use_tqdm=False)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        outs = llm.generate(texts, params, use_tqdm=False)
        rates.append(sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - started))
    llm.llm_engine.engine_core.shutdown()
    del llm
    return rates


def synthfleet(model: Path, texts: list[str], max_tokens: int, seed: int, max_model_len: int,
               rows_per_shard: int, in_flight: int, work: Path, repeats: int) -> tuple[list[float], dict[str, object]]:
    """Tokens/s of `repeats` synthfleet jobs (new job ids, one warm worker) writing to local S3."""
    import asyncio

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"})
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    import boto3

    from orchestrator.coordinator import run_job
    from orchestrator.pool import WorkerPool, ensure_ray
    from orchestrator.spec import parse_spec

    boto3.client("s3").create_bucket(Bucket="bench")
    prompt_file = work / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))

    def spec(k: int) -> Any:
        return parse_spec({
            "name": f"bench-e2e-{k}",
            "model": {"path": str(model), "dtype": "float32", "max_model_len": max_model_len},
            "prompts": {"file": {"uri": str(prompt_file)}},
            "sampling": {"max_tokens": max_tokens, "ignore_eos": True, "temperature": 1.0, "seed": seed},
            "output": {"uri": "s3://bench/e2e", "rows_per_shard": rows_per_shard},
            "resources": {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": os.cpu_count() or 1,
                          "shards_in_flight": in_flight},
        })

    ensure_ray(worker_logs=False)
    pool = WorkerPool(spec(0).model, spec(0).resources)
    asyncio.run(pool.grow(1))
    rates, detail = [], {}
    for k in range(repeats):
        result = run_job(spec(k), pool=pool)
        rates.append(result.tokens_per_s)
        detail = {"shards": result.shards, "rows_ok": result.rows_ok, "tokens": result.tokens_generated,
                  "generation_seconds": round(result.generation_seconds, 2)}
    pool.close()
    server.stop()
    return rates, detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rows-per-shard", type=int, default=128)
    ap.add_argument("--in-flight", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side; medians are compared")
    ap.add_argument("--model", type=Path, help="model folder (default: build the tiny model)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from workers.tiny_model import build_tiny_model

            model = build_tiny_model(work / "tiny")
        texts = prompts(args.prompts)
        direct_rates = direct(model, texts, args.max_tokens, 0, 512, args.repeats)
        job_rates, job = synthfleet(model, texts, args.max_tokens, 0, 512, args.rows_per_shard, args.in_flight,
                                    work, args.repeats)
    direct_tps, job_tps = statistics.median(direct_rates), statistics.median(job_rates)
    print(json.dumps({
        "benchmark": "e2e", "prompts": args.prompts, "max_tokens": args.max_tokens,
        "rows_per_shard": args.rows_per_shard, "shards_in_flight": args.in_flight, "repeats": args.repeats,
        "direct_tokens_per_s": round(direct_tps), "synthfleet_tokens_per_s": round(job_tps),
        "ratio": round(job_tps / direct_tps, 3), "direct_runs": [round(r) for r in direct_rates],
        "synthfleet_runs": [round(r) for r in job_rates], "job": job,
    }))


if __name__ == "__main__":
    main()
