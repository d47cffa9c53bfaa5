"""Coordinator scale: the sleeping fake engine stands in for GPUs (fixed tokens/s, no CPU), so 32
simulated GPUs fit on 2 cores and only synthfleet's own overhead is measured. One run, side by side:

- scaling efficiency thr(N) / (N * thr(1)) for N = 1, 8, 32 workers;
- sustained shards/s through the coordinator (near-empty shards, 8 workers);
- per-shard dispatch round trip p50/p99 next to a raw Ray actor call measured in the same run;
- coordinator (driver) memory growth over a 1,000,000-row job;
- throughput with the Prometheus exporter on vs off.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import ray  # noqa: E402

from orchestrator.run.dispatch import PoolDispatcher  # noqa: E402
from orchestrator.run.driver import Tracker, execute, prepare  # noqa: E402
from orchestrator.run.pool import WorkerPool  # noqa: E402
from orchestrator.run.ray_runtime import ensure_ray
from orchestrator.service.metrics import Metrics  # noqa: E402
from orchestrator.service.records import JobRecord  # noqa: E402
from orchestrator.service.tracking import RecordTracker  # noqa: E402
from orchestrator.spec.job import JobSpec  # noqa: E402
from orchestrator.spec.load import parse_spec
from workers.shard import WorkerCounts  # noqa: E402


def fake_spec(out: Path, name: str, *, rows: int, rows_per_shard: int, workers: int, max_tokens: int,
              tokens_per_s: float, in_flight: int) -> JobSpec:
    return parse_spec({
        "name": name,
        "model": {"path": "fake", "engine": "fake", "engine_args": {"tokens_per_s": tokens_per_s}},
        "prompts": {"template": {"text": "row {{ i }} of {{ j }}",
                                 "seeds": {"i": list(range(1000)), "j": list(range(max(1, -(-rows // 1000))))},
                                 "sample": {"n": rows, "seed": 1}}},
        "sampling": {"max_tokens": max_tokens},
        "output": {"uri": str(out), "rows_per_shard": rows_per_shard},
        "resources": {"workers": workers, "gpus_per_worker": 0, "cpus_per_worker": 0, "shards_in_flight": in_flight},
    })


class Timed(Tracker):
    """A tracker that keeps each completion time (for per-shard latency)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.times: list[float] = []
        self.worker_seconds: list[float] = []

    def committed(self, stats: Any) -> None:
        self.times.append(time.perf_counter())
        self.worker_seconds.append(stats.seconds)


async def run(spec: JobSpec, pool: WorkerPool, *, exporter: bool = False) -> tuple[float, Timed | Tracker]:
    """Seconds to generate the whole job on `pool` (workers already warm)."""
    job = prepare(spec)
    if exporter:
        metrics = Metrics()
        record = JobRecord(id=job.plan.job_id, spec=spec)
        tracker: Tracker = RecordTracker(record, job, metrics)
        def export(counts: WorkerCounts) -> None:
            for job_id, c in counts.jobs.items():
                metrics.generated_tokens.labels(job_id, "fake").inc(c.get("completion_tokens", 0))

        dispatcher = PoolDispatcher(pool, on_counts=export)
    else:
        tracker, dispatcher = Timed(job.plan), PoolDispatcher(pool)
    loop = asyncio.ensure_future(dispatcher.run())
    started = time.perf_counter()
    await execute(job, dispatcher, tracker)
    seconds = time.perf_counter() - started
    dispatcher.close()
    await loop
    return seconds, tracker


async def warm_pool(spec: JobSpec, n: int, tmp: Path) -> WorkerPool:
    """A pool of `n` workers that have each run a shard already (imports and caches are warm)."""
    pool = WorkerPool(spec.model, spec.resources)
    await pool.grow(n)
    warm = fake_spec(tmp / f"warm-{spec.name}", f"warm-{spec.name}", rows=4 * n * 3, rows_per_shard=4, workers=n,
                     max_tokens=1, tokens_per_s=1e6, in_flight=3)
    await run(warm.model_copy(update={"model": spec.model, "resources": spec.resources}), pool)
    return pool


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def scaling(tmp: Path, sizes: list[int], shards_per_worker: int) -> dict[str, Any]:
    throughput = {}
    for n in sizes:
        spec = fake_spec(tmp / f"scale{n}", f"scale-{n}", rows=16 * shards_per_worker * n, rows_per_shard=16,
                         workers=n, max_tokens=200, tokens_per_s=100, in_flight=3)
        pool = await warm_pool(spec, n, tmp)
        seconds, _ = await run(spec, pool)
        pool.close()
        throughput[n] = spec.prompts.template.sample.n / seconds  # type: ignore[union-attr]
    return {"rows_per_s": {str(n): round(t, 1) for n, t in throughput.items()},
            "efficiency": {str(n): round(throughput[n] / (n * throughput[sizes[0]]), 3) for n in sizes}}


async def shards_per_s(tmp: Path, shards: int) -> float:
    spec = fake_spec(tmp / "rate", "rate", rows=shards, rows_per_shard=1, workers=8, max_tokens=1,
                     tokens_per_s=1e6, in_flight=8)
    pool = await warm_pool(spec, 8, tmp)
    seconds, _ = await run(spec, pool)
    pool.close()
    return shards / seconds


async def latency(tmp: Path, shards: int) -> dict[str, float]:
    spec = fake_spec(tmp / "lat", "lat", rows=shards, rows_per_shard=1, workers=1, max_tokens=1,
                     tokens_per_s=1e6, in_flight=1)
    pool = await warm_pool(spec, 1, tmp)
    actor = next(iter(pool.workers.values())).actor
    raw = []
    for _ in range(shards):
        t = time.perf_counter()
        await actor.stats.remote()
        raw.append(time.perf_counter() - t)
    _, tracker = await run(spec, pool)
    pool.close()
    assert isinstance(tracker, Timed)
    # One worker, one shard in flight: the gap between completions is one shard's full round trip.
    trips = [b - a for a, b in zip(tracker.times, tracker.times[1:])]
    # Minus render + generate + assemble (timed in the worker): commit I/O, Ray and dispatch remain.
    rest = [trip - work for trip, work in zip(trips, tracker.worker_seconds[1:])]
    ms = 1000.0
    return {"shard_round_trip_p50_ms": round(pct(trips, 0.5) * ms, 2),
            "shard_round_trip_p99_ms": round(pct(trips, 0.99) * ms, 2),
            "commit_and_dispatch_p50_ms": round(pct(rest, 0.5) * ms, 2),
            "commit_and_dispatch_p99_ms": round(pct(rest, 0.99) * ms, 2),
            "raw_actor_call_p50_ms": round(pct(raw, 0.5) * ms, 2), "raw_actor_call_p99_ms": round(pct(raw, 0.99) * ms, 2)}


async def memory(tmp: Path, rows: int) -> dict[str, float]:
    spec = fake_spec(tmp / "mem", "mem", rows=rows, rows_per_shard=1000, workers=8, max_tokens=1,
                     tokens_per_s=1e6, in_flight=3)
    pool = await warm_pool(spec, 8, tmp)
    me, peak, stop = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.2)

    baseline = me.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    seconds, _ = await run(spec, pool)
    stop.set()
    sampler.join()
    pool.close()
    return {"rows": rows, "seconds": round(seconds, 1), "rss_growth_mb": round((peak[0] - baseline) / 2**20, 1)}


async def exporter(tmp: Path, repeats: int) -> dict[str, float]:
    spec_of = lambda k: fake_spec(tmp / f"exp{k}", f"exp-{k}", rows=16 * 3 * 8 * 4, rows_per_shard=16,  # noqa: E731
                                  workers=8, max_tokens=100, tokens_per_s=100, in_flight=3)
    pool = await warm_pool(spec_of(0), 8, tmp)
    on, off = [], []
    for k in range(repeats):
        off.append((await run(spec_of(2 * k), pool, exporter=False))[0])
        on.append((await run(spec_of(2 * k + 1), pool, exporter=True))[0])
    pool.close()
    return {"seconds_off": round(statistics.median(off), 3), "seconds_on": round(statistics.median(on), 3),
            "throughput_on_over_off": round(statistics.median(off) / statistics.median(on), 3)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        return {
            "benchmark": "dispatch",
            "scaling": await scaling(tmp, [1, 8, 32], args.shards_per_worker),
            "sustained_shards_per_s": round(await shards_per_s(tmp, args.rate_shards), 1),
            "latency": await latency(tmp, args.latency_shards),
            "memory": await memory(tmp, args.memory_rows),
            "exporter": await exporter(tmp, args.exporter_repeats),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shards-per-worker", type=int, default=9)
    ap.add_argument("--rate-shards", type=int, default=2000)
    ap.add_argument("--latency-shards", type=int, default=300)
    ap.add_argument("--memory-rows", type=int, default=1_000_000)
    ap.add_argument("--exporter-repeats", type=int, default=3)
    args = ap.parse_args()
    ensure_ray(worker_logs=False)
    print(json.dumps(asyncio.run(main_async(args))))
    ray.shutdown()


if __name__ == "__main__":
    main()
