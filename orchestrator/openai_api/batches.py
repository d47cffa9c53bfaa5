"""Batches: OpenAI's Batch object and lifecycle, each batch a synthfleet job on its input file.

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
import re
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from orchestrator import defaults
from orchestrator.errors import SpecError
from orchestrator.export import formats
from orchestrator.export.write import write_batch
from orchestrator.openai_api.errors import OpenAIError, bad_request, not_found
from orchestrator.openai_api.files import ENDPOINTS, FileRecord, FileStore, new_id
from orchestrator.openai_api.served import ServedModel
from orchestrator.run.input_checks import parse_line
from orchestrator.run.pool import cluster_has_gpus
from orchestrator.service.coordinator import Coordinator
from orchestrator.service.records import JobRecord, JobState
from orchestrator.spec.job import JobSpec
from orchestrator.spec.load import parse_spec
from orchestrator.storage import open_store

log = logging.getLogger(__name__)

Status = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                 "cancelled"]
TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})
WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
CREATE_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata"}
UNRUN = {  # why a request a stopped batch never ran is in its error file
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "The batch was cancelled before this request was executed."),
    "failed": ("batch_failed", "The batch failed before this request was executed."),
}


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class Batch(BaseModel):
    """OpenAI's Batch object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: Status = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    usage: Usage = Field(default_factory=Usage)
    metadata: dict[str, str] | None = None


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


def window_seconds(window: Any) -> int:
    """`24h` as OpenAI has it; synthfleet also takes any `<n>s|m|h|d` up to seven days."""
    match = WINDOW.match(window) if isinstance(window, str) else None
    seconds = int(match.group(1)) * UNITS[match.group(2)] if match else 0
    if not 1 <= seconds <= defaults.MAX_COMPLETION_WINDOW_S:
        raise bad_request(f"completion_window {window!r} is not supported: use 24h (or a duration such as 30m, "
                          "at most 7d)", param="completion_window", code="invalid_value")
    return seconds


def checked_metadata(metadata: Any) -> dict[str, str] | None:
    """OpenAI's rule: at most 16 pairs, keys up to 64 characters, string values up to 512."""
    ok = metadata is None or (isinstance(metadata, dict) and len(metadata) <= 16 and all(
        isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items()))
    if not ok:
        raise bad_request("metadata holds at most 16 pairs of string keys (up to 64 characters) and string "
                          "values (up to 512)", param="metadata", code="invalid_value")
    return metadata


def checked_create(body: Any) -> tuple[str, str, str, dict[str, str] | None]:
    """A create request's (input_file_id, endpoint, completion_window, metadata), or a 400 naming the field."""
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object: {input_file_id, endpoint, completion_window}")
    for key in body:
        if key not in CREATE_FIELDS:
            raise bad_request(f"Unrecognized request argument supplied: {key}", param=str(key),
                              code="unknown_parameter")
    for key in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise bad_request(f"Missing required parameter: '{key}' (a string).", param=key,
                              code="missing_required_parameter")
    if body["endpoint"] not in ENDPOINTS:
        raise bad_request(f"endpoint {body['endpoint']!r} is not supported here; use {' or '.join(ENDPOINTS)}",
                          param="endpoint", code="invalid_value")
    window_seconds(body["completion_window"])
    return body["input_file_id"], body["endpoint"], body["completion_window"], checked_metadata(body.get("metadata"))


def file_problems(file: FileRecord, endpoint: str, served: dict[str, ServedModel]) -> list[BatchError]:
    """Why the batch cannot run its file, from what the upload recorded of the lines: OpenAI fails such a
    batch (`failed`, with `errors`) rather than refusing the request."""
    found = [BatchError(code="mismatched_endpoint", param="url", line=line,
                        message=f"line {line} asks for {url}; this batch's endpoint is {endpoint}")
             for url, line in file.urls.items() if url != endpoint]
    names = ", ".join(sorted(served)) or "none (start it with --model NAME=PATH_OR_ID or --models FILE)"
    found += [BatchError(code="model_not_found", param="body.model", line=line,
                         message=f"The model {model!r} does not exist on this server; it serves: {names}")
              for model, line in file.models.items() if model not in served]
    if len(file.models) > 1 and not found:
        (first, a), (second, b) = sorted(file.models.items(), key=lambda kv: kv[1])[:2]
        found.append(BatchError(code="mismatched_model", param="body.model", line=b, message=(
            f"a batch runs one model: line {a} asks for {first!r} and line {b} for {second!r}")))
    return found


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

    def get(self, batch_id: str) -> Batch:
        record = self.records.get(batch_id)
        if record is None:
            raise not_found("Batch", batch_id, param="batch_id")
        return record.batch

    def listed(self) -> list[Batch]:
        return [r.batch for r in sorted(self.records.values(), key=lambda r: r.created_ns, reverse=True)]

    async def cancel(self, batch_id: str) -> Batch:
        self.get(batch_id)
        record = self.records[batch_id]
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
        job = self.coordinator.get(record.job_id)
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
            self._count(record, job)
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
        try:
            if job.output and open_store(job.output).exists("spec.json"):
                done = write_batch(open_store(job.output), uploads["output"], uploads["error"],
                                   model=str(batch.model), seen=seen)
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
                parsed = parse_line(line) if line.strip() else None
                if isinstance(parsed, dict) and parsed["custom_id"] not in seen:
                    errors.write(unrun_line(parsed["custom_id"], status))
                    written += 1
        return written

