"""The HTTP API refuses what it must before it reaches the coordinator: bad bearer headers (401),
oversized bodies (413, without reading them), bodies nested too deep (422, never a 500)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator import defaults
from orchestrator.client import Client
from orchestrator.errors import SpecError
from tests.unit.apiserver import running_api

TOKEN = "t0ken-for-tests"
LIMIT = 1024 * 1024  # the test server's body limit
CHUNK = 64 * 1024


@pytest.fixture()
def url(tmp_path: Path) -> Iterator[str]:
    with running_api(tmp_path / "state", token=TOKEN, max_body_bytes=LIMIT) as u:
        yield u


def _jobs(url: str, authorization: str | None) -> int:
    headers = {} if authorization is None else {"Authorization": authorization}
    return httpx.get(f"{url}/v1/jobs", headers=headers).status_code


def _submit(url: str, body: bytes | Iterator[bytes]) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", content=body, timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})


def _nested(depth: int) -> bytes:
    """A submit body whose spec holds lists nested `depth` deep (the body itself is 2 more levels)."""
    return b'{"spec": {"x": ' + b"[" * depth + b"]" * depth + b"}}"


# --- Authorization --------------------------------------------------------------------------------

def test_the_bearer_scheme_is_accepted_in_any_case(url: str) -> None:
    assert [_jobs(url, f"{scheme} {TOKEN}") for scheme in ("Bearer", "bearer", "BEARER")] == [200, 200, 200]


def test_a_bare_token_without_the_bearer_scheme_is_refused(url: str) -> None:
    assert _jobs(url, TOKEN) == 401


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}",
                                           f"Token {TOKEN}", f"Bearer{TOKEN}"])
def test_anything_but_bearer_and_the_token_is_refused(url: str, authorization: str | None) -> None:
    assert _jobs(url, authorization) == 401


def test_the_401_names_the_bearer_scheme_and_never_echoes_the_token(url: str) -> None:
    response = httpx.get(f"{url}/v1/jobs", headers={"Authorization": TOKEN})
    assert response.headers["WWW-Authenticate"] == "Bearer" and TOKEN not in response.text


def test_health_needs_no_token(url: str) -> None:
    assert httpx.get(f"{url}/healthz").status_code == 200


# --- body size ------------------------------------------------------------------------------------

def test_a_body_declared_over_the_limit_gets_413_before_any_of_it_is_sent(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {10 ** 12}\r\n\r\n".encode())
        status_line = s.recv(4096).split(b"\r\n", 1)[0]  # a server waiting for the body would time out here
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"


def test_a_streamed_body_is_cut_off_at_the_limit_not_read_to_its_end(url: str) -> None:
    sent = 0

    def endless() -> Iterator[bytes]:  # chunked: no Content-Length to check, only the bytes to count
        nonlocal sent
        for _ in range(1024 * 1024 * 1024 // CHUNK):  # 1 GiB unless the server stops reading
            sent += CHUNK
            yield b" " * CHUNK

    response = _submit(url, endless())
    assert response.status_code == 413 and "--max-body-mb" in response.json()["detail"]
    assert sent < 64 * LIMIT, f"the client sent {sent} bytes: the server read on past its limit"


def test_a_body_within_the_limit_is_read_and_validated(url: str) -> None:
    body = json.dumps({"spec": {"name": "x", "pad": " " * (LIMIT - 100)}}).encode()
    assert len(body) <= LIMIT
    response = _submit(url, body)
    assert response.status_code == 422 and {p["path"] for p in response.json()["problems"]} >= {"pad", "model"}


def test_the_client_raises_spec_error_naming_the_limit(url: str) -> None:
    with pytest.raises(SpecError, match="max-body-mb") as e:
        Client(url, token=TOKEN).submit({"name": "big", "pad": "x" * (2 * LIMIT)})
    assert not e.value.retriable


# --- nesting --------------------------------------------------------------------------------------

def test_a_body_nested_past_pythons_recursion_limit_gets_422_not_500(url: str) -> None:
    response = _submit(url, _nested(100_000))
    assert response.status_code == 422
    assert response.json()["problems"] == [
        {"path": "", "message": f"the body nests lists and objects more than {defaults.MAX_JSON_DEPTH} levels deep"}]


def test_a_body_nested_one_past_the_depth_limit_gets_422(url: str) -> None:
    response = _submit(url, _nested(defaults.MAX_JSON_DEPTH - 1))
    assert response.status_code == 422 and "nests" in response.json()["problems"][0]["message"]


def test_a_body_nested_to_the_depth_limit_reaches_spec_validation(url: str) -> None:
    response = _submit(url, _nested(defaults.MAX_JSON_DEPTH - 2))
    problems = response.json()["problems"]
    assert response.status_code == 422 and "x" in {p["path"] for p in problems}
    assert not any("nests" in p["message"] for p in problems)


def test_a_body_that_is_not_json_gets_422_with_the_expected_shape(url: str) -> None:
    response = _submit(url, b"{not json")
    assert response.status_code == 422 and response.json()["problems"][0]["message"].startswith("the body must be")
