"""The Files API's storage: uploaded Batch input files and the output and error files batches write,
under `files/` of the state store (a folder or S3): `{id}.jsonl` the content, `{id}.json` its record,
written after the content, so a record always names a whole file.

An upload for `purpose=batch` is checked whole before anything is stored, as OpenAI checks a Batch
file: every non-blank line a JSON object with a string `custom_id`, `method: POST`, a supported `url`
and a `body` with a `model` and the prompt its endpoint needs, and no `custom_id` twice. A refused
upload stores nothing.
"""

from __future__ import annotations

import io
import time
import uuid
from array import array
from collections.abc import Iterator
from typing import IO, Any, BinaryIO, Literal

from pydantic import BaseModel, Field

from orchestrator.errors import StorageError
from orchestrator.openai_api.errors import bad_request, not_found
from orchestrator.run.input_checks import digest, first_repeat, parse_line, repeat_message, repeated
from orchestrator.storage import Store
from orchestrator.storage.reader import RangeReader
from workers.prompts import BATCH_URLS as ENDPOINTS  # the endpoints a job's Batch rows run
SHOWN_LINES = 3  # bad lines one error names
CHUNK = 1 << 20

Purpose = Literal["batch", "batch_output"]


class FileObject(BaseModel):
    """OpenAI's File object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Purpose
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileRecord(BaseModel):
    """A stored file: its File object and, for a Batch input, what batch validation needs of its lines."""

    file: FileObject
    created_ns: int  # orders files created in the same second
    requests: int = 0
    models: dict[str, int] = Field(default_factory=dict)  # body.model -> the first line naming it
    urls: dict[str, int] = Field(default_factory=dict)  # url -> the first line using it


def request_problem(record: dict[str, Any]) -> str | None:
    """Why a parsed Batch line is not a request this server runs, or None."""
    custom_id, url, body = record.get("custom_id"), record.get("url"), record.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        return "`custom_id` must be a non-empty string"
    if record.get("method") != "POST":
        return f"`method` must be POST (got {record.get('method')!r})"
    if url not in ENDPOINTS:
        return f"`url` {url!r} is not supported; use {' or '.join(ENDPOINTS)}"
    if not isinstance(body, dict):
        return "`body` must be an object (the request's JSON body)"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "`body.model` must name a model"
    if url == ENDPOINTS[0] and (not isinstance(body.get("messages"), list) or not body["messages"]):
        return "a /v1/chat/completions body needs a non-empty `messages` list"
    if url == ENDPOINTS[1] and not isinstance(body.get("prompt"), str):
        return "a /v1/completions body needs a string `prompt`"
    return None


def _rewound(f: IO[bytes]) -> IO[bytes]:
    f.seek(0)
    return f


def scan_batch_file(f: IO[bytes], record: FileRecord) -> None:
    """Check every line of a Batch input file (seekable), filling the record's request count, models and
    urls; an OpenAIError (400) naming the first bad lines, or the first repeated custom_id."""
    bad: list[str] = []
    digests = array("Q")  # of each request's custom_id: 8 bytes a line, for the repeat check
    for number, line in enumerate(_rewound(f), start=1):
        if not line.strip():
            continue
        parsed = parse_line(line)
        why = parsed if isinstance(parsed, str) else request_problem(parsed)
        if why is not None:
            bad.append(f"line {number}: {why}")
            continue
        assert isinstance(parsed, dict)
        record.requests += 1
        record.models.setdefault(parsed["body"]["model"], number)
        record.urls.setdefault(parsed["url"], number)
        digests.append(digest(parsed["custom_id"]))
    if bad:
        more = f" (and {len(bad) - SHOWN_LINES} more bad lines)" if len(bad) > SHOWN_LINES else ""
        raise bad_request("The file is not a valid Batch input JSONL file: " + "; ".join(bad[:SHOWN_LINES]) + more +
                          ". Each line is {custom_id, method: POST, url, body}.", param="file", code="invalid_file")
    if record.requests == 0:
        raise bad_request("The file has no requests: a Batch input file has one JSON request per line.",
                          param="file", code="invalid_file")
    repeats = repeated(digests)
    repeat = first_repeat(_rewound(f), repeats) if repeats else None
    if repeat is not None:
        raise bad_request(repeat_message(repeat), param="file", code="duplicate_custom_id")


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


class FileStore:
    """File records in memory (loaded at start), contents and records in the state store."""

    def __init__(self, store: Store):
        self.store = store
        self.records: dict[str, FileRecord] = {}

    def load(self) -> None:
        for key in self.store.list("files/"):
            if key.endswith(".json"):
                record = FileRecord.model_validate_json(self.store.get(key))
                self.records[record.file.id] = record

    @staticmethod
    def content_key(file_id: str) -> str:
        return f"files/{file_id}.jsonl"

    def uri(self, file_id: str) -> str:
        return f"{self.store.uri.rstrip('/')}/{self.content_key(file_id)}"

    def _save(self, record: FileRecord) -> FileRecord:
        self.store.put(f"files/{record.file.id}.json", record.model_dump_json().encode())
        self.records[record.file.id] = record
        return record

    def upload(self, f: IO[bytes], filename: str, purpose: str) -> FileRecord:
        """Check and store an uploaded Batch input file (a seekable stream); nothing is stored if refused."""
        if purpose != "batch":
            raise bad_request(f"purpose {purpose!r} is not supported here: this server stores Batch input files "
                              "(purpose=batch)", param="purpose", code="invalid_value")
        size = f.seek(0, 2)
        record = FileRecord(file=FileObject(id=new_id("file-"), bytes=size, created_at=int(time.time()),
                                            filename=filename, purpose="batch"), created_ns=time.time_ns())
        scan_batch_file(f, record)
        _rewound(f)
        with self.store.open_upload(self.content_key(record.file.id)) as upload:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                upload.write(chunk)
        return self._save(record)

    def register(self, file_id: str, filename: str, size: int) -> FileRecord:
        """Record a batch's output or error file, its content stored (registering it again replaces it)."""
        return self._save(FileRecord(file=FileObject(id=file_id, bytes=size, created_at=int(time.time()),
                                                     filename=filename, purpose="batch_output"),
                                     created_ns=time.time_ns()))

    def get(self, file_id: str) -> FileRecord:
        record = self.records.get(file_id)
        if record is None:
            raise not_found("File", file_id)
        return record

    def get_input(self, file_id: str) -> FileRecord:
        """A batch's input file: an uploaded Batch file, else 404 or 400 on `input_file_id`."""
        record = self.records.get(file_id)
        if record is None:
            raise not_found("File", file_id, param="input_file_id")
        if record.file.purpose != "batch":
            raise bad_request(f"file {file_id} is a {record.file.purpose} file; a batch runs a file uploaded with "
                              "purpose=batch", param="input_file_id", code="invalid_value")
        return record

    def listed(self, purpose: str | None, order: str) -> list[FileObject]:
        records = sorted(self.records.values(), key=lambda r: r.created_ns, reverse=order == "desc")
        return [r.file for r in records if purpose is None or r.file.purpose == purpose]

    def delete(self, file_id: str) -> None:
        self.get(file_id)
        self.store.delete(f"files/{file_id}.json")  # the record first: a file without one is not listed
        self.store.delete(self.content_key(file_id))
        del self.records[file_id]

    def open(self, file_id: str) -> BinaryIO:
        """A file's content as a buffered stream, read from the store a range at a time."""
        self.get(file_id)
        key = self.content_key(file_id)
        size = self.store.size(key)
        if size is None:
            raise StorageError(f"{self.store.uri}/{key} is missing")
        return io.BufferedReader(RangeReader(self.store, key, size), buffer_size=CHUNK)

    def content(self, file_id: str) -> Iterator[bytes]:
        with self.open(file_id) as f:
            yield from iter(lambda: f.read(CHUNK), b"")


def page(items: list[Any], after: str | None, limit: int, key: str = "id") -> dict[str, Any]:
    """OpenAI's cursor page: the `limit` items after the one whose id is `after`."""
    start = 0
    if after is not None:
        ids = [getattr(i, key) for i in items]
        if after not in ids:
            raise bad_request(f"`after` {after!r} is not an object of this list", param="after", code="invalid_value")
        start = ids.index(after) + 1
    data = items[start:start + limit]
    return {"object": "list", "data": [i.model_dump() for i in data],
            "first_id": getattr(data[0], key) if data else None, "last_id": getattr(data[-1], key) if data else None,
            "has_more": start + limit < len(items)}

