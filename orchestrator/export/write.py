"""`synthfleet export`'s I/O: a finished job read through its manifest, a shard and a record batch at a
time, its lines streamed to a local file or S3 object that is committed whole at the end, never over an
existing one unless asked. Memory holds a record batch, one shard's error rows and request ids, and
(for S3) one upload part, whatever the job's size."""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq

from orchestrator.commit import layout
from orchestrator.commit.shards import recover_shard
from orchestrator.export import formats
from orchestrator.finalize.manifest import Manifest, ShardEntry
from orchestrator.results import manifest, open_job
from orchestrator.storage import Store, split_uri
from orchestrator.storage.base import Upload, exists_error

BATCH_ROWS = 1024  # rows decoded at once
LINES: dict[str, Callable[[formats.Row], bytes]] = {formats.JSONL: formats.jsonl_line, formats.CHAT: formats.chat_line}


@dataclass(frozen=True)
class Exported:
    """What an export wrote: its files, the kept rows read and the lines of each file."""

    format: str
    files: list[str]
    rows: int
    lines: int  # of the file (openai-batch: of output.jsonl, one per request)
    error_lines: int = 0  # openai-batch: requests with no kept sample and a failed one, in errors.jsonl
    rejected_requests: int = 0  # openai-batch: requests a gate rejected every sample of: in neither file
    failed_samples: int = 0  # openai-batch: failed samples of requests another sample answered


def _join(dest: str, name: str) -> str:
    return f"{dest.rstrip('/')}/{name}" if "://" in dest else os.path.join(dest, name)


def destination(fmt: str, dest: str, *, force: bool = False) -> list[Upload]:
    """The files an export writes: `dest`, or for openai-batch the output and error files in the folder
    (or prefix) `dest`. Any that exists is refused (`ExistsError`) unless `force`, before a row is read."""
    if fmt not in formats.FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(formats.FORMATS)}")
    names = [_join(dest, n) for n in formats.BATCH_FILES] if fmt == formats.OPENAI_BATCH else [dest]
    targets = [split_uri(n) for n in names]
    for store, key in targets if not force else []:
        if store.exists(key):
            raise exists_error(f"{store.uri.rstrip('/')}/{key}")
    uploads: list[Upload] = []
    try:
        for store, key in targets:
            uploads.append(store.open_upload(key, overwrite=force))
    except BaseException:
        for u in uploads:
            u.abort()
        raise
    return uploads


def _stored_rows(store: Store, keys: list[str], columns: list[str] | None = None) -> Iterator[formats.Row]:
    """The rows of stored Parquet files, decoded a record batch at a time."""
    for key in keys:
        f = pq.ParquetFile(io.BytesIO(store.get(key)))
        for batch in f.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            yield from batch.to_pylist()


def write_job(job: Store, fmt: str, uploads: list[Upload]) -> Exported:
    """Write the finished job `job`'s kept rows in `fmt` to `uploads` (from `destination`), committing
    them when every line is written; nothing is left at their names on a failure."""
    with contextlib.ExitStack() as stack:
        for u in uploads:
            stack.enter_context(u)
        if fmt == formats.OPENAI_BATCH:
            return write_batch(job, *uploads)
        return _rows(job, manifest(job), uploads[0], fmt)


def _rows(job: Store, m: Manifest, upload: Upload, fmt: str) -> Exported:
    line, rows = LINES[fmt], 0
    for shard in m.shards:
        for row in _stored_rows(job, shard.keys()):
            upload.write(line(row))
            rows += 1
    return Exported(fmt, [upload.uri], rows, rows)


@dataclass
class _Counts:
    rows: int = 0
    lines: int = 0
    error_lines: int = 0
    rejected_requests: int = 0
    failed_samples: int = 0


@dataclass(frozen=True)
class CommittedShard:
    """A committed shard's files, read from storage when a job has no manifest (it was cancelled)."""

    data: str
    errors: str | None
    rejected: str | None

    def keys(self, *, errors: bool = False, rejected: bool = False) -> list[str]:
        key = self.rejected if rejected else self.errors if errors else self.data
        return [key] if key else []


def committed_files(job: Store) -> list[CommittedShard]:
    """The shards a job without a manifest has committed (not staged: no dedup or targets), each whole:
    files a crash left underived are derived first, as the finalize pass does."""
    shards = []
    for key in job.list(layout.DATA_DIR + "/"):
        if key.endswith(".parquet"):
            i, n = layout.shard_index(key), layout.shard_count(key)
            stats = recover_shard(job, i, n)
            shards.append(CommittedShard(key, layout.errors_key(i, n) if stats.rows_failed else None,
                                         layout.rejected_key(i, n) if stats.rows_rejected else None))
    return shards


def _batch_shard(job: Store, shard: ShardEntry | CommittedShard, ctx: formats.BatchContext, output: Upload,
                 errors: Upload, n: _Counts, seen: set[str] | None) -> None:
    """One shard's requests: its answered ones to the output file, its failed ones to the error file;
    their custom_ids added to `seen` when given."""
    failed = formats.by_request(_stored_rows(job, shard.keys(errors=True)))
    answered: set[str] = set()
    for samples in formats.requests(_stored_rows(job, shard.keys())):
        output.write(formats.batch_output_line(samples, ctx))
        answered.add(samples[0]["row_id"])
        n.rows, n.lines = n.rows + len(samples), n.lines + 1
        if seen is not None:
            seen.add(formats.custom_id(samples[0]))
    for row_id, rows in failed.items():
        if row_id in answered:
            n.failed_samples += len(rows)
        else:
            errors.write(formats.batch_error_line(rows))
            n.error_lines += 1
            if seen is not None:
                seen.add(formats.custom_id(rows[0]))
    rejected = {r["row_id"] for r in _stored_rows(job, shard.keys(rejected=True), columns=["row_id"])}
    n.rejected_requests += len(rejected - answered - failed.keys())


def write_batch(job: Store, output: Upload, errors: Upload, *, model: str | None = None,
                seen: set[str] | None = None) -> Exported:
    """A job's requests as Batch output and error lines: through its manifest when it finished, else its
    committed shards (a cancelled job), answered now. The bodies name `model` (the name a request
    asked for), else the job's model. Commits neither upload."""
    if job.exists(layout.MANIFEST):
        m = manifest(job)
        ctx, shards = formats.BatchContext(model=model or m.model, created=int(m.finished_at)), list(m.shards)
    else:
        ctx, shards = formats.BatchContext(model=str(model), created=int(time.time())), committed_files(job)
    n = _Counts()
    for shard in shards:
        _batch_shard(job, shard, ctx, output, errors, n, seen)
    return Exported(formats.OPENAI_BATCH, [output.uri, errors.uri], n.rows, n.lines, n.error_lines,
                    n.rejected_requests, n.failed_samples)


def export_job(job: str | Store, fmt: str, dest: str, *, force: bool = False) -> Exported:
    """Export a finished job (its folder or URI, or its store) in `fmt` to `dest`: a file for jsonl and
    chat, a folder or S3 prefix for openai-batch. An existing destination is refused unless `force`."""
    store = open_job(job) if isinstance(job, str) else job
    return write_job(store, fmt, destination(fmt, dest, force=force))
