"""The Python client: `Client(url, token=...)` for a server, `Client.local()` for an embedded one.

    client = Client.local()                      # or Client("http://synthfleet:8000", token=...)
    job = client.submit("examples/quickstart.yaml", priority=5)
    job.wait(progress=True)
    table = job.read()                           # pyarrow.Table, through the manifest
"""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pyarrow as pa

from orchestrator.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    JobFailedError,
    NotFoundError,
    Problem,
    ServerError,
    ServerUnavailableError,
    SpecError,
    SynthfleetError,
)
from orchestrator.service.records import TERMINAL, JobRecord, JobState
from orchestrator.spec.job import JobSpec
from orchestrator.spec.load import load_spec

if TYPE_CHECKING:
    from orchestrator.finalize.quality_report import QualityReport
    from orchestrator.openai_api.served import ServedModel

POLL_S = 1.0
UNAVAILABLE_STATUS = frozenset({502, 503, 504})  # a proxy or load balancer with no server behind it


def tls_context(verify: bool | str | Path | ssl.SSLContext) -> bool | ssl.SSLContext:
    """What httpx needs for `verify`: True (the system's CAs), False (no check), or a context trusting
    the CA file named (a file that cannot be read is a ConfigError naming it)."""
    if isinstance(verify, (bool, ssl.SSLContext)):
        return verify
    try:
        return ssl.create_default_context(cafile=str(verify))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot use {verify} as the CA file to trust: {e}; give a PEM file of the "
                          "certificate that signed the server's") from None


def _untrusted(e: httpx.TransportError) -> ssl.SSLCertVerificationError | None:
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    return cause


def _unreachable(url: str, e: httpx.TransportError, timeout: float) -> SynthfleetError:
    """What a transport failure means to the user: an untrusted certificate, nothing answering, too
    slow, or the connection lost."""
    if (bad := _untrusted(e)) is not None:
        return ConfigError(f"the TLS certificate of {url} is not trusted ({bad.verify_message}): pass the CA "
                           "that signed it (Client(url, verify='ca.pem'), --ca-file or $SYNTHFLEET_CA_FILE)")
    if isinstance(e, httpx.ConnectError):
        return ServerUnavailableError(f"cannot reach synthfleet at {url} — is synthfleet serve running?")
    if isinstance(e, httpx.TimeoutException):
        return ServerUnavailableError(f"synthfleet at {url} did not answer within {timeout:g} s")
    return ServerUnavailableError(f"lost the connection to synthfleet at {url} ({type(e).__name__})")


def _raise_for(response: httpx.Response, url: str) -> None:
    """The error of the tree that an error status stands for; nothing for a success."""
    code = response.status_code
    if code < 400:
        return
    body: dict[str, Any] = response.json() if response.headers.get("content-type", "").startswith(
        "application/json") else {}
    if code == 401:
        raise AuthError("the server refused the API token (missing or invalid)")
    if code == 404:
        raise NotFoundError(str(body.get("detail", "not found")))
    if code == 409:
        raise ConflictError(str(body.get("error", "conflict")))
    if code == 413:
        raise SpecError([Problem("", str(body.get("detail", "the request body is too large")))])
    if code == 422:
        raise SpecError([Problem(p["path"], p["message"]) for p in body.get("problems", [])]
                        or [Problem("", str(body))])
    if code in UNAVAILABLE_STATUS:
        raise ServerUnavailableError(f"synthfleet at {url} is unavailable (HTTP {code})")
    detail = body.get("detail", response.reason_phrase)
    raise ServerError(f"synthfleet at {url} failed the request (HTTP {code}): {detail}")


class Job:
    """A handle on one job of a server."""

    def __init__(self, client: Client, record: JobRecord):
        self.client, self.id, self._record = client, record.id, record

    def __repr__(self) -> str:
        return f"Job({self.id!r}, state={self._record.state.value})"

    @property
    def record(self) -> JobRecord:
        """The record as the server last returned it (no request; `status()` fetches a fresh one)."""
        return self._record

    def status(self) -> JobRecord:
        self._record = JobRecord.model_validate(self.client._call("GET", f"/v1/jobs/{self.id}"))
        return self._record

    def cancel(self) -> JobRecord:
        self._record = JobRecord.model_validate(self.client._call("POST", f"/v1/jobs/{self.id}/cancel"))
        return self._record

    def wait(self, timeout: float | None = None, *, progress: bool = False,
             on_update: Callable[[JobRecord], None] | None = None) -> JobRecord:
        """Block until the job is completed; JobFailedError if it failed or was cancelled. `progress`
        draws a bar; `on_update` is given each record polled, the last one included."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        deadline = None if timeout is None else time.monotonic() + timeout
        bar = Progress(TextColumn(self.id), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                       TextColumn("{task.fields[tps]:>8.0f} tokens/s"), TimeRemainingColumn(), disable=not progress)
        with bar:
            task = bar.add_task(self.id, total=1.0, tps=0.0)
            while True:
                record = self.status()
                bar.update(task, completed=record.progress, tps=record.tokens_per_s)
                if on_update is not None:
                    on_update(record)
                if record.state in TERMINAL:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} still {record.state.value} after {timeout} s")
                time.sleep(POLL_S)
        if record.state != JobState.COMPLETED:
            raise JobFailedError(f"job {self.id} {record.state.value}: {'; '.join(record.errors) or 'no detail'}", [])
        return record

    def read(self, *, errors: bool = False, rejected: bool = False) -> pa.Table:
        """All data rows of the finished job (or its error or rejected rows), read from storage through
        the manifest."""
        from orchestrator.results import read_table

        return read_table(self._output(), errors=errors, rejected=rejected)

    def quality(self) -> QualityReport:
        """The finished job's quality report (typed: `.diversity`, `.dedup`, `.judge`, `.drift`, `.reference`;
        `.json_dict()` for the JSON of the manifest's `quality` section)."""
        from orchestrator.results import manifest, open_job

        return manifest(open_job(self._output())).quality

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        from orchestrator.results import iter_tables, open_job

        for table in iter_tables(open_job(self._output())):
            yield from table.to_pylist()

    def to_pandas(self) -> Any:
        return self.read().to_pandas()

    def _output(self) -> str:
        record = self._record if self._record.output else self.status()
        if record.state != JobState.COMPLETED:
            record = self.status()
        if record.state != JobState.COMPLETED:
            raise JobFailedError(f"job {self.id} is {record.state.value}, not completed", [])
        return record.output


class Client:
    """Talks to a synthfleet server's HTTP API."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0,
                 verify: bool | str | Path | ssl.SSLContext = True):
        """`verify` (https URLs): True trusts the system's CAs, a path trusts the CA in that PEM file
        (a server behind an Ingress with a private CA, or a self-signed certificate), False checks nothing."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url, self.timeout = url.rstrip("/"), timeout
        self.token = token  # also what the `openai` SDK needs as api_key for the Batch API at url + "/v1"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=tls_context(verify))
        self._server: Any = None

    @classmethod
    def local(cls, state: str = "outputs/_state", *, models: dict[str, ServedModel] | None = None,
              **coordinator_options: Any) -> Client:
        """Start an embedded coordinator (and local Ray) in this process; for notebooks and scripts.
        `models` are the models OpenAI Batch requests may name (the `openai` SDK at `client.url + "/v1"`)."""
        import uvicorn

        from orchestrator.run.ray_runtime import ensure_ray
        from orchestrator.service.api import create_app
        from orchestrator.service.coordinator import Coordinator

        ensure_ray(coordinator_options.get("ray_address"), worker_logs=False)  # from the main thread
        token = secrets.token_urlsafe(24)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app = create_app(Coordinator(state, **coordinator_options), token=token, models=models)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, name="synthfleet-coordinator", daemon=True)
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the embedded coordinator failed to start")
            time.sleep(0.05)
        client = cls(f"http://127.0.0.1:{port}", token=token, timeout=120.0)
        client._server = (server, thread)
        return client

    def close(self) -> None:
        self._http.close()
        if self._server is not None:
            server, thread = self._server
            server.should_exit = True
            thread.join(timeout=60)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API request; every failure is an error of the synthfleet tree, never an httpx one."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise _unreachable(self.url, e, self.timeout) from e
        _raise_for(response, self.url)
        return response.json()

    def submit(self, spec: JobSpec | dict[str, Any] | str | Path, *, priority: int = 0,
               idempotency_key: str | None = None) -> Job:
        if isinstance(spec, (str, Path)):  # paths the server can use: inputs already absolute, output made so
            spec = load_spec(spec)
            if "://" not in spec.output.uri and not os.path.isabs(spec.output.uri):
                spec = spec.with_output(os.path.abspath(spec.output.uri))
        data = spec.model_dump(mode="json") if isinstance(spec, JobSpec) else spec
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        record = self._call("POST", "/v1/jobs", json={"spec": data, "priority": priority}, headers=headers)
        return Job(self, JobRecord.model_validate(record))

    def job(self, job_id: str) -> Job:
        return Job(self, JobRecord.model_validate(self._call("GET", f"/v1/jobs/{job_id}")))

    def jobs(self, state: JobState | str | None = None) -> list[Job]:
        params = {"state": JobState(state).value} if state else {}
        return [Job(self, JobRecord.model_validate(r)) for r in self._call("GET", "/v1/jobs", params=params)]
