"""The coordinator service: a job queue with priorities in front of warm worker pools.

Jobs wait in priority order (FIFO within a priority); up to `max_running_jobs` run at once and share
the workers of their pool fairly. Pools are keyed by model and worker shape and stay warm across
jobs, so a second job on a model starts generating without loading weights again; a pool idle for
`idle_release_s` is released, and pools never ask for more GPUs than the cluster has. With
`autoscale` the cluster grows to the queue instead: the coordinator asks Ray's autoscaler for the
workers its running and next jobs want (orchestrator/service/demand.py), a job the cluster cannot hold
yet waits in the queue for the nodes, and pools grow as nodes arrive. Job records live in the state
store, so a restarted coordinator resumes every unfinished job.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time

from orchestrator import defaults
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.finalize.passes import failure_flag
from orchestrator.run.driver import drive, prepare
from orchestrator.run.pool import WorkerPool, fitting_workers
from orchestrator.run.preflight import check_spec
from orchestrator.run.ray_runtime import ensure_ray
from orchestrator.service.demand import Demand
from orchestrator.service.metrics import Metrics
from orchestrator.service.pools import PoolManager
from orchestrator.service.records import JobRecord, JobState, JobStore
from orchestrator.service.tracking import RecordKeeper, RecordTracker
from orchestrator.spec.job import JobSpec
from orchestrator.storage import open_store
from orchestrator.storage.base import drain_storage_stats
from workers.shard import WorkerCounts

log = logging.getLogger(__name__)


class Coordinator:
    """The job queue and its scheduling on one asyncio loop; pools (`PoolManager`) and records and
    metrics (`RecordKeeper`) are kept by the parts it owns."""

    def __init__(self, state_uri: str, *, ray_address: str | None = None, metrics: Metrics | None = None,
                 max_running_jobs: int = defaults.MAX_RUNNING_JOBS, idle_release_s: float = defaults.IDLE_RELEASE_S,
                 pools: list[WorkerPool] | None = None, autoscale: bool = False):
        self.records = JobStore(open_store(state_uri))
        self.autoscale, self.demand = autoscale, Demand()
        self.ray_address, self.max_running = ray_address, max_running_jobs
        self.metrics = metrics or Metrics()
        self.keeper = RecordKeeper(self.records, self.metrics)
        self.pools = PoolManager(self.metrics, self._on_counts, idle_release_s, pools)
        self.jobs: dict[str, JobRecord] = {}
        self.running: dict[str, asyncio.Task[None]] = {}
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load job records (resuming unfinished jobs) and start the scheduling loop."""
        ensure_ray(self.ray_address, worker_logs=False)
        self.pools.start()
        for record in await asyncio.to_thread(self.records.load_all):
            self.jobs[record.id] = record
            if record.state == JobState.CANCELLING:
                record.move(JobState.CANCELLED)
            elif record.state in (JobState.IN_PROGRESS, JobState.FINALIZING):
                log.info("resuming %s", record.id)
                record.move(JobState.QUEUED)
            else:
                continue
            await self.keeper.save(record)  # only the records whose state changed
        self._seq = itertools.count(max((r.sequence for r in self.jobs.values()), default=0) + 1)
        self._loop_task = asyncio.ensure_future(self._schedule_loop())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        if self.autoscale:
            self.demand.release()  # a stopped coordinator keeps no nodes up
        self.pools.close_dispatchers()
        for task in self.running.values():
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
        await self.pools.stop()

    # --- API ------------------------------------------------------------------------------------

    async def submit(self, spec: JobSpec, *, priority: int = 0, idempotency_key: str | None = None) -> JobRecord:
        """Queue a job (validated first: SpecError, nothing queued). Same spec, same job."""
        await asyncio.to_thread(check_spec, spec)
        if not self.autoscale:  # with an autoscaler the cluster grows to hold it
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
                await self.keeper.save(existing)
                self._wake.set()
            return existing
        record = JobRecord(id=job_id, spec=spec, priority=priority, sequence=next(self._seq))
        record.move(JobState.QUEUED)
        self.jobs[job_id] = record
        await self.keeper.save(record)
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
            entry = self.pools.entry_for(record.spec)
            for run in entry.dispatcher.runs if entry else []:
                if run.plan.job_id == job_id:
                    entry.dispatcher.cancel(run)
        await self.keeper.save(record)
        return record

    # --- scheduling -----------------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        last_save = time.monotonic()
        while True:
            queued = self._queued()
            self._start_queued(queued)
            if self.autoscale:
                self.demand.update(self._wanted(queued))
                self.pools.regrow()
            self.pools.release_idle()
            self.keeper.update_gauges(self.jobs)
            self.pools.update_gauges()
            self.keeper.count_storage(drain_storage_stats())  # the coordinator's own state-store calls
            self.metrics.expire()
            if time.monotonic() - last_save > defaults.RECORD_SAVE_S:
                last_save = time.monotonic()
                for job_id in list(self.running):
                    await self.keeper.save(self.jobs[job_id])
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=defaults.SCHEDULER_TICK_S)
            except TimeoutError:
                pass

    def _queued(self) -> list[JobRecord]:
        """Queued jobs in the order they start: priority, then submission."""
        return sorted((r for r in self.jobs.values() if r.state == JobState.QUEUED),
                      key=lambda r: (-r.priority, r.sequence))

    def _wanted(self, queued: list[JobRecord]) -> list[JobSpec]:
        """The specs whose workers the cluster should hold: running jobs, then the `queued` ones that
        start next (as many as `max_running_jobs` leaves room for; one just started is running)."""
        running = [self.jobs[job_id].spec for job_id in self.running]
        room = max(0, self.max_running - len(running))
        return running + [r.spec for r in queued if r.id not in self.running][:room]

    def _start_queued(self, queued: list[JobRecord]) -> None:
        for record in queued:
            if len(self.running) >= self.max_running:
                return
            if not self.pools.can_start(record.spec):
                continue  # waits for GPUs held by other pools to be released
            self.running[record.id] = asyncio.ensure_future(self._run(record))

    async def _finalizing(self, record: JobRecord) -> None:
        record.move(JobState.FINALIZING)
        await self.keeper.save(record)

    async def _run(self, record: JobRecord) -> None:
        try:
            record.move(JobState.IN_PROGRESS)
            await self.keeper.save(record)
            job = await asyncio.to_thread(prepare, record.spec)
            record.output = job.store.uri
            fresh = job.manifest is None
            tracker = RecordTracker(record, job, self.metrics)
            manifest = await drive(job, tracker, self.pools.lease, started_at=record.timestamps[JobState.IN_PROGRESS],
                                   offload=asyncio.to_thread, on_finalizing=lambda: self._finalizing(record))
            record.workers_replaced += tracker.replaced
            self.keeper.settle_counts(record, manifest)
            if fresh:
                self.metrics.quality(record.id, manifest.quality)
                flag = failure_flag(manifest.quality.rows)
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
            await self.keeper.save(record)
            self._wake.set()

    def _on_counts(self, counts: WorkerCounts) -> None:
        self.keeper.count_tokens(counts, self.jobs)
