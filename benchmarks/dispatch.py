"""Coordinator scale: the sleeping fake engine stands in for GPUs (fixed tokens/s, no CPU), so only
synthfleet's own overhead is measured. Two pools stand side by side: one actor process per simulated
GPU (`WorkerPool`, what production runs) up to 32, and the simulated fleet (`FleetPool`: a few
processes hosting every engine) up to 1,000 GPUs. One run measures:

- scaling efficiency thr(N) / (N * thr(1)), actors at N = 1, 8, 32 and the fleet at 1, 8, 32, 128, 1000;
- sustained shards/s through the coordinator (20,000 1-row shards on the fleet without commits: the
  coordinator's capacity) and with real commits (there the workers' own CPU on the same two cores is
  the bound), each with the driver's own CPU per shard in µs (its process CPU time over the run,
  divided by the shards);
- per-shard dispatch round trip p50/p99 next to a raw Ray actor call measured in the same run;
- coordinator (driver) memory growth over a large job (10,000,000 rows by default) and with 1,000 jobs
  queued in the service;
- a coordinator restart with 1,000 job records in its state store;
- throughput with the Prometheus exporter on vs off.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import ray  # noqa: E402

from orchestrator import defaults  # noqa: E402
from orchestrator.run.dispatch import PoolDispatcher  # noqa: E402
from orchestrator.run.driver import Tracker, execute, prepare  # noqa: E402
from orchestrator.run.fleet import FleetPool  # noqa: E402
from orchestrator.run.handles import Pool  # noqa: E402
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


async def run(spec: JobSpec, pool: Pool, *, exporter: bool = False) -> tuple[float, Timed | Tracker]:
    """Seconds to generate the whole job on `pool` (workers already warm)."""
    job = prepare(spec)
    if exporter:
        metrics = Metrics()
        record = JobRecord(id=job.plan.job_id, spec=spec)
        tracker: Tracker = RecordTracker(record, job, metrics)
        def export(counts: WorkerCounts) -> None:
            for job_id, c in counts.jobs.items():
                metrics.generated_tokens.labels(job_id, "fake", "").inc(c.get("completion_tokens", 0))

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


async def warm_pool(spec: JobSpec, n: int, tmp: Path, fleet: bool = False, commit: bool = True) -> WorkerPool | FleetPool:
    """A pool of `n` workers that have each run a shard already (imports and caches are warm); a fleet
    without `commit` answers each shard after its generation time without writing (the coordinator alone)."""
    pool: WorkerPool | FleetPool = (FleetPool(spec.model, spec.resources, commit=commit) if fleet
                                    else WorkerPool(spec.model, spec.resources))
    await pool.grow(n)
    warm = fake_spec(tmp / f"warm-{spec.name}", f"warm-{spec.name}", rows=n * 3, rows_per_shard=1, workers=n,
                     max_tokens=1, tokens_per_s=1e6, in_flight=3)
    await run(warm.model_copy(update={"model": spec.model, "resources": spec.resources}), pool)
    return pool


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def scaling(tmp: Path, sizes: list[int], *, fleet: bool, rounds: int, max_tokens: int,
                  rows_per_shard: int) -> dict[str, Any]:
    """Each worker runs `rounds` x 3 shards of `rows_per_shard` rows of `max_tokens` at 100 tokens/s, 3 in
    flight: the ideal time is the same at every N, so thr(N) / (N * thr(1)) is what overhead costs. The
    fleet's engines do not write (on a real fleet each GPU's node commits its own shards; two cores
    cannot commit for 1,000), so its figure is the coordinator's; the actors' runs commit every shard."""
    throughput = {}
    for n in sizes:
        spec = fake_spec(tmp / f"scale{n}{fleet}", f"scale-{n}", rows=rows_per_shard * 3 * rounds * n,
                         rows_per_shard=rows_per_shard, workers=n, max_tokens=max_tokens, tokens_per_s=100,
                         in_flight=3)
        pool = await warm_pool(spec, n, tmp, fleet, commit=not fleet)
        seconds, _ = await run(spec, pool)
        pool.close()
        throughput[n] = spec.prompts.template.sample.n / seconds  # type: ignore[union-attr]
    return {"rows_per_s": {str(n): round(t, 1) for n, t in throughput.items()},
            "efficiency": {str(n): round(throughput[n] / (n * throughput[sizes[0]]), 3) for n in sizes}}


async def shards_per_s(tmp: Path, shards: int, *, workers: int, in_flight: int, fleet: bool,
                       commit: bool = True) -> dict[str, float]:
    """1-row, 1-token shards as fast as the coordinator (and, with `commit`, the workers' commits) go;
    the driver's CPU time per shard is its own cost, whatever the machine's load."""
    spec = fake_spec(tmp / f"rate{fleet}{commit}", f"rate-{fleet}-{commit}", rows=shards, rows_per_shard=1,
                     workers=workers, max_tokens=1, tokens_per_s=1e6, in_flight=in_flight)
    pool = await warm_pool(spec, workers, tmp, fleet, commit)
    cpu = psutil.Process().cpu_times()
    seconds, _ = await run(spec, pool)
    used = psutil.Process().cpu_times()
    pool.close()
    driver_s = (used.user - cpu.user) + (used.system - cpu.system)
    return {"shards_per_s": round(shards / seconds, 1), "driver_cpu_us_per_shard": round(1e6 * driver_s / shards, 1),
            "driver_cpu_share": round(driver_s / seconds, 3)}


async def latency(tmp: Path, shards: int) -> dict[str, float]:
    spec = fake_spec(tmp / "lat", "lat", rows=shards, rows_per_shard=1, workers=1, max_tokens=1,
                     tokens_per_s=1e6, in_flight=1)
    pool = await warm_pool(spec, 1, tmp)
    assert isinstance(pool, WorkerPool)
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


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


async def memory(tmp: Path, rows: int) -> dict[str, float]:
    """Driver RSS over a `rows`-row job at the default shard size (256 rows: 39,063 shards for 10M rows),
    on the simulated fleet without commits: what grows with a job in the coordinator (the plan's stream,
    dispatch, the tracker's per-shard stats), at the coordinator's own speed."""
    spec = fake_spec(tmp / "mem", "mem", rows=rows, rows_per_shard=defaults.ROWS_PER_SHARD, workers=64,
                     max_tokens=1, tokens_per_s=1e6, in_flight=8)
    pool = await warm_pool(spec, 64, tmp, fleet=True, commit=False)
    me, peak, stop = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.2)

    baseline = rss()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    seconds, tracker = await run(spec, pool)
    stop.set()
    sampler.join()
    pool.close()
    return {"rows": rows, "shards": len(tracker.stats), "seconds": round(seconds, 1),
            "rss_growth_mb": round((max(peak[0], rss()) - baseline) / 2**20, 1)}


async def queued(tmp: Path, jobs: int) -> dict[str, float]:
    """Driver RSS growth with `jobs` 10M-row jobs queued in the service's coordinator (none running)."""
    from orchestrator.service.coordinator import Coordinator

    coordinator = Coordinator(str(tmp / "queued-state"), max_running_jobs=0)
    await coordinator.start()
    baseline = rss()
    tracemalloc.start()
    for i in range(jobs):  # rows drawn by samplers: the spec stays small, as a user's would
        await coordinator.submit(parse_spec({
            "name": f"queued-{i}", "model": {"path": "fake", "engine": "fake"},
            "prompts": {"template": {"text": "row {{ i }} of {{ j }}", "rows": 10_000_000,
                                     "seeds": {"i": {"uniform_int": [0, 999]}, "j": {"uniform_int": [0, 999]}}}},
            "sampling": {"max_tokens": 256}, "output": {"uri": str(tmp / "queued-out")},
            "resources": {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 0}}))
    grown, (held, _) = rss() - baseline, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    await coordinator.stop()
    return {"jobs": jobs, "rss_growth_mb": round(grown / 2**20, 1),
            "python_heap_kb_per_job": round(held / 1024 / jobs, 1)}  # what the queue holds, whatever RSS reuses


async def restart(tmp: Path, records: int) -> dict[str, float]:
    """A coordinator starting on a state store with `records` job records (half unfinished: they are
    queued again), to the point where it schedules."""
    from orchestrator.service.coordinator import Coordinator
    from orchestrator.service.records import JobState, JobStore
    from orchestrator.storage import open_store

    store = JobStore(open_store(str(tmp / "state")))
    for i in range(records):
        spec = fake_spec(tmp / "restart-out", f"job-{i}", rows=10, rows_per_shard=5, workers=1, max_tokens=1,
                         tokens_per_s=1e6, in_flight=1)
        record = JobRecord(id=spec.job_id, spec=spec, sequence=i)
        record.move(JobState.COMPLETED if i % 2 else JobState.IN_PROGRESS)
        store.save(record)
    coordinator = Coordinator(str(tmp / "state"), max_running_jobs=0)
    started = time.perf_counter()
    await coordinator.start()
    seconds = time.perf_counter() - started
    loaded = len(coordinator.jobs)
    await coordinator.stop()
    return {"records": loaded, "seconds": round(seconds, 2)}


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
        shape = {"rounds": args.rounds, "max_tokens": args.shard_tokens, "rows_per_shard": 1}
        return {
            "benchmark": "dispatch",
            # first, while nothing freed by the other runs can hide the driver's growth
            "memory": await memory(tmp, args.memory_rows),
            "queued_jobs": await queued(tmp, args.queued_jobs),
            "scaling_actors": await scaling(tmp, [1, 8, 32], fleet=False, **shape),
            "scaling_fleet": await scaling(tmp, args.fleet_sizes, fleet=True, **shape),
            "sustained_actors": await shards_per_s(tmp, args.commit_shards, workers=8, in_flight=8, fleet=False),
            "sustained_fleet": await shards_per_s(tmp, args.commit_shards, workers=64, in_flight=8, fleet=True),
            "coordinator_capacity": await shards_per_s(tmp, args.rate_shards, workers=64, in_flight=8, fleet=True,
                                                       commit=False),
            "latency": await latency(tmp, args.latency_shards),
            "restart": await restart(tmp, args.restart_records),
            "exporter": await exporter(tmp, args.exporter_repeats),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fleet-sizes", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8, 32, 128, 1000])
    ap.add_argument("--rounds", type=int, default=2, help="rounds of 3 shards per worker in the scaling runs")
    ap.add_argument("--shard-tokens", type=int, default=2000,
                    help="tokens of a scaling shard at 100 tokens/s: 2000 is a 20 s shard, so 1,000 workers with 3 in "
                         "flight finish 150 shards/s, as 1,000 H100s do")
    ap.add_argument("--rate-shards", type=int, default=20_000, help="1-row shards of the coordinator-capacity run")
    ap.add_argument("--commit-shards", type=int, default=2000,
                    help="1-row shards of each sustained run with real commits (the workers' CPU bounds these)")
    ap.add_argument("--latency-shards", type=int, default=300)
    ap.add_argument("--memory-rows", type=int, default=10_000_000)
    ap.add_argument("--queued-jobs", type=int, default=1000)
    ap.add_argument("--restart-records", type=int, default=1000)
    ap.add_argument("--exporter-repeats", type=int, default=3)
    args = ap.parse_args()
    ensure_ray(worker_logs=False)
    print(json.dumps(asyncio.run(main_async(args))))
    ray.shutdown()


if __name__ == "__main__":
    main()
