"""A real uvicorn server on 127.0.0.1 serving the synthfleet API, for unit tests (not a test module).

The app's lifespan is off, so the coordinator's scheduling loop and Ray never start: what these tests
check (auth, body limits, the client's errors, the CLI's output) happens before a request reaches
them, or only reads the coordinator's (empty) job table.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from orchestrator.service.api import create_app
from orchestrator.service.coordinator import Coordinator

START_TIMEOUT_S = 10.0


@contextmanager
def running_api(state: Path, *, token: str | None, max_body_bytes: int | None = None,
                tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """Serve create_app(...) on a free port of 127.0.0.1 in a thread; yields its URL. With `tls`
    (certificate, key: PEM files) it serves https."""
    limits = {} if max_body_bytes is None else {"max_body_bytes": max_body_bytes}
    app = create_app(Coordinator(str(state)), token=token, **limits)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    certs = {} if tls is None else {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])}
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **certs))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test API server did not start"
        time.sleep(0.02)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=START_TIMEOUT_S)
        sock.close()


@contextmanager
def refused_port() -> Iterator[int]:
    """A port of 127.0.0.1 that refuses connections: bound (so nothing else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
