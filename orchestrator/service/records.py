"""Job records: the coordinator's durable state, one JSON object per job in the state store.

States follow the OpenAI Batch lifecycle: queued → in_progress → finalizing → completed, or
failed; cancel moves a job through cancelling to cancelled. A restarted coordinator reads these
records back and resumes every job that had not reached a terminal state.
"""

from __future__ import annotations

import hashlib
import json
import time
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import ConflictError
from orchestrator.spec.job import JobSpec
from orchestrator.storage import Store


class JobState(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class JobRecord(BaseModel):
    """What the API returns for a job, and what survives a coordinator restart."""

    model_config = ConfigDict(extra="forbid")
    id: str
    spec: JobSpec
    state: JobState = JobState.QUEUED
    priority: int = 0
    sequence: int = 0  # submission order: FIFO within a priority
    timestamps: dict[JobState, float] = Field(default_factory=dict)
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_per_s: float = 0.0
    progress: float = 0.0
    retries: int = 0  # shard attempts that failed and were tried again
    workers_replaced: int = 0
    output: str = ""
    errors: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)  # a completed job's problems: most rows failed, ...
    cancel_requested: bool = False

    def move(self, state: JobState) -> None:
        self.state = state
        self.timestamps[state] = time.time()

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class JobStore:
    """Job records and idempotency keys under `jobs/` and `idempotency/` of the state store."""

    def __init__(self, store: Store):
        self.store = store

    def save(self, record: JobRecord) -> None:
        self.store.put(f"jobs/{record.id}.json", record.model_dump_json().encode())

    def load_all(self) -> list[JobRecord]:
        records = []
        for key in self.store.list("jobs/"):
            if key.endswith(".json"):
                records.append(JobRecord.model_validate_json(self.store.get(key)))
        return records

    def claim_key(self, key: str, job_id: str, spec_hash: str) -> str:
        """The job id an idempotency key stands for; ConflictError if it was used for another spec."""
        name = f"idempotency/{hashlib.sha256(key.encode()).hexdigest()}.json"
        claim = json.dumps({"job_id": job_id, "spec_hash": spec_hash}).encode()
        if self.store.put_if_absent(name, claim):
            return job_id
        existing = json.loads(self.store.get(name))
        if existing["spec_hash"] != spec_hash:
            raise ConflictError("this Idempotency-Key was already used for a different spec")
        return str(existing["job_id"])
