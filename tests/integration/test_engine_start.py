"""A worker whose vLLM engine cannot start: the user reads vLLM's own reason, not "See root cause above"."""

from __future__ import annotations

import time
from pathlib import Path

from orchestrator.client import Client
from orchestrator.service.records import JobState
from tests.integration.conftest import make_spec

IMPOSSIBLE_KV_GIB = 100_000  # more than any node here has: vLLM's CPU worker refuses it at start


def test_a_failed_engine_start_reports_vllms_own_error_line(ray_runtime: None, tiny_model: Path,
                                                            tmp_path: Path) -> None:
    spec = make_spec(tiny_model, str(tmp_path / "out"), {"template": {"text": "hello"}},
                     resources={"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 0})
    model = spec.model.model_copy(update={"kv_cache_gib": IMPOSSIBLE_KV_GIB})
    spec = spec.model_copy(update={"model": model})
    with Client.local(str(tmp_path / "state")) as client:
        job = client.submit(spec)
        record = job.status()
        while record.state not in (JobState.FAILED, JobState.COMPLETED):
            time.sleep(0.5)
            record = job.status()
    assert record.state == JobState.FAILED
    message = " ".join(record.errors)
    assert f"no worker could load the model {tiny_model}" in message
    assert "less than requested memory for kv" in message and "See root cause above" not in message
    assert not (tmp_path / "out" / spec.job_id / "data").exists()
