"""The coordinator service: a job queue with priorities in front of warm worker pools.

Jobs wait in priority order (FIFO within a priority); up to `max_running_jobs` run at once and share
the workers of their pool fairly. Pools are keyed by model and worker shape and stay warm across
jobs, so a second job on a model starts generating without loading weights again; a pool idle for
`idle_release_s` is released, and pools never ask for more GPUs than the cluster has. Job records
live in the state store, so a restarted coordinator resumes every unfinished job.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from orchestrator import defaults
from orchestrator.commit.shards import CommitOutcome, ShardStats
from orchestrator.errors import ConflictError, NotFoundError, SynthfleetError
from orchestrator.finalize.finish import finalize
from orchestrator.finalize.passes import failure_flag
from orchestrator.plan.planner import Shard
from orchestrator.run.dispatch import PoolDispatcher
from orchestrator.run.driver import PreparedJob, Tracker, execute, prepare
from orchestrator.run.pool import WorkerPool, fitting_workers
from orchestrator.run.preflight import check_spec
from orchestrator.run.ray_runtime import ensure_ray
from orchestrator.service.metrics import Metrics
from orchestrator.service.records import JobRecord, JobState, JobStore
from orchestrator.spec.job import JobSpec, Resources
from orchestrator.spec.model import ModelSpec
from orchestrator.storage import open_store
from orchestrator.storage.base import drain_storage_stats
from workers.shard import WorkerCounts

log = logging.getLogger(__name__)


def pool_key(model: ModelSpec, resources: Resources) -> str:
    """Pools are shared by jobs with the same model, engine arguments and worker shape."""
    shape = (model.model_dump_json(), resources.gpus_per_worker, resources.cpus_per_worker)
    return hashlib.sha256(repr(shape).encode()).hexdigest()[:16]


@dataclass
class PoolEntry:
    pool: WorkerPool
    dispatcher: PoolDispatcher
    loop: asyncio.Task[None]
    idle_since: float = field(default_factory=time.monotonic)
    claims: int = 0  # jobs between taking this pool and finishing with it (growing it included)


class RecordTracker(Tracker):
    """A run's tracker that also keeps the job record and the metrics current."""

    def __init__(self, record: JobRecord, job: PreparedJob, metrics: Metrics):
        super().__init__(job.plan)
        self.record, self.metrics = record, metrics
        record.request_counts.total = job.plan.total_rows

    def committed(self, stats: ShardStats) -> None:
        m, job_id = self.metrics, self.record.id
        self.record.request_counts.failed += stats.rows_failed
        self.record.prompt_tokens += stats.prompt_tokens
        self.record.completion_tokens += stats.completion_tokens
        m.rows.labels(job_id, "ok").inc(stats.rows_ok)
        m.rows.labels(job_id, "failed").inc(stats.rows_failed)
        for code, count in stats.failed.items():
            m.row_errors.labels(job_id, code).inc(count)
        for reason, count in stats.rejected.items():
            m.rows_rejected.labels(job_id, reason).inc(count)
        for score, count in stats.judge_scores.items():
            for _ in range(count):
                m.judge_score.labels(job_id).observe(int(score))
        m.shards.labels(job_id, "committed").inc()
        m.shard_duration.labels(self.record.spec.model.name).observe(stats.seconds)
        m.storage_bytes.labels(job_id).inc(stats.bytes)

    def retried(self, reason: str) -> None:
        self.record.retries += 1
        self.metrics.retries.labels(self.record.id, reason).inc()

    def skipped(self, shard: Shard, outcome: CommitOutcome | None) -> None:
        self.metrics.shards.labels(self.record.id, "skipped" if outcome is None else "lost").inc()

    def done(self, shard: Shard, outcome: CommitOutcome | None) -> None:
        super().done(shard, outcome)
        total, elapsed = max(1, self.plan.total_rows), max(1e-9, self.finished - self.started)
        self.record.request_counts.completed = self.rows_done
        self.record.progress = self.rows_done / total
        self.record.tokens_per_s = self.tokens / elapsed
        rate = (self.rows_done - self.rows_before) / elapsed
        self.metrics.job_progress.labels(self.record.id).set(self.record.progress)
        self.metrics.job_eta.labels(self.record.id).set((total - self.rows_done) / rate if rate else 0)


class Coordinator:
    """Owns job records, the queue and the pools; everything runs on one asyncio loop."""

    def __init__(self, state_uri: str, *, ray_address: str | None = None, metrics: Metrics | None = None,
                 max_running_jobs: int = defaults.MAX_RUNNING_JOBS, idle_release_s: float = defaults.IDLE_RELEASE_S,
                 pools: list[WorkerPool] | None = None):
        self.records = JobStore(open_store(state_uri))
        self.ray_address, self.max_running = ray_address, max_running_jobs
        self.idle_release_s = idle_release_s
        self.metrics = metrics or Metrics()
        self.jobs: dict[str, JobRecord] = {}
        self.running: dict[str, asyncio.Task[None]] = {}
        self.pools: dict[str, PoolEntry] = {}
        self._given_pools = pools or []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load job records (resuming unfinished jobs) and start the scheduling loop."""
        ensure_ray(self.ray_address, worker_logs=False)
        for pool in self._given_pools:
            self._adopt(pool)
        for record in await asyncio.to_thread(self.records.load_all):
            if record.state == JobState.CANCELLING:
                record.move(JobState.CANCELLED)
            elif record.state in (JobState.IN_PROGRESS, JobState.FINALIZING):
                log.info("resuming %s", record.id)
                record.move(JobState.QUEUED)
            self.jobs[record.id] = record
            await self._save(record)
        self._seq = itertools.count(max((r.sequence for r in self.jobs.values()), default=0) + 1)
        self._loop_task = asyncio.ensure_future(self._schedule_loop())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        for entry in self.pools.values():
            entry.dispatcher.close()
        for task in self.running.values():
            task.cancel()
        await asyncio.gather(*self.running.values(), *(e.loop for e in self.pools.values()), return_exceptions=True)
        for entry in self.pools.values():
            if entry.pool not in self._given_pools:
                entry.pool.close()

    def _adopt(self, pool: WorkerPool) -> PoolEntry:
        dispatcher = PoolDispatcher(pool, on_counts=self._on_counts)
        entry = PoolEntry(pool, dispatcher, asyncio.ensure_future(dispatcher.run()))
        self.pools[pool_key(pool.model, pool.resources)] = entry
        return entry

    # --- API ------------------------------------------------------------------------------------

    async def submit(self, spec: JobSpec, *, priority: int = 0, idempotency_key: str | None = None) -> JobRecord:
        """Queue a job (validated first: SpecError, nothing queued). Same spec, same job."""
        await asyncio.to_thread(check_spec, spec)
        fitting_workers(spec.resources)  # SpecError when the cluster could never hold one worker
        job_id = spec.job_id
        if idempotency_key is not None:
            digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()
            job_id = await asyncio.to_thread(self.records.claim_key, idempotency_key, job_id, digest)
        existing = self.jobs.get(job_id)
        if existing is not None:
            if existing.spec != spec:
                raise ConflictError(f"job {job_id} exists with a different output or resources")
            if existing.state in (JobState.FAILED, JobState.CANCELLED):
                existing.errors, existing.cancel_requested = [], False
                existing.move(JobState.QUEUED)
                await self._save(existing)
                self._wake.set()
            return existing
        record = JobRecord(id=job_id, spec=spec, priority=priority, sequence=next(self._seq))
        record.move(JobState.QUEUED)
        self.jobs[job_id] = record
        await self._save(record)
        self._wake.set()
        return record

    def get(self, job_id: str) -> JobRecord:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFoundError(f"no job {job_id!r}") from None

    def list(self, state: JobState | None = None) -> list[JobRecord]:
        jobs = sorted(self.jobs.values(), key=lambda r: r.sequence)
        return [r for r in jobs if state is None or r.state == state]

    async def cancel(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record.terminal:
            return record
        record.cancel_requested = True
        if record.state == JobState.QUEUED:
            record.move(JobState.CANCELLED)
        else:
            record.move(JobState.CANCELLING)
            entry = self.pools.get(pool_key(record.spec.model, record.spec.resources))
            for run in entry.dispatcher.runs if entry else []:
                if run.plan.job_id == job_id:
                    entry.dispatcher.cancel(run)
        await self._save(record)
        return record

    # --- scheduling -----------------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        last_save = time.monotonic()
        while True:
            self._start_queued()
            self._release_idle_pools()
            self._update_gauges()
            self._count_storage(drain_storage_stats())  # the coordinator's own state-store calls
            self.metrics.expire()
            if time.monotonic() - last_save > defaults.RECORD_SAVE_S:
                last_save = time.monotonic()
                for job_id in list(self.running):
                    await self._save(self.jobs[job_id])
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=defaults.SCHEDULER_TICK_S)
            except TimeoutError:
                pass

    def _start_queued(self) -> None:
        queued = sorted((r for r in self.jobs.values() if r.state == JobState.QUEUED),
                        key=lambda r: (-r.priority, r.sequence))
        for record in queued:
            if len(self.running) >= self.max_running:
                return
            if self._capacity(record.spec) < 1 and pool_key(record.spec.model, record.spec.resources) not in self.pools:
                continue  # waits for GPUs held by other pools to be released
            self.running[record.id] = asyncio.ensure_future(self._run(record))

    def _used(self, resource: str, except_key: str) -> float:
        total = 0.0
        for key, entry in self.pools.items():
            if key != except_key:
                per = entry.pool.resources.gpus_per_worker if resource == "GPU" else entry.pool.resources.cpus_per_worker
                total += per * len(entry.pool.workers)
        return total

    def _capacity(self, spec: JobSpec) -> int:
        """Workers of this shape that fit beside the other pools (releasing idle ones if needed)."""
        key, r, cluster = pool_key(spec.model, spec.resources), spec.resources, ray.cluster_resources()
        fits = [r.workers]
        for resource, per in (("GPU", r.gpus_per_worker), ("CPU", r.cpus_per_worker)):
            if per:
                free = cluster.get(resource, 0) - self._used(resource, key)
                if free < per:
                    self._release_idle_pools(force=True, keep=key)
                    free = cluster.get(resource, 0) - self._used(resource, key)
                fits.append(int(free // per))
        return max(0, min(fits))

    def _release_idle_pools(self, *, force: bool = False, keep: str | None = None) -> None:
        now = time.monotonic()
        for key, entry in list(self.pools.items()):
            if entry.claims or entry.dispatcher.busy or key == keep:
                entry.idle_since = now
                continue
            if entry.pool in self._given_pools:
                continue
            if force or now - entry.idle_since > self.idle_release_s:
                log.info("releasing idle pool for %s", entry.pool.model.name)
                entry.dispatcher.close()
                entry.pool.close()
                del self.pools[key]
                for state in ("busy", "idle"):
                    self.metrics.workers.labels(entry.pool.model.name, state).set(0)

    def _claim(self, spec: JobSpec) -> PoolEntry:
        """The pool for `spec` (made if needed), held from idle release until the claim is dropped."""
        key = pool_key(spec.model, spec.resources)
        entry = self.pools.get(key) or self._adopt(WorkerPool(spec.model, spec.resources))
        entry.claims += 1
        return entry

    async def _grow(self, entry: PoolEntry, spec: JobSpec) -> None:
        want = min(spec.resources.workers, len(entry.pool.workers) + self._capacity(spec))
        if len(entry.pool.workers) < want:
            before = set(entry.pool.workers)
            await entry.pool.grow(want)
            for wid, worker in entry.pool.workers.items():
                if wid not in before and worker.info is not None:
                    self.metrics.engine_load.labels(spec.model.name).observe(worker.info.load_seconds)

    async def _run(self, record: JobRecord) -> None:
        try:
            record.move(JobState.IN_PROGRESS)
            await self._save(record)
            job = await asyncio.to_thread(prepare, record.spec)
            record.output = job.store.uri
            if job.manifest is not None:
                self._settle_counts(record, job.manifest)
            else:
                tracker = RecordTracker(record, job, self.metrics)
                if len(job.committed) < job.plan.num_shards:
                    entry = self._claim(record.spec)
                    try:
                        await self._grow(entry, record.spec)
                        report = await execute(job, entry.dispatcher, tracker)
                        record.workers_replaced += report.workers_replaced
                    finally:
                        entry.claims -= 1
                        entry.idle_since = time.monotonic()
                    if report.cancelled:
                        raise asyncio.CancelledError
                record.move(JobState.FINALIZING)
                await self._save(record)
                manifest = await asyncio.to_thread(finalize, job.store, record.spec, job.plan, tracker.stats,
                                                   record.timestamps[JobState.IN_PROGRESS])
                self._settle_counts(record, manifest)
                self.metrics.quality(record.id, manifest["quality"])
                flag = failure_flag(manifest["quality"]["rows"])
                record.warnings = [flag] if flag else []
            record.progress = 1.0
            record.move(JobState.COMPLETED)
        except asyncio.CancelledError:
            if not record.cancel_requested:  # the service is stopping: leave the job to resume
                raise
            record.move(JobState.CANCELLED)
        except Exception as e:  # a job's failure never stops the service
            log.exception("job %s failed", record.id)
            record.errors.append(str(e))
            record.move(JobState.FAILED)
        finally:
            self.running.pop(record.id, None)
            self.metrics.job_finished(record.id, completed=record.state == JobState.COMPLETED)
            await self._save(record)
            self._wake.set()

    # --- bookkeeping ----------------------------------------------------------------------------

    @staticmethod
    def _settle_counts(record: JobRecord, manifest: dict[str, Any]) -> None:
        """The manifest is authoritative: counts checkpointed before a restart may lag it."""
        record.prompt_tokens, record.completion_tokens = manifest["prompt_tokens"], manifest["completion_tokens"]
        record.request_counts.total = record.request_counts.completed = manifest["input_rows"]
        record.request_counts.failed = manifest["rows_failed"]

    def _on_counts(self, counts: WorkerCounts) -> None:
        for job_id, c in counts.jobs.items():
            record = self.jobs.get(job_id)
            model = record.spec.model.name if record else "unknown"
            self.metrics.generated_tokens.labels(job_id, model).inc(c.get("completion_tokens", 0))
            self.metrics.prompt_tokens.labels(job_id, model).inc(c.get("prompt_tokens", 0))
        self._count_storage(counts.storage)

    def _count_storage(self, stats: dict[str, int]) -> None:
        for key, n in stats.items():
            if key == "retries":
                self.metrics.storage_retries.inc(n)
            else:
                operation, _, outcome = key.partition("|")
                self.metrics.storage_operations.labels(operation, outcome).inc(n)

    def _update_gauges(self) -> None:
        m = self.metrics
        m.queue_depth.set(sum(r.state == JobState.QUEUED for r in self.jobs.values()))
        for state in JobState:
            m.jobs.labels(state.value).set(sum(r.state == state for r in self.jobs.values()))
        for entry in self.pools.values():
            load = entry.dispatcher.load
            busy = sum(1 for wid in entry.pool.workers if load.get(wid, 0) > 0)
            m.workers.labels(entry.pool.model.name, "busy").set(busy)
            m.workers.labels(entry.pool.model.name, "idle").set(len(entry.pool.workers) - busy)

    async def _save(self, record: JobRecord) -> None:
        try:
            await asyncio.to_thread(self.records.save, record)
        except SynthfleetError:
            log.exception("could not save job %s", record.id)

