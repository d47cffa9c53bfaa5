"""The Python client turns every way a server can fail to answer into an error of synthfleet's tree:
never an httpx exception. Each failure here is real: a refused port, a silent listener, a server
that hangs up, a proxy's 503."""

from __future__ import annotations

import http.server
import inspect
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from orchestrator import errors
from orchestrator.client import Client
from orchestrator.errors import ServerError, ServerUnavailableError, SynthfleetError
from tests.unit.apiserver import refused_port, running_api


@contextmanager
def _listener(on_accept: str) -> Iterator[str]:
    """A TCP listener on 127.0.0.1 that, for each connection, stays `silent` or `hangs up` at once."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if on_accept == "hangs up":
                conn.recv(65536)
                conn.close()
            else:
                held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for conn in held:
            conn.close()


@contextmanager
def _answering(status: int) -> Iterator[str]:
    """A plain HTTP server answering every request with `status` and an HTML body, as a proxy would."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>no upstream</html>")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _failure(url: str, **options: float) -> SynthfleetError:
    with pytest.raises(SynthfleetError) as e:
        Client(url, token="secret-token", **options).jobs()
    assert not isinstance(e.value, httpx.HTTPError)
    assert "secret-token" not in str(e.value)
    return e.value


def test_a_refused_connection_is_server_unavailable_and_retriable() -> None:
    with refused_port() as port:
        error = _failure(f"http://127.0.0.1:{port}")
    assert isinstance(error, ServerUnavailableError) and error.retriable
    assert str(error) == f"cannot reach synthfleet at http://127.0.0.1:{port} — is synthfleet serve running?"
    assert isinstance(error.__cause__, httpx.ConnectError)  # kept for debugging, not raised


def test_a_server_that_never_answers_is_server_unavailable_after_the_timeout() -> None:
    with _listener("silent") as url:
        error = _failure(url, timeout=0.5)
    assert isinstance(error, ServerUnavailableError)
    assert str(error) == f"synthfleet at {url} did not answer within 0.5 s"


def test_a_server_that_hangs_up_mid_request_is_server_unavailable() -> None:
    with _listener("hangs up") as url:
        error = _failure(url)
    assert isinstance(error, ServerUnavailableError)
    assert str(error).startswith(f"lost the connection to synthfleet at {url}")


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_proxy_with_no_server_behind_it_is_server_unavailable(status: int) -> None:
    with _answering(status) as url:
        error = _failure(url)
    assert isinstance(error, ServerUnavailableError) and f"HTTP {status}" in str(error)


def test_an_internal_server_error_is_a_server_error_not_retried() -> None:
    with _answering(500) as url:
        error = _failure(url)
    assert type(error) is ServerError and not error.retriable and "HTTP 500" in str(error)


def test_a_reachable_server_answers_through_the_same_client(tmp_path: Path) -> None:
    with running_api(tmp_path / "state", token="secret-token") as url:
        assert Client(url, token="secret-token").jobs() == []


def test_every_error_class_is_drawn_in_the_tree_of_the_errors_module() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, SynthfleetError)]
    tree = errors.__doc__ or ""
    assert {"ServerUnavailableError", "ServerError", "ConfigError"} <= {c.__name__ for c in classes}
    assert [c.__name__ for c in classes if f"── {c.__name__} " not in tree and c is not SynthfleetError] == []
