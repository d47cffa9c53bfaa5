"""The coordinator service end to end: a real uvicorn server on 127.0.0.1, real Ray, the warm vLLM
pool for generation paths, and the sleeping fake engine where only scheduling is under test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.client import Client
from orchestrator.errors import AuthError, ConflictError, SpecError
from orchestrator.service.records import JobState
from orchestrator.spec.load import parse_spec
from tests.integration.conftest import make_spec
from tests.integration.test_e2e import TOPICS


def fake_job(out: Path, name: str, rows: int = 16, tokens_per_s: float = 400, **engine: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model": {"path": "fake", "engine": "fake", "engine_args": {"tokens_per_s": tokens_per_s, **engine}},
        "prompts": {"template": {"text": "row {{ i }}", "seeds": {"i": list(range(rows))}}},
        "sampling": {"max_tokens": 16},
        "output": {"uri": str(out), "rows_per_shard": 2},
        "resources": {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 0, "shards_in_flight": 1},
    }


@pytest.fixture()
def client(pool: Any, tmp_path: Path) -> Iterator[Client]:
    c = Client.local(str(tmp_path / "state"), pools=[pool], max_running_jobs=1)
    yield c
    c.close()


@pytest.fixture()
def fake_client(ray_runtime: None, tmp_path: Path) -> Iterator[Client]:
    """A service whose jobs use only the fake engine (no vLLM pool), for tests of the API and the CLI."""
    with Client.local(str(tmp_path / "state"), max_running_jobs=1) as c:
        yield c


def test_submit_poll_and_read_results_through_the_client(client: Client, tiny_model: Path, tmp_path: Path) -> None:
    job = client.submit(make_spec(tiny_model, str(tmp_path / "out"), TOPICS))
    record = job.wait(timeout=300)
    assert record.state == JobState.COMPLETED and record.progress == 1.0
    assert record.request_counts.total == record.request_counts.completed == 20
    assert set(record.timestamps) >= {JobState.QUEUED, JobState.IN_PROGRESS, JobState.FINALIZING, JobState.COMPLETED}
    assert record.completion_tokens > 0 and record.output.endswith(job.id)
    assert job.read().num_rows == 20 == len(list(job.iter_rows())) == len(job.to_pandas())
    assert [j.id for j in client.jobs(state="completed")] == [job.id]


def test_two_jobs_on_the_same_model_share_one_warm_engine(client: Client, pool: Any, tiny_model: Path,
                                                          tmp_path: Path) -> None:
    loads, actors = pool.stats("engine_loads"), {w.id for w in pool.workers.values()}
    first = client.submit(make_spec(tiny_model, str(tmp_path / "a"), TOPICS))
    second = client.submit(make_spec(tiny_model, str(tmp_path / "b"), TOPICS, sampling={"max_tokens": 8, "seed": 9}))
    first.wait(timeout=300), second.wait(timeout=300)
    assert pool.stats("engine_loads") == loads and {w.id for w in pool.workers.values()} == actors
    metrics = httpx.get(f"{client.url}/metrics").text
    assert "synthfleet_engine_load_seconds_count" not in metrics  # no weights loaded by the service


def test_a_high_priority_job_queued_after_a_low_priority_one_starts_first(client: Client, tmp_path: Path) -> None:
    blocker = client.submit(fake_job(tmp_path, "blocker", rows=8, tokens_per_s=100))
    low = client.submit(fake_job(tmp_path, "low"), priority=0)
    high = client.submit(fake_job(tmp_path, "high"), priority=5)
    for job in (blocker, low, high):
        job.wait(timeout=120)
    started = {j.id: j.status().timestamps[JobState.IN_PROGRESS] for j in (blocker, low, high)}
    assert started[blocker.id] < started[high.id] < started[low.id]


def test_cancel_stops_dispatch_keeps_committed_shards_and_frees_workers(client: Client, tmp_path: Path) -> None:
    job = client.submit(fake_job(tmp_path, "long", rows=40, tokens_per_s=40))
    while job.status().request_counts.completed < 4:
        time.sleep(0.2)
    assert job.cancel().state in (JobState.CANCELLING, JobState.CANCELLED)
    deadline = time.monotonic() + 60
    while job.status().state != JobState.CANCELLED and time.monotonic() < deadline:
        time.sleep(0.2)
    record = job.status()
    assert record.state == JobState.CANCELLED
    committed = list((Path(record.output) / "data").iterdir())
    assert 2 <= len(committed) < 20 and not (Path(record.output) / "_manifest.json").exists()
    quick = client.submit(fake_job(tmp_path, "after-cancel", rows=4))
    assert quick.wait(timeout=60).state == JobState.COMPLETED  # the worker was freed


def test_the_same_idempotency_key_returns_the_same_job_and_refuses_another_spec(client: Client,
                                                                              tmp_path: Path) -> None:
    spec = fake_job(tmp_path, "idem", rows=4)
    first = client.submit(spec, idempotency_key="key-1")
    again = client.submit(spec, idempotency_key="key-1")
    assert again.id == first.id and len(client.jobs()) == 1
    with pytest.raises(ConflictError):
        client.submit(fake_job(tmp_path, "idem", rows=6), idempotency_key="key-1")
    first.wait(timeout=60)


def test_an_invalid_spec_gets_422_with_every_field_path_and_nothing_is_queued(client: Client,
                                                                            tmp_path: Path) -> None:
    spec = fake_job(tmp_path, "bad")
    spec["sampling"] = {"max_tokens": 0, "tempreature": 1}
    spec["prompts"]["template"]["text"] = "{{ missing }}"
    with pytest.raises(SpecError) as e:
        client.submit(spec)
    assert {p.path for p in e.value.problems} == {"sampling.max_tokens", "sampling.tempreature"}
    spec["sampling"] = {"max_tokens": 4}
    with pytest.raises(SpecError) as e:
        client.submit(spec)
    assert [p.path for p in e.value.problems] == ["prompts.template.text"] and "'missing'" in str(e.value)
    assert client.jobs() == []


def test_requests_without_a_valid_token_get_401(client: Client) -> None:
    assert httpx.get(f"{client.url}/v1/jobs").status_code == 401
    assert httpx.get(f"{client.url}/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{client.url}/healthz").status_code == 200
    with pytest.raises(AuthError):
        Client(client.url, token="wrong").jobs()


def test_the_server_refuses_to_listen_publicly_without_a_token(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import main

    monkeypatch.delenv("SYNTHFLEET_API_TOKEN", raising=False)
    monkeypatch.delenv("SYNTHFLEET_API_TOKEN_FILE", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "without an API token" in capsys.readouterr().err


def test_metrics_pass_promtool_and_never_carry_the_token(client: Client, tmp_path: Path) -> None:
    import shutil
    import subprocess

    client.submit(fake_job(tmp_path, "metrics", rows=4)).wait(timeout=60)
    deadline = time.monotonic() + 15  # worker counts reach the coordinator within a poll interval
    while 'synthfleet_generated_tokens_total{job="metrics-' not in (text := httpx.get(f"{client.url}/metrics").text):
        assert time.monotonic() < deadline, "generated tokens never reached /metrics"
        time.sleep(0.5)
    assert 'synthfleet_rows_total{job="metrics-' in text
    assert client._http.headers["Authorization"].removeprefix("Bearer ") not in text
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) is not installed; .ci/run installs it")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_specs_parse_the_same_on_both_sides(tmp_path: Path) -> None:
    spec = parse_spec(fake_job(tmp_path, "same"))
    assert parse_spec(spec.model_dump(mode="json")) == spec


def _metric(client: Client, line_start: str) -> float | None:
    for line in httpx.get(f"{client.url}/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_concurrent_jobs_on_one_pool_share_its_workers(ray_runtime: None, tmp_path: Path) -> None:
    with Client.local(str(tmp_path / "state"), max_running_jobs=2) as client:
        a = client.submit(fake_job(tmp_path, "share-a", rows=24, tokens_per_s=80))
        b = client.submit(fake_job(tmp_path, "share-b", rows=24, tokens_per_s=80))
        ra, rb = a.wait(timeout=120), b.wait(timeout=120)
    # both ran side by side on the one worker: each started before the other finished
    assert rb.timestamps[JobState.IN_PROGRESS] < ra.timestamps[JobState.COMPLETED]
    assert ra.timestamps[JobState.IN_PROGRESS] < rb.timestamps[JobState.COMPLETED]
    gap = abs(ra.timestamps[JobState.COMPLETED] - rb.timestamps[JobState.COMPLETED])
    assert gap < 0.5 * (ra.timestamps[JobState.COMPLETED] - ra.timestamps[JobState.IN_PROGRESS])


def test_a_job_waits_while_other_pools_hold_the_resources_it_needs(client: Client, tmp_path: Path) -> None:
    spec = fake_job(tmp_path, "needs-cpu", rows=4)
    spec["resources"]["cpus_per_worker"] = 1  # the warm vLLM pool holds the session's CPUs
    job = client.submit(spec)
    time.sleep(3)
    assert job.status().state == JobState.QUEUED and _metric(client, "synthfleet_queue_depth") == 1
    assert job.cancel().state == JobState.CANCELLED


def test_a_job_the_cluster_could_never_hold_is_refused(client: Client, tmp_path: Path) -> None:
    spec = fake_job(tmp_path, "needs-gpu", rows=4)
    spec["resources"]["gpus_per_worker"] = 1
    with pytest.raises(SpecError, match="GPUs"):
        client.submit(spec)


def test_an_idle_pool_is_released(ray_runtime: None, tmp_path: Path) -> None:
    with Client.local(str(tmp_path / "state"), idle_release_s=1) as client:
        client.submit(fake_job(tmp_path, "idle", rows=4)).wait(timeout=60)
        deadline = time.monotonic() + 20
        while _metric(client, 'synthfleet_workers{model="fake",state="idle"}') != 0:
            assert time.monotonic() < deadline, "the idle pool was never released"
            time.sleep(0.5)


def _cli_env(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The token the CLI reads from the environment, and the --url of `client`'s server."""
    monkeypatch.setenv("SYNTHFLEET_API_TOKEN", client._http.headers["Authorization"].removeprefix("Bearer "))
    return ["--url", client.url]


def test_the_cli_submits_waits_lists_and_cancels_through_the_client(fake_client: Client, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from orchestrator.cli import main

    url = _cli_env(fake_client, monkeypatch)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(fake_job(tmp_path, "cli", rows=4)))
    assert main(["submit", str(path), "--wait", "--quiet", *url]) == 0
    job_id = fake_client.jobs()[0].id
    assert main(["status", job_id, *url]) == 0 and main(["jobs", "--state", "completed", *url]) == 0
    out = capsys.readouterr().out  # --wait ends with run's summary; status and jobs print the record
    assert f"done {job_id}: 4 rows ok, 0 failed, 0 rejected;" in out and f"{tmp_path}/{job_id}/data/" in out
    assert out.count(f"{job_id}  completed") == 2
    assert main(["status", "no-such-job", *url]) == 1 and "NotFoundError" in capsys.readouterr().err


def test_jobs_prints_a_header_then_one_aligned_line_per_job(fake_client: Client, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import main

    url = _cli_env(fake_client, monkeypatch)
    jobs = [fake_client.submit(fake_job(tmp_path, name, rows=2)) for name in ("a", "longer-name")]
    for job in jobs:
        job.wait(timeout=60)
    assert main(["jobs", *url]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["JOB", "STATE", "PRIORITY", "PROGRESS", "ROWS", "DONE/TOTAL", "FAILED", "TOKENS",
                              "TOKENS/S", "OUTPUT"]
    assert [line.split()[:2] for line in lines] == [[j.id, "completed"] for j in jobs]
    assert len({line.index("completed") for line in lines} | {header.index("STATE")}) == 1  # aligned columns


def test_status_json_prints_the_record_as_the_api_returns_it(fake_client: Client, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from orchestrator.cli import main
    from orchestrator.service.records import JobRecord

    url = _cli_env(fake_client, monkeypatch)
    job = fake_client.submit(fake_job(tmp_path, "json", rows=2), priority=3)
    job.wait(timeout=60)
    assert main(["status", job.id, "--json", *url]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert JobRecord.model_validate(printed) == job.status()
    assert (printed["state"], printed["priority"], printed["request_counts"]["total"]) == ("completed", 3, 2)


def test_cancel_of_a_finished_job_says_it_already_finished_and_leaves_it(fake_client: Client, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import main

    url = _cli_env(fake_client, monkeypatch)
    job = fake_client.submit(fake_job(tmp_path, "done", rows=2))
    job.wait(timeout=60)
    assert main(["cancel", job.id, *url]) == 0
    assert capsys.readouterr().out == f"job {job.id} already finished (completed): nothing to cancel\n"
    assert job.status().state == JobState.COMPLETED and not job.status().cancel_requested


def test_cancel_of_a_queued_job_prints_it_cancelled(fake_client: Client, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import main

    url = _cli_env(fake_client, monkeypatch)
    blocker = fake_client.submit(fake_job(tmp_path, "blocker", rows=8, tokens_per_s=40))  # max_running_jobs=1
    queued = fake_client.submit(fake_job(tmp_path, "queued", rows=2))
    assert queued.status().state == JobState.QUEUED
    assert main(["cancel", queued.id, *url]) == 0
    assert f"{queued.id}  cancelled" in capsys.readouterr().out
    assert queued.status().state == JobState.CANCELLED
    blocker.cancel()
