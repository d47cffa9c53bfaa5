"""`synthfleet serve` as a user starts it, in its own process with its own local Ray: it says where it
listens, authenticates with the token from its environment, and no Ray or engine process it starts
inherits that token."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from orchestrator.client import Client
from orchestrator.errors import AuthError
from orchestrator.service.records import JobState
from tests.integration.test_service import fake_job

TOKEN = "serve-test-token-4f9c2e"
ROOT = Path(__file__).parents[2]
START_TIMEOUT_S = 120.0  # a fresh local Ray on 2 cores
BANNER = re.compile(r"^synthfleet serving on (http://127\.0\.0\.1:\d+) \(state: (.+), auth: (token|none), "
                    r"batch models: (.+)\)$")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHFLEET_")}
    return {**env, **extra}


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline() if proc.stdout else ""), daemon=True).start()
    try:
        return lines.get(timeout=timeout).rstrip("\n")
    except queue.Empty:
        raise AssertionError(f"serve printed nothing within {timeout} s") from None


@contextmanager
def _serve(state: Path, env: dict[str, str], *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -m orchestrator.cli serve --port 0`; yields the process and the first line it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--port", "0", "--state", str(state),
                             *args],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc, _first_line(proc, START_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """serve with the token in its environment."""
    with _serve(tmp_path / "state", _env(SYNTHFLEET_API_TOKEN=TOKEN)) as s:
        yield s


def _environ(process: psutil.Process) -> bytes:
    try:
        return Path(f"/proc/{process.pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return b""  # it exited meanwhile


def test_serve_says_where_it_listens_and_how_it_authenticates(served: tuple[subprocess.Popen[str], str],
                                                             tmp_path: Path) -> None:
    _, banner = served
    match = BANNER.match(banner)
    assert match, banner
    assert match.group(2) == str(tmp_path / "state") and match.group(3) == "token"
    assert Client(match.group(1), token=TOKEN).jobs() == []  # it listens where it says, once it says it


def test_serve_authenticates_with_the_token_it_took_from_its_environment(served: tuple[subprocess.Popen[str], str]
                                                                         ) -> None:
    url = BANNER.match(served[1]).group(1)  # type: ignore[union-attr]
    with pytest.raises(AuthError):
        Client(url).jobs()
    with pytest.raises(AuthError):
        Client(url, token="not-the-token").jobs()
    assert Client(url, token=TOKEN).jobs() == []


def test_no_process_serve_starts_holds_the_token(served: tuple[subprocess.Popen[str], str], tmp_path: Path) -> None:
    proc, banner = served
    client = Client(BANNER.match(banner).group(1), token=TOKEN)  # type: ignore[union-attr]
    job = client.submit(fake_job(tmp_path, "env", rows=4))
    assert job.wait(timeout=120).state == JobState.COMPLETED  # a worker actor ran the job
    descendants = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in descendants if p.is_running())
    assert "GenerationWorker" in names and "raylet" in names, names
    holding = [p.pid for p in descendants if TOKEN.encode() in _environ(p)]
    assert holding == [], f"processes started by serve hold the token: {holding}"


RAY_ENV_PROBE = textwrap.dedent("""
    import json, os
    import ray
    from orchestrator.run.ray_runtime import ensure_ray

    os.environ["SYNTHFLEET_API_TOKEN"] = "probe-token"
    os.environ["SYNTHFLEET_API_TOKEN_FILE"] = "/run/secrets/probe"
    os.environ["SYNTHFLEET_PROBE_OTHER"] = "inherited"

    def seen():
        return {k: v for k, v in os.environ.items() if k.startswith("SYNTHFLEET_")}

    @ray.remote(num_cpus=0)
    class Probe:
        def seen(self):
            return seen()

    ensure_ray(worker_logs=False)
    print(json.dumps({"task": ray.get(ray.remote(num_cpus=0)(seen).remote()),
                      "actor": ray.get(Probe.remote().seen.remote()), "driver": seen()}))
""")


def test_ray_tasks_and_actors_never_see_the_token_of_the_process_that_started_ray() -> None:
    import json

    done = subprocess.run([sys.executable, "-c", RAY_ENV_PROBE], env=_env(), capture_output=True, text=True,
                          timeout=START_TIMEOUT_S, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["task"] == seen["actor"] == {"SYNTHFLEET_PROBE_OTHER": "inherited"}  # the rest is inherited
    assert seen["driver"]["SYNTHFLEET_API_TOKEN"] == "probe-token"  # the driver keeps its own environment


def test_serve_without_a_token_on_loopback_says_auth_none(tmp_path: Path) -> None:
    with _serve(tmp_path / "state", _env()) as (_, banner):
        match = BANNER.match(banner)
        assert match and match.group(3) == "none"
        assert Client(match.group(1)).jobs() == []


def test_serve_with_a_models_file_runs_an_openai_batch_from_the_sdk(tmp_path: Path) -> None:
    import openai

    models = tmp_path / "models.yaml"
    models.write_text("fast:\n  model: {path: fake, engine: fake, engine_args: {tokens_per_s: 500}}\n"
                      "  resources: {workers: 1, gpus_per_worker: 0, cpus_per_worker: 0}\n  rows_per_shard: 2\n")
    requests = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                                   "body": {"model": "fast", "prompt": f"p{i}", "max_tokens": 3}}) + "\n"
                       for i in range(5))
    with _serve(tmp_path / "state", _env(SYNTHFLEET_API_TOKEN=TOKEN), "--models", str(models)) as (_, banner):
        match = BANNER.match(banner)
        assert match and match.group(4) == "fast"
        oa = openai.OpenAI(base_url=f"{match.group(1)}/v1", api_key=TOKEN, max_retries=0)
        file = oa.files.create(file=("requests.jsonl", requests.encode()), purpose="batch")
        batch = oa.batches.create(input_file_id=file.id, endpoint="/v1/completions", completion_window="24h")
        deadline = time.monotonic() + 120
        while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.3)
            batch = oa.batches.retrieve(batch.id)
        assert batch.status == "completed" and batch.request_counts.completed == 5
        output = [json.loads(x) for x in oa.files.content(str(batch.output_file_id)).text.splitlines()]
        assert sorted(x["custom_id"] for x in output) == [f"r{i}" for i in range(5)]
        assert all(x["response"]["body"]["model"] == "fast" for x in output)


def test_serve_refuses_a_bad_models_file_before_starting_ray(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("tiny:\n  model: {path: x}\n  resources: {workers: 0}\n")
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "serve", "--port", "0", "--models", str(models)],
                          env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "tiny.resources.workers" in done.stderr and done.stdout == ""
