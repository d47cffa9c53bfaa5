"""The coordinator's JSON HTTP API (FastAPI on uvicorn), with bearer-token auth.

POST /v1/jobs, GET /v1/jobs, GET /v1/jobs/{id}, POST /v1/jobs/{id}/cancel, GET /healthz, GET /metrics.
Every /v1 route needs `Authorization: Bearer <token>` when a token is configured; a server on a
non-loopback address refuses to start without one. Tokens are compared in constant time and never
logged or echoed.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError

from orchestrator.errors import ConflictError, NotFoundError, Problem, SpecError
from orchestrator.jobs import JobRecord, JobState
from orchestrator.service import Coordinator
from orchestrator.spec import problems_from

TOKEN_ENV, TOKEN_FILE_ENV = "SYNTHFLEET_API_TOKEN", "SYNTHFLEET_API_TOKEN_FILE"


def load_token(token_file: str | None = None) -> str | None:
    """The API token from a file (a mounted Kubernetes secret) or the environment."""
    path = token_file or os.environ.get(TOKEN_FILE_ENV)
    if path:
        return Path(path).read_text().strip() or None
    return os.environ.get(TOKEN_ENV) or None


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


def create_app(coordinator: Coordinator, *, token: str | None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await coordinator.start()
        yield
        await coordinator.stop()

    app = FastAPI(title="synthfleet", lifespan=lifespan)

    def authorized(authorization: str | None = Header(default=None)) -> None:
        if token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not authorization or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(status_code=401, detail="missing or invalid bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    v1 = [Depends(authorized)]

    @app.post("/v1/jobs", dependencies=v1)
    async def submit(request: Request, idempotency_key: str | None = Header(default=None)) -> JSONResponse:
        try:
            body = SubmitRequest.model_validate(await request.json())
        except (ValidationError, ValueError) as e:
            problems = problems_from(e) if isinstance(e, ValidationError) else []
            return _problems(SpecError(problems or [Problem("", "the body must be JSON: {spec, priority}")]))
        from orchestrator.spec import parse_spec

        try:
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
