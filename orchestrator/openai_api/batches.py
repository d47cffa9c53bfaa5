"""Batches: OpenAI's Batch lifecycle, each batch a synthfleet job on its input file.

    validating -> in_progress -> finalizing -> completed
               -> failed                  (the file does not fit the batch: model, endpoint; or the job failed)
    in_progress -> expired                (its completion_window passed: what is done is delivered)
    validating | in_progress | finalizing -> cancelling -> cancelled   (what is done is delivered)

A batch's job is submitted to the coordinator with the served model's settings, so it queues, shares
warm pools and resumes after a restart like any job. When the job ends the batch's output file (one
line per answered request) and error file (one per failed request, and one per request a cancel or
expiry left unrun, `batch_cancelled` / `batch_expired`) are written to the file store under ids derived
from the batch's, so writing them again after a restart gives the same files. Records live in
`batches/` of the state store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import typing
from typing import Any

from pydantic import BaseModel

from orchestrator import defaults
from orchestrator.commit import layout
from orchestrator.errors import NotFoundError, SpecError
from orchestrator.export import formats
from orchestrator.export.write import write_batch
from orchestrator.openai_api.batch_objects import (
    TERMINAL,
    Batch,
    BatchError,
    BatchErrors,
    RequestCounts,
    Status,
    Usage,
    checked_create,
    file_problems,
    window_seconds,
)
from orchestrator.openai_api.errors import OpenAIError, not_found
from orchestrator.openai_api.files import FileRecord, FileStore, new_id
from orchestrator.openai_api.served import ServedModel
from orchestrator.run.input_checks import custom_id_of
from orchestrator.run.pool import cluster_has_gpus
from orchestrator.service.coordinator import Coordinator
from orchestrator.service.records import JobRecord, JobState
from orchestrator.spec.job import JobSpec
from orchestrator.spec.load import parse_spec
from orchestrator.storage import open_store

log = logging.getLogger(__name__)

UNRUN = {  # why a request a stopped batch never ran is in its error file
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "The batch was cancelled before this request was executed."),
    "failed": ("batch_failed", "The batch failed before this request was executed."),
}


class BatchRecord(BaseModel):
    """A batch as stored: the object the API returns, and how it maps to its job."""

    batch: Batch
    created_ns: int
    job_id: str | None = None
    expiring: bool = False  # its window passed and its job was cancelled: it ends `expired`

    def move(self, status: Status) -> None:
        self.batch.status = status
        if status != "validating":
            setattr(self.batch, f"{status}_at", int(time.time()))


def derived_file_id(batch_id: str, kind: str) -> str:
    return "file-" + hashlib.blake2b(f"{batch_id}/{kind}".encode(), digest_size=12).hexdigest()


def unrun_line(custom_id: str, status: str) -> bytes:
    code, message = UNRUN[status]
    return formats.dumps({"id": formats.derived_id("batch_req_", custom_id), "custom_id": custom_id,
                          "response": None, "error": {"code": code, "message": message}})


class BatchService:
    """Batches on the coordinator's loop: created by the routes, followed by a loop that moves each with
    its job, expires it when its window passes, and delivers its files when the job ends."""

    def __init__(self, coordinator: Coordinator, models: dict[str, ServedModel]):
        self.coordinator, self.models = coordinator, models
        self.store = coordinator.records.store
        self.files = FileStore(self.store)
        self.records: dict[str, BatchRecord] = {}
        self._busy: set[str] = set()  # batches a create, cancel or delivery is working on
        self._task: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await asyncio.to_thread(self.files.load)
        for key in await asyncio.to_thread(lambda: list(self.store.list("batches/"))):
            if key.endswith(".json"):
                record = BatchRecord.model_validate_json(await asyncio.to_thread(self.store.get, key))
                self.records[record.batch.id] = record
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        for task in [self._task, *self._deliveries]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._task, *self._deliveries] if t is not None], return_exceptions=True)

    async def _save(self, record: BatchRecord) -> None:
        await asyncio.to_thread(self.store.put, f"batches/{record.batch.id}.json", record.model_dump_json().encode())

    # --- API ------------------------------------------------------------------------------------

    async def create(self, body: Any) -> Batch:
        file_id, endpoint, window, metadata = checked_create(body)
        file = self.files.get_input(file_id)
        now = time.time()
        batch = Batch(id=new_id("batch_"), endpoint=endpoint, input_file_id=file_id, completion_window=window,
                      created_at=int(now), expires_at=int(now) + window_seconds(window), metadata=metadata,
                      model=min(file.models, key=file.models.__getitem__), request_counts=RequestCounts(
                          total=file.requests))
        record = BatchRecord(batch=batch, created_ns=time.time_ns())
        self.records[batch.id] = record
        self._busy.add(batch.id)
        try:
            await self._save(record)
            await self._validate(record, file)
        finally:
            self._busy.discard(batch.id)
        return record.batch

    def _record(self, batch_id: str) -> BatchRecord:
        record = self.records.get(batch_id)
        if record is None:
            raise not_found("Batch", batch_id, param="batch_id")
        return record

    def get(self, batch_id: str) -> Batch:
        return self._record(batch_id).batch

    def listed(self) -> list[Batch]:
        return [r.batch for r in sorted(self.records.values(), key=lambda r: r.created_ns, reverse=True)]

    async def cancel(self, batch_id: str) -> Batch:
        record = self._record(batch_id)
        if record.batch.status in TERMINAL:
            raise OpenAIError(409, f"Cannot cancel a batch with status {record.batch.status!r}.",
                              param="batch_id", code="batch_not_cancellable")
        if record.batch.status != "cancelling":
            record.move("cancelling")
            if record.job_id is not None:
                await self.coordinator.cancel(record.job_id)
            await self._save(record)
        return record.batch

    # --- lifecycle ------------------------------------------------------------------------------

    async def _fail(self, record: BatchRecord, errors: list[BatchError]) -> None:
        record.batch.errors = BatchErrors(data=errors)
        record.move("failed")
        await self._save(record)

    def _spec(self, record: BatchRecord, served: ServedModel, has_gpus: bool) -> JobSpec:
        return parse_spec({
            "name": "batch-" + record.batch.id.removeprefix("batch_"),
            "model": served.model.model_dump(mode="json", exclude_none=True),
            "prompts": {"openai_batch": {"uri": self.files.uri(record.batch.input_file_id)}},
            "sampling": served.sampling.model_dump(mode="json", exclude_none=True),
            "output": {"uri": f"{self.store.uri.rstrip('/')}/batch-jobs", "rows_per_shard": served.rows_per_shard},
            "resources": served.resources_on(has_gpus).model_dump(mode="json"),
        }, source="batch")

    async def _validate(self, record: BatchRecord, file: FileRecord) -> None:
        """validating -> in_progress (its job queued), or failed with OpenAI's `errors`."""
        problems = file_problems(file, record.batch.endpoint, self.models)
        if problems:
            return await self._fail(record, problems)
        served = self.models[str(record.batch.model)]
        try:
            spec = self._spec(record, served, await asyncio.to_thread(cluster_has_gpus))
            job = await self.coordinator.submit(spec)
        except SpecError as e:
            return await self._fail(record, [BatchError(code="invalid_request", param=p.path or None,
                                                        message=p.message) for p in e.problems])
        record.job_id = job.id
        if record.batch.status == "cancelling":  # cancelled while it validated
            await self.coordinator.cancel(job.id)
        else:
            record.move("in_progress")
        await self._save(record)

    async def _loop(self) -> None:
        while True:
            for status in typing.get_args(Status):
                self.coordinator.metrics.batches.labels(status).set(
                    sum(r.batch.status == status for r in self.records.values()))
            for record in list(self.records.values()):
                if record.batch.status not in TERMINAL and record.batch.id not in self._busy:
                    try:
                        await self._follow(record)
                    except Exception:  # one batch's trouble never stops the others
                        log.exception("batch %s", record.batch.id)
            await asyncio.sleep(defaults.BATCH_POLL_S)

    async def _follow(self, record: BatchRecord) -> None:
        batch = record.batch
        if record.job_id is None:  # validating (or cancelled while validating) when the server stopped
            if batch.status == "cancelling":
                record.move("cancelled")
                return await self._save(record)
            return await self._validate(record, self.files.get_input(batch.input_file_id))
        try:
            job = self.coordinator.get(record.job_id)
        except NotFoundError:  # its job record is gone from the state store: nothing can finish it
            return await self._fail(record, [BatchError(code="batch_failed", message=(
                f"the batch's job {record.job_id} is no longer in the state store"))])
        self._count(record, job)
        if not record.expiring and batch.status != "cancelling" and time.time() >= batch.expires_at:
            record.expiring = True
            await self.coordinator.cancel(job.id)
            await self._save(record)
        if job.state == JobState.FINALIZING and batch.status == "in_progress":
            record.move("finalizing")
            await self._save(record)
        if job.terminal:
            self._busy.add(batch.id)
            task = asyncio.ensure_future(self._finish(record, job))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    @staticmethod
    def _count(record: BatchRecord, job: JobRecord) -> None:
        c = job.request_counts
        record.batch.request_counts.completed = max(0, c.completed - c.failed)
        record.batch.request_counts.failed = c.failed
        record.batch.usage = Usage(input_tokens=job.prompt_tokens, output_tokens=job.completion_tokens,
                                   total_tokens=job.prompt_tokens + job.completion_tokens)

    def _final_status(self, record: BatchRecord, job: JobRecord) -> Status:
        if record.batch.status == "cancelling":
            return "cancelled"
        if job.state == JobState.CANCELLED:
            return "expired" if record.expiring else "cancelled"
        return "failed" if job.state == JobState.FAILED else "completed"

    async def _finish(self, record: BatchRecord, job: JobRecord) -> None:
        try:
            status = self._final_status(record, job)
            await asyncio.to_thread(self._deliver, record, job, status)
            if status == "failed":
                record.batch.errors = BatchErrors(data=[BatchError(code="batch_failed", message=m)
                                                        for m in job.errors or ["the job failed"]])
            record.move(status)
            await self._save(record)
        except Exception:
            log.exception("delivering batch %s", record.batch.id)
        finally:
            self._busy.discard(record.batch.id)

    def _deliver(self, record: BatchRecord, job: JobRecord, status: str) -> None:
        """Write the batch's output and error files from its job's committed rows; the requests it never
        ran (cancelled, expired or failed) are error lines. Each file is stored when it has a line."""
        batch = record.batch
        ids = {kind: derived_file_id(batch.id, kind) for kind in ("output", "error")}
        uploads = {kind: self.store.open_upload(FileStore.content_key(i), overwrite=True) for kind, i in ids.items()}
        seen: set[str] | None = None if job.state == JobState.COMPLETED else set()
        folder = open_store(job.output) if job.output else None
        try:
            if folder is not None and folder.exists(layout.SPEC):
                done = write_batch(folder, uploads["output"], uploads["error"], model=str(batch.model), seen=seen)
                lines = {"output": done.lines, "error": done.error_lines}
            else:
                lines = {"output": 0, "error": 0}
            if seen is not None:
                lines["error"] += self._write_unrun(batch.input_file_id, seen, uploads["error"], status)
        except BaseException:
            for upload in uploads.values():
                upload.abort()
            raise
        for kind, upload in uploads.items():
            if lines[kind]:
                upload.commit()
                size = self.store.size(FileStore.content_key(ids[kind])) or 0
                self.files.register(ids[kind], f"{batch.id}_{kind}.jsonl", size)
            else:
                upload.abort()
        batch.output_file_id = ids["output"] if lines["output"] else None
        batch.error_file_id = ids["error"] if lines["error"] else None
        batch.request_counts = RequestCounts(total=batch.request_counts.total, completed=lines["output"],
                                             failed=lines["error"])

    def _write_unrun(self, file_id: str, seen: set[str], errors: Any, status: str) -> int:
        """An error line for each request of the input file that no committed shard holds."""
        written = 0
        with self.files.open(file_id) as f:
            for line in f:
                custom_id = custom_id_of(line) if line.strip() else None
                if custom_id is not None and custom_id not in seen:
                    errors.write(unrun_line(custom_id, status))
                    written += 1
        return written

