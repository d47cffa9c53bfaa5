"""Record and metric keeping: each job's record and the Prometheus series kept current as shards commit.

`RecordTracker` is a run's tracker that also updates the job record and the per-job metrics;
`RecordKeeper` saves records to the state store and turns the workers' counts and the storage
calls into metrics.
"""

from __future__ import annotations

import asyncio
import logging

from orchestrator.commit.shards import CommitOutcome, ShardStats
from orchestrator.errors import SynthfleetError
from orchestrator.finalize.manifest import Manifest
from orchestrator.plan.planner import Shard
from orchestrator.run.driver import PreparedJob, Tracker
from orchestrator.service.metrics import Metrics
from orchestrator.service.records import JobRecord, JobState, JobStore
from workers.shard import WorkerCounts

log = logging.getLogger(__name__)


class RecordTracker(Tracker):
    """A run's tracker that also keeps the job record and the metrics current."""

    def __init__(self, record: JobRecord, job: PreparedJob, metrics: Metrics):
        super().__init__(job.plan)
        self.record, self.metrics = record, metrics
        record.request_counts.total = job.plan.rows

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
        total, elapsed = max(1, self.plan.rows), max(1e-9, self.finished - self.started)
        self.record.request_counts.completed = self.rows_done
        self.record.request_counts.total = self.plan.rows  # a targets job's rounds add rows
        self.record.progress = self.rows_done / total
        self.record.tokens_per_s = self.tokens / elapsed
        rate = (self.rows_done - self.rows_before) / elapsed
        self.metrics.job_progress.labels(self.record.id).set(self.record.progress)
        self.metrics.job_eta.labels(self.record.id).set((total - self.rows_done) / rate if rate else 0)


class RecordKeeper:
    """Saves job records and keeps the job-level and storage metrics."""

    def __init__(self, records: JobStore, metrics: Metrics):
        self.records, self.metrics = records, metrics

    async def save(self, record: JobRecord) -> None:
        try:
            await asyncio.to_thread(self.records.save, record)
        except SynthfleetError:
            log.exception("could not save job %s", record.id)

    @staticmethod
    def settle_counts(record: JobRecord, manifest: Manifest) -> None:
        """The manifest is authoritative: counts checkpointed before a restart may lag it."""
        record.prompt_tokens, record.completion_tokens = manifest.prompt_tokens, manifest.completion_tokens
        record.request_counts.total = record.request_counts.completed = manifest.input_rows
        record.request_counts.failed = manifest.rows_failed

    def count_tokens(self, counts: WorkerCounts, jobs: dict[str, JobRecord]) -> None:
        for job_id, c in counts.jobs.items():
            record = jobs.get(job_id)
            model = record.spec.model.name if record else "unknown"
            for key, n in c.items():  # "completion_tokens", or with stages "completion_tokens/<stage>"
                kind, _, stage = key.partition("/")
                if stage or not any(k.startswith(f"{kind}/") for k in c):  # a job's stages, or its total
                    metric = self.metrics.generated_tokens if kind == "completion_tokens" else self.metrics.prompt_tokens
                    metric.labels(job_id, model, stage).inc(n)
        self.count_storage(counts.storage)

    def count_storage(self, stats: dict[str, int]) -> None:
        for key, n in stats.items():
            if key == "retries":
                self.metrics.storage_retries.inc(n)
            else:
                operation, _, outcome = key.partition("|")
                self.metrics.storage_operations.labels(operation, outcome).inc(n)

    def update_gauges(self, jobs: dict[str, JobRecord]) -> None:
        m = self.metrics
        m.queue_depth.set(sum(r.state == JobState.QUEUED for r in jobs.values()))
        for state in JobState:
            m.jobs.labels(state.value).set(sum(r.state == state for r in jobs.values()))
