"""End-to-end throughput: vLLM's LLM.generate directly vs a synthfleet job, side by side in one run.

Same tiny model, same prompts, same per-row seeds and sampling (fixed max_tokens, ignore_eos), the
same engine settings; the job runs one worker on a local Ray runtime and commits Parquet shards to a
local S3 server (moto over HTTP through boto3), or with `--output local` to a local folder.

Each side runs in a child process of its own, so neither pays for the other's idle runtime (Ray's
daemons, a second engine): the child loads its engine, warms it on 64 prompts, then times `--runs`
passes over all the prompts. Engine loading and warm-up are excluded. The sides take turns,
`--repeats` pairs, alternating which goes first, and the ratio is the median of the pairs' ratios,
which damps this shared machine's drifting load. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

PROMPT_TOPICS = ["rivers", "proofs", "markets", "cells", "orbits", "poems", "bridges", "storms"]
SEED, MAX_MODEL_LEN, WARM_ROWS = 0, 512, 64


def prompts(n: int) -> list[str]:
    return [f"Write a short note number {i} about {PROMPT_TOPICS[i % len(PROMPT_TOPICS)]}." for i in range(n)]


def direct(args: argparse.Namespace, texts: list[str]) -> list[float]:
    """Tokens/s of LLM.generate on all prompts at once, `args.runs` times on one warm engine."""
    from vllm import LLM, SamplingParams

    from orchestrator.plan.planner import row_seed
    from orchestrator.spec.model import ModelSpec
    from workers.engine import memory_args

    # The same explicit KV cache size as the job's worker gets on this node.
    memory = memory_args(ModelSpec(path=str(args.model)), on_gpu=False)
    llm = LLM(model=str(args.model), dtype="float32", max_model_len=MAX_MODEL_LEN, enable_chunked_prefill=False,
              **memory)
    params = [SamplingParams(max_tokens=args.max_tokens, ignore_eos=True, temperature=1.0, seed=row_seed(SEED, i))
              for i in range(len(texts))]
    llm.generate(texts[:WARM_ROWS], params[:WARM_ROWS], use_tqdm=False)
    rates = []
    for _ in range(args.runs):
        started = time.perf_counter()
        outs = llm.generate(texts, params, use_tqdm=False)
        rates.append(sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - started))
    llm.llm_engine.engine_core.shutdown()
    return rates


def s3_server() -> Any:
    """A moto S3 server on 127.0.0.1 with the bucket `bench`, reached through the AWS environment."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"})
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    return server


def synthfleet(args: argparse.Namespace, texts: list[str]) -> list[float]:
    """Tokens/s of `args.runs` synthfleet jobs (a new job id each) on one warm worker."""
    import asyncio

    from orchestrator.run.driver import run_job
    from orchestrator.run.pool import WorkerPool
    from orchestrator.run.ray_runtime import ensure_ray
    from orchestrator.spec.load import parse_spec

    server = s3_server() if args.output == "s3" else None
    uri = "s3://bench/e2e" if server else str(args.work / "out")

    def spec(name: str, rows: list[str]) -> Any:
        prompt_file = args.work / f"{name}.jsonl"
        prompt_file.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in rows))
        return parse_spec({
            "name": name,
            "model": {"path": str(args.model), "dtype": "float32", "max_model_len": MAX_MODEL_LEN},
            "prompts": {"file": {"uri": str(prompt_file)}},
            "sampling": {"max_tokens": args.max_tokens, "ignore_eos": True, "temperature": 1.0, "seed": SEED},
            "output": {"uri": uri, "rows_per_shard": args.rows_per_shard},
            "resources": {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": os.cpu_count() or 1,
                          "shards_in_flight": args.in_flight},
        })

    ensure_ray(worker_logs=False)
    warm = spec(f"warm-{os.getpid()}", texts[:WARM_ROWS])
    pool = WorkerPool(warm.model, warm.resources)
    asyncio.run(pool.grow(1))
    run_job(warm, pool=pool)
    rates = []
    for k in range(args.runs):
        result = run_job(spec(f"e2e-{os.getpid()}-{k}", texts), pool=pool)
        assert result.rows_ok == len(texts), result
        rates.append(result.tokens_per_s)
    pool.close()
    if server:
        server.stop()
    return rates


def _stolen_s() -> float:
    """CPU seconds the host has taken from this machine's cores so far (steal in /proc/stat; 0 elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def side_output(script: str, name: str, flags: list[str]) -> dict[str, Any]:
    """Run one side of `script` in a child process: the JSON object it prints last, with the CPU seconds
    the host stole meanwhile (`host_steal_s`: a noisy neighbour, a pair to distrust)."""
    cmd = [sys.executable, script, "--side", name, *flags]
    stolen = _stolen_s()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1]) | {"host_steal_s": round(_stolen_s() - stolen, 1)}


def paired(repeats: int, run: Callable[[str], float]) -> list[tuple[float, float]]:
    """(direct, synthfleet) figures of `repeats` pairs of `run(side)`, alternating which side goes first,
    against drift in the machine's load."""
    pairs = []
    for k in range(repeats):
        order = ["direct", "synthfleet"] if k % 2 == 0 else ["synthfleet", "direct"]
        runs = {name: run(name) for name in order}
        pairs.append((runs["direct"], runs["synthfleet"]))
    return pairs


def side(args: argparse.Namespace, name: str, steal: list[float]) -> float:
    """The median tokens/s of one side's runs, in a child process (its host steal appended to `steal`)."""
    flags = ["--model", str(args.model), "--work", str(args.work), "--runs", str(args.runs), "--prompts",
             str(args.prompts), "--max-tokens", str(args.max_tokens), "--rows-per-shard", str(args.rows_per_shard),
             "--in-flight", str(args.in_flight), "--output", args.output]
    out = side_output(__file__, name, flags)
    steal.append(out["host_steal_s"])
    return statistics.median(out["rates"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rows-per-shard", type=int, default=128)
    ap.add_argument("--in-flight", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="pairs of sides; the median pair ratio is reported")
    ap.add_argument("--runs", type=int, default=2, help="timed passes per side in each pair (their median counts)")
    ap.add_argument("--output", choices=["s3", "local"], default="s3",
                    help="the job writes to a local S3 server (default) or a local folder")
    ap.add_argument("--model", type=Path, help="model folder (default: build the tiny model)")
    ap.add_argument("--side", choices=["direct", "synthfleet"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    texts = prompts(args.prompts)
    if args.side:
        rates = (direct if args.side == "direct" else synthfleet)(args, texts)
        print(json.dumps({"rates": rates}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.work = Path(tmp)
        if args.model is None:
            from workers.tiny_model import build_tiny_model

            args.model = build_tiny_model(args.work / "tiny")
        steal: list[float] = []
        pairs = paired(args.repeats, lambda name: side(args, name, steal))
    ratios = [j / d for d, j in pairs]
    print(json.dumps({
        "benchmark": "e2e", "prompts": args.prompts, "max_tokens": args.max_tokens,
        "rows_per_shard": args.rows_per_shard, "shards_in_flight": args.in_flight, "output": args.output,
        "repeats": args.repeats, "runs": args.runs,
        "direct_tokens_per_s": round(statistics.median(d for d, _ in pairs)),
        "synthfleet_tokens_per_s": round(statistics.median(j for _, j in pairs)),
        "ratio": round(statistics.median(ratios), 3), "pair_ratios": [round(r, 3) for r in ratios],
        "direct_runs": [round(d) for d, _ in pairs], "synthfleet_runs": [round(j) for _, j in pairs],
        "host_steal_s_per_side": steal,  # in the order the sides ran (pairs alternate which goes first)
    }))


if __name__ == "__main__":
    main()
