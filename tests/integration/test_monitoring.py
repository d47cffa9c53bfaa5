"""A real Prometheus (Debian package) scrapes a running coordinator; PromQL sees tokens flow.
And the coordinator process killed mid-job resumes on restart without regenerating commits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from orchestrator.client import Client
from tests.integration.conftest import make_spec
from tests.integration.test_service import fake_job


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Prometheus on 127.0.0.1 whose config the test fills in (1 s scrape interval)."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus (Debian package) is not installed; .ci/run installs it")
    yield f"http://127.0.0.1:{_port()}", tmp_path / "prometheus.yml"


def start_prometheus(url: str, config: Path, target: str) -> subprocess.Popen[bytes]:
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "synthfleet", "static_configs": [{"targets": [target]}]}],
    }))
    port = url.rsplit(":", 1)[1]
    return subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={config.parent / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    r.raise_for_status()
    return list(r.json()["data"]["result"])


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_prometheus_scrapes_a_running_job_and_sees_generated_tokens(pool: Any, tiny_model: Path, tmp_path: Path,
                                                                    prometheus: tuple[str, Path]) -> None:
    url, config = prometheus
    with Client.local(str(tmp_path / "state"), pools=[pool]) as client:
        proc = start_prometheus(url, config, client.url.removeprefix("http://"))
        try:
            wait_for(lambda: query(url, 'up{job="synthfleet"} == 1'), 30, "the first scrape")
            prompts = {"template": {"text": "note {{ i }}", "seeds": {"i": list(range(400))}}}
            job = client.submit(make_spec(tiny_model, str(tmp_path / "out"), prompts, rows_per_shard=16,
                                          sampling={"max_tokens": 48, "ignore_eos": True}))
            rate = wait_for(lambda: [r for r in query(url, "sum(rate(synthfleet_generated_tokens_total[10s]))")
                                     if float(r["value"][1]) > 0], 60, "a positive token rate")
            assert float(rate[0]["value"][1]) > 0
            job.wait(timeout=300)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _serve(state: Path, port: int, ray_address: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SYNTHFLEET_API_TOKEN": "restart-token"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--port", str(port),
                             "--state", str(state), "--ray-address", ray_address],
                            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_a_killed_coordinator_resumes_its_job_without_regenerating_commits(ray_runtime: None, tmp_path: Path) -> None:
    import ray

    address, port, state = ray.get_runtime_context().gcs_address, _port(), tmp_path / "state"
    requests = tmp_path / "requests.log"
    spec = fake_job(tmp_path / "out", "restart", rows=40, tokens_per_s=60, request_log=str(requests))
    server = _serve(state, port, address, tmp_path / "serve.log")
    client = Client(f"http://127.0.0.1:{port}", token="restart-token")
    try:
        wait_for(lambda: httpx.get(f"{client.url}/healthz").status_code == 200, 60, "the server")
        job = client.submit(spec)
        data = tmp_path / "out" / job.id / "data"
        wait_for(lambda: data.exists() and len(list(data.iterdir())) >= 3, 60, "three committed shards")
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        committed = {p.name: p.read_bytes() for p in data.iterdir()}
        requested_before = len(requests.read_text().split())

        server = _serve(state, port, address, tmp_path / "serve.log")
        wait_for(lambda: httpx.get(f"{client.url}/healthz").status_code == 200, 60, "the restarted server")
        assert client.job(job.id).wait(timeout=120).state.value == "completed"
        second_run = {int(i) for i in requests.read_text().split()[requested_before:]}
        committed_rows = {2 * int(name[6:11]) + k for name in committed for k in (0, 1)}  # rows_per_shard 2
        assert second_run and second_run.isdisjoint(committed_rows)
        assert {n: (data / n).read_bytes() for n in committed} == committed
        assert json.loads((data.parent / "_manifest.json").read_text())["rows_ok"] == 40
    finally:
        server.kill()
