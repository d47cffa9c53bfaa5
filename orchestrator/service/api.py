"""The coordinator's JSON HTTP API (FastAPI on uvicorn), with bearer-token auth.

POST /v1/jobs, GET /v1/jobs, GET /v1/jobs/{id}, POST /v1/jobs/{id}/cancel, GET /healthz, GET /metrics;
and OpenAI's Files and Batches API (/v1/files, /v1/batches: orchestrator/openai_api).
Every /v1 route needs `Authorization: Bearer <token>` when a token is configured; a server on a
non-loopback address refuses to start without one. Tokens are compared in constant time and never
logged or echoed. A job's body is bounded before it is parsed: over `max_body_bytes` it gets 413
(by its Content-Length, or by counting what streams in), nested deeper than `MAX_JSON_DEPTH` 422.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError

from orchestrator import defaults
from orchestrator.errors import ConfigError, ConflictError, NotFoundError, Problem, SpecError
from orchestrator.openai_api.batches import BatchService
from orchestrator.openai_api.errors import OpenAIError
from orchestrator.openai_api.routes import openai_authorized, openai_router
from orchestrator.openai_api.served import ServedModel
from orchestrator.service.coordinator import Coordinator
from orchestrator.service.records import JobRecord, JobState
from orchestrator.spec.load import parse_spec, problems_from

TOKEN_ENV, TOKEN_FILE_ENV = defaults.API_TOKEN_ENV, defaults.API_TOKEN_FILE_ENV
BODY_SHAPE = "the body must be JSON: {spec, priority}"
MB = 1024 * 1024


def load_token(token_file: str | None = None) -> str | None:
    """The API token from a file (a mounted Kubernetes secret) or the environment.

    A token file that cannot be read, or is empty, is a ConfigError: a server must never fall back to
    running without auth because its secret did not mount.
    """
    path = token_file or os.environ.get(TOKEN_FILE_ENV)
    if not path:
        return os.environ.get(TOKEN_ENV) or None
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the API token file {path}: {e.strerror or type(e).__name__}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the API token file {path} is not UTF-8 text") from None
    if not token:
        raise ConfigError(f"the API token file {path} is empty")
    return token


def take_token(token_file: str | None = None) -> str | None:
    """load_token, then the token's variables leave this process's environment, so nothing it starts
    (Ray, vLLM, a shell) inherits them; the server keeps the token in memory only."""
    token = load_token(token_file)
    for name in defaults.SECRET_ENV:
        os.environ.pop(name, None)
    return token


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether the header is `Bearer <token>` (the scheme in any case, RFC 7235), compared in constant
    time; a bare token, another scheme or an empty one is refused."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening (port 0: any free one), so `serve` can say exactly where
    it listens, and connections made before the server is ready wait instead of being refused."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server that calls `announce` once it accepts requests (the coordinator has started), so
    what `serve` prints is true when it prints it."""

    def __init__(self, config: uvicorn.Config, announce: Callable[[], None]):
        super().__init__(config)
        self.announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.announce()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SubmitRequest(BaseModel):
    spec: dict[str, Any]
    priority: int = Field(0, description="Higher runs first; FIFO within a priority.")


def _problems(e: SpecError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"error": "invalid spec", "problems": [
        {"path": p.path, "message": p.message} for p in e.problems]})


def _too_large(limit: int) -> HTTPException:
    """413, closing the connection: else the server would go on receiving (and dropping) the rest."""
    return HTTPException(status_code=413, headers={"Connection": "close"}, detail=(
        f"the request body is over the server's limit of {limit / MB:g} MB (synthfleet serve --max-body-mb); "
        "read large prompt sets from a file (prompts.file.uri) instead of inline seeds"))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes without holding more than that: first by
    its Content-Length, then by counting the bytes as they stream in (a chunked body declares none)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def nesting_within(value: Any, limit: int) -> bool:
    """Whether lists and objects nest at most `limit` deep in `value`; walked with a stack, not recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


def submit_request(raw: bytes) -> SubmitRequest:
    """The body of POST /v1/jobs, or SpecError (422) when it is not JSON, nests too deep or has the wrong
    shape; a body that would make the parser recurse past Python's limit is one of these, not a 500."""
    too_deep = SpecError([Problem("", f"the body nests lists and objects more than {defaults.MAX_JSON_DEPTH} "
                                      "levels deep")])
    try:
        data = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except ValueError:
        raise SpecError([Problem("", BODY_SHAPE)]) from None
    if not nesting_within(data, defaults.MAX_JSON_DEPTH):
        raise too_deep
    try:
        return SubmitRequest.model_validate(data)
    except ValidationError as e:
        raise SpecError(problems_from(e) or [Problem("", BODY_SHAPE)]) from None


def create_app(coordinator: Coordinator, *, token: str | None,
               max_body_bytes: int = int(defaults.MAX_BODY_MB * MB), models: dict[str, ServedModel] | None = None,
               max_file_bytes: int = int(defaults.MAX_FILE_MB * MB)) -> FastAPI:
    """The API; `models` are what OpenAI Batch requests may name (`serve --model`)."""
    batches = BatchService(coordinator, models or {})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await coordinator.start()
        await batches.start()
        yield
        await batches.stop()
        await coordinator.stop()

    app = FastAPI(title="synthfleet", lifespan=lifespan)
    app.add_exception_handler(OpenAIError, lambda _, e: e.response())  # type: ignore[arg-type, attr-defined]
    app.include_router(openai_router(batches, openai_authorized(token, bearer_matches), max_file_bytes))

    def authorized(authorization: str | None = Header(default=None)) -> None:
        if token is not None and not bearer_matches(authorization, token):
            raise HTTPException(status_code=401, detail="missing or invalid bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    v1 = [Depends(authorized)]

    @app.post("/v1/jobs", dependencies=v1)
    async def submit(request: Request, idempotency_key: str | None = Header(default=None)) -> JSONResponse:
        try:
            body = submit_request(await read_body(request, max_body_bytes))
            record = await coordinator.submit(parse_spec(body.spec), priority=body.priority,
                                              idempotency_key=idempotency_key)
        except SpecError as e:
            return _problems(e)
        except ConflictError as e:
            return JSONResponse(status_code=409, content={"error": str(e)})
        return JSONResponse(status_code=201, content=record.model_dump(mode="json"))

    @app.get("/v1/jobs", dependencies=v1)
    async def jobs(state: JobState | None = None) -> list[dict[str, Any]]:
        return [r.model_dump(mode="json") for r in coordinator.list(state)]

    @app.get("/v1/jobs/{job_id}", dependencies=v1)
    async def job(job_id: str) -> dict[str, Any]:
        return _found(coordinator, job_id).model_dump(mode="json")

    @app.post("/v1/jobs/{job_id}/cancel", dependencies=v1)
    async def cancel(job_id: str) -> dict[str, Any]:
        _found(coordinator, job_id)
        return (await coordinator.cancel(job_id)).model_dump(mode="json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(coordinator.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _found(coordinator: Coordinator, job_id: str) -> JobRecord:
    try:
        return coordinator.get(job_id)
    except NotFoundError as e:
        raise HTTPException(status_code=404, detail=str(e)) from None
