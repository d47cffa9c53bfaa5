"""OpenAI's Batch object, field for field, and the checks of a create request and of a file against
the batch that would run it."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field

from orchestrator import defaults
from orchestrator.openai_api.errors import bad_request
from orchestrator.openai_api.files import ENDPOINTS, FileRecord
from orchestrator.openai_api.served import ServedModel

Status = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                 "cancelled"]
TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})
WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
CREATE_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata"}

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
