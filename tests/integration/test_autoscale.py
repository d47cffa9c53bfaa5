"""Autoscaling from the queue on a local Ray cluster (no GPUs): a service with `autoscale` queues GPU
jobs the cluster cannot hold yet instead of refusing them, and the bundles it asks Ray's autoscaler
for are in Ray's own state (the request `ray.autoscaler.sdk.request_resources` leaves in the GCS),
following the queue and emptied once no job is left."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
from ray.autoscaler.v2.utils import is_autoscaler_v2
from ray.experimental.internal_kv import _internal_kv_get

from orchestrator.client import Client
from orchestrator.errors import SpecError
from orchestrator.service.records import JobState
from tests.integration.test_service import fake_job


def gpu_job(out: Path, name: str, workers: int, tokens_per_s: float = 400) -> dict[str, Any]:
    data = fake_job(out, name, tokens_per_s=tokens_per_s)
    data["resources"] = {"workers": workers, "gpus_per_worker": 1, "cpus_per_worker": 2}
    return data


def requested() -> list[dict[str, float]]:
    """The bundles standing with Ray's autoscaler (the local cluster runs autoscaler v1: a GCS KV key)."""
    assert not is_autoscaler_v2()
    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else []


def until_requested(expected: list[dict[str, float]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while requested() != expected:
        assert time.monotonic() < deadline, f"Ray's autoscaler request is {requested()}, not {expected}"
        time.sleep(0.2)


@pytest.fixture()
def autoscaling(ray_runtime: None, tmp_path: Path) -> Iterator[Client]:
    with Client.local(str(tmp_path / "state"), max_running_jobs=2, autoscale=True) as c:
        yield c
    assert requested() == []  # a stopped service leaves no request behind


def test_the_queue_is_what_the_autoscaler_is_asked_for(autoscaling: Client, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = autoscaling.submit(gpu_job(out, "first", workers=3))
    second = autoscaling.submit(gpu_job(out, "second", workers=5, tokens_per_s=401))  # another pool
    third = autoscaling.submit(gpu_job(out, "third", workers=4, tokens_per_s=402))  # waits for a slot
    shape = {"GPU": 1, "CPU": 2}
    # Two slots: the first two jobs' pools, 3 + 5 workers; the third is not asked for yet.
    until_requested([shape] * 8)
    assert {j.status().state for j in (first, second, third)} == {JobState.QUEUED}  # no GPU has come
    second.cancel()
    until_requested([shape] * 7)  # the third moves up
    first.cancel()
    third.cancel()
    until_requested([])


def test_without_autoscale_a_job_the_cluster_cannot_hold_is_refused(ray_runtime: None, tmp_path: Path) -> None:
    with Client.local(str(tmp_path / "state")) as c, pytest.raises(SpecError, match="cannot hold one worker"):
        c.submit(gpu_job(tmp_path / "out", "refused", workers=1))
    assert requested() == []
