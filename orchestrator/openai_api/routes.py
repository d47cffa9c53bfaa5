"""The /v1/files and /v1/batches routes, in OpenAI's shapes and with OpenAI's errors, behind the same
bearer token as the rest of /v1.

An upload is bounded as it streams in (413 past `max_file_bytes`, by its Content-Length first), parsed
by Starlette into a spooled temporary file, checked whole, then copied to the state store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive

from orchestrator.openai_api.batch_objects import TERMINAL
from orchestrator.openai_api.batches import BatchService
from orchestrator.openai_api.errors import OpenAIError, bad_request
from orchestrator.openai_api.files import page

MB = 1024 * 1024


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"The file is over this server's limit of {limit / MB:g} MB (synthfleet serve "
                            "--max-file-mb); split it into several batches.", param="file", code="file_too_large")


def bounded(receive: Receive, limit: int) -> Receive:
    """`receive`, raising 413 once the body passes `limit` bytes (a chunked upload declares no length)."""
    seen = 0

    async def counting() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise _too_large(limit)
        return message

    return counting


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError):
        raise bad_request("the body must be JSON") from None


def _limit(limit: int, lo: int, hi: int) -> int:
    if not lo <= limit <= hi:
        raise bad_request(f"limit must be between {lo} and {hi}", param="limit", code="invalid_value")
    return limit


def openai_router(service: BatchService, authorized: Callable[..., None], max_file_bytes: int) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])
    files = service.files

    @router.post("/files")
    async def create_file(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_file_bytes + MB:  # the form's own fields are small
            raise _too_large(max_file_bytes)
        limited = Request(request.scope, receive=bounded(request.receive, max_file_bytes + MB))
        try:
            form = await limited.form(max_files=1, max_fields=8)
        except OpenAIError:
            raise
        except Exception as e:  # Starlette's multipart errors, a body that is not a form
            raise bad_request(f"the body must be a multipart form with `file` and `purpose`: {e}",
                              param="file") from None
        try:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise bad_request("Missing required parameter: 'file' (the JSONL file, as a multipart file field).",
                                  param="file", code="missing_required_parameter")
            if not isinstance(purpose, str):
                raise bad_request("Missing required parameter: 'purpose' (batch).", param="purpose",
                                  code="missing_required_parameter")
            if upload.size is not None and upload.size > max_file_bytes:
                raise _too_large(max_file_bytes)
            record = await asyncio.to_thread(files.upload, upload.file, upload.filename or "upload.jsonl", purpose)
        finally:
            await form.close()
        return JSONResponse(record.file.model_dump())

    @router.get("/files")
    async def list_files(purpose: str | None = None, after: str | None = None, limit: int = 10_000,
                         order: str = "desc") -> dict[str, Any]:
        if order not in ("asc", "desc"):
            raise bad_request("order must be asc or desc", param="order", code="invalid_value")
        return page(files.listed(purpose, order), after, _limit(limit, 1, 10_000))

    @router.get("/files/{file_id}")
    async def get_file(file_id: str) -> dict[str, Any]:
        return files.get(file_id).file.model_dump()

    @router.get("/files/{file_id}/content")
    async def file_content(file_id: str) -> StreamingResponse:
        files.get(file_id)
        return StreamingResponse(files.content(file_id), media_type="application/octet-stream")

    @router.delete("/files/{file_id}")
    async def delete_file(file_id: str) -> dict[str, Any]:
        files.get(file_id)
        users = [b.id for b in service.listed() if b.input_file_id == file_id and b.status not in TERMINAL]
        if users:
            raise OpenAIError(409, f"file {file_id} is the input of batch {users[0]}, which has not finished; "
                                   "cancel it first", param="file_id", code="file_in_use")
        await asyncio.to_thread(files.delete, file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    @router.post("/batches")
    async def create_batch(request: Request) -> dict[str, Any]:
        return (await service.create(await _json_body(request))).model_dump()

    @router.get("/batches")
    async def list_batches(after: str | None = None, limit: int = 20) -> dict[str, Any]:
        return page(service.listed(), after, _limit(limit, 1, 100))

    @router.get("/batches/{batch_id}")
    async def get_batch(batch_id: str) -> dict[str, Any]:
        return service.get(batch_id).model_dump()

    @router.post("/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> dict[str, Any]:
        return (await service.cancel(batch_id)).model_dump()

    return router


def openai_authorized(token: str | None, matches: Callable[[str | None, str], bool]) -> Callable[..., None]:
    """The bearer check, failing with OpenAI's 401 (the SDK raises AuthenticationError)."""

    def authorized(authorization: str | None = Header(default=None)) -> None:
        if token is not None and not matches(authorization, token):
            raise OpenAIError(401, "Incorrect API key provided: the server expects its bearer token.",
                              code="invalid_api_key")

    return authorized

