"""Every metric synthfleet exports, declared once, with base units in names and bounded labels.

Labels are job (job id), model (model name), state, outcome and reason: never row or shard ids,
never prompt text. Series of a finished job are dropped after `retention_s`.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from orchestrator import defaults
from orchestrator.finalize.quality_report import QualityReport

disable_created_metrics()  # *_created series double the exposition for no dashboard use

NAMESPACE = "synthfleet"
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
LOAD_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600)
JUDGE_BUCKETS = tuple(range(1, 11))


class Metrics:
    """The coordinator's metrics on their own registry (served at /metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 retention_s: float = defaults.METRICS_RETENTION_S):
        self.registry = registry or CollectorRegistry()
        self.retention_s = retention_s
        r, ns = self.registry, NAMESPACE
        # stage: a stage of a job with stages (names from its spec, so bounded); empty (no label) without stages
        self.generated_tokens = Counter("generated_tokens", "Completion tokens generated.", ["job", "model", "stage"],
                                        namespace=ns, registry=r)
        self.prompt_tokens = Counter("prompt_tokens", "Prompt tokens processed.", ["job", "model", "stage"],
                                     namespace=ns, registry=r)
        self.rows = Counter("rows", "Output rows committed, by outcome (ok, failed).", ["job", "outcome"],
                            namespace=ns, registry=r)
        self.shards = Counter("shards", "Shard attempts by outcome (committed, skipped, lost, failed).",
                              ["job", "outcome"], namespace=ns, registry=r)
        self.shard_duration = Histogram("shard_duration_seconds", "Time to generate and commit one shard.",
                                        ["model"], namespace=ns, registry=r, buckets=DURATION_BUCKETS)
        self.retries = Counter("shard_retries", "Shard attempts retried, by reason.", ["job", "reason"],
                               namespace=ns, registry=r)
        self.workers = Gauge("workers", "Generation workers by state (idle, busy).", ["model", "state"],
                             namespace=ns, registry=r)
        self.queue_depth = Gauge("queue_depth", "Jobs waiting to start.", namespace=ns, registry=r)
        self.jobs = Gauge("jobs", "Jobs by state.", ["state"], namespace=ns, registry=r)
        self.batches = Gauge("batches", "OpenAI Batch API batches by status.", ["status"], namespace=ns, registry=r)
        self.job_progress = Gauge("job_progress_ratio", "Share of a job's input rows done.", ["job"],
                                  namespace=ns, registry=r)
        self.job_eta = Gauge("job_eta_seconds", "Estimated seconds until a job's last row is done.", ["job"],
                             namespace=ns, registry=r)
        self.engine_load = Histogram("engine_load_seconds", "Time to load a model into a new worker.",
                                     ["model"], namespace=ns, registry=r, buckets=LOAD_BUCKETS)
        self.storage_bytes = Counter("storage_written_bytes", "Bytes committed to object storage.", ["job"],
                                     namespace=ns, registry=r)
        self.storage_operations = Counter("storage_operations", "S3 API calls of workers and coordinator, by "
                                          "operation (PutObject, ...) and outcome.", ["operation", "outcome"],
                                          namespace=ns, registry=r)
        self.storage_retries = Counter("storage_retries", "S3 calls that botocore retried.", namespace=ns,
                                       registry=r)
        self.row_errors = Counter("row_errors", "Rows sent to errors/, by code (prompt_too_long, judge_error, ...).",
                                  ["job", "code"], namespace=ns, registry=r)
        self.rows_rejected = Counter("rows_rejected", "Rows sent to rejected/, by reason (judge_low_score, "
                                     "near_duplicate, ...).", ["job", "reason"], namespace=ns, registry=r)
        self.judge_score = Histogram("judge_score", "Scores (1-10) the judge gave.", ["job"], namespace=ns,
                                     registry=r, buckets=JUDGE_BUCKETS)
        self.duplicate_ratio = Gauge("duplicate_ratio", "Share of a job's generated rows dropped as duplicates, "
                                     "by kind (exact, near).", ["job", "kind"], namespace=ns, registry=r)
        self.diversity = Gauge("diversity", "Diversity of a job's kept rows, by metric (distinct_2, "
                               "compression_ratio, ...).", ["job", "metric"], namespace=ns, registry=r)
        self.diversity_reference_ratio = Gauge(
            "diversity_reference_ratio", "A diversity metric of the job over the same metric of its reference "
            "data (1 = as diverse; below 1 = less diverse).", ["job", "metric"], namespace=ns, registry=r)
        self.diversity_below_reference = Gauge(
            "diversity_below_reference", "1 when a diversity metric fell below the spec's fraction of the "
            "reference's: an early warning of collapse.", ["job"], namespace=ns, registry=r)
        self.bias_drift_flagged = Gauge("bias_drift_flagged_values", "Seed values whose share among kept rows "
                                        "drifted from the plan beyond the threshold.", ["job"], namespace=ns,
                                        registry=r)
        self.bias_drift_max_shift = Gauge("bias_drift_max_shift_ratio", "Largest relative change of a seed "
                                          "value's share between planned and kept rows.", ["job"], namespace=ns,
                                          registry=r)
        self.strata_unmet = Gauge("targets_strata_unmet", "Strata of a targets job left below their target of "
                                  "kept rows when it finished.", ["job"], namespace=ns, registry=r)
        self._finished: dict[str, float] = {}

    def quality(self, job: str, report: QualityReport) -> None:
        """Set the gauges of a finished job's quality report (the `quality` section of its manifest)."""
        for metric, value in report.diversity.items():
            self.diversity.labels(job, metric).set(value)
        dedup = report.dedup
        if dedup is not None:
            scanned = max(1, dedup.rows_scanned)
            self.duplicate_ratio.labels(job, "exact").set(dedup.exact_duplicates / scanned)
            self.duplicate_ratio.labels(job, "near").set(dedup.near_duplicates / scanned)
            self.rows_rejected.labels(job, "exact_duplicate").inc(dedup.exact_duplicates)
            self.rows_rejected.labels(job, "near_duplicate").inc(dedup.near_duplicates)
        reference = report.reference
        if reference is not None:
            for metric, ratio in reference.diversity_ratios.items():
                if ratio is not None:
                    self.diversity_reference_ratio.labels(job, metric).set(ratio)
            self.diversity_below_reference.labels(job).set(1 if reference.below_reference else 0)
        self.bias_drift_flagged.labels(job).set(report.drift.flagged_values)
        self.bias_drift_max_shift.labels(job).set(report.drift.max_shift)
        if report.targets is not None:
            self.strata_unmet.labels(job).set(len(report.targets.unmet))

    def job_finished(self, job: str, completed: bool = True) -> None:
        """Start the job's retention clock; a job that did not complete loses its progress and ETA now,
        so a stalled-job alert never matches a cancelled or failed job."""
        self._finished[job] = time.time()
        if not completed:
            for metric in (self.job_progress, self.job_eta):
                if (job,) in metric._metrics:  # noqa: SLF001 - prometheus-client has no public lister
                    metric.remove(job)

    def expire(self) -> None:
        """Drop the series of jobs that finished more than `retention_s` ago."""
        cutoff = time.time() - self.retention_s
        for job in [j for j, t in self._finished.items() if t < cutoff]:
            del self._finished[job]
            for metric in (self.generated_tokens, self.prompt_tokens, self.rows, self.shards, self.retries,
                           self.job_progress, self.job_eta, self.storage_bytes, self.row_errors,
                           self.rows_rejected, self.judge_score, self.duplicate_ratio, self.diversity,
                           self.diversity_reference_ratio, self.diversity_below_reference,
                           self.bias_drift_flagged, self.bias_drift_max_shift, self.strata_unmet):
                for labels in list(metric._metrics):  # noqa: SLF001 - prometheus-client has no public lister
                    if labels[0] == job:
                        metric.remove(*labels)
