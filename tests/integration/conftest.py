"""Real Ray (local, in-process) and one warm pool of two vLLM CPU workers for the whole session."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.spec.job import JobSpec
from orchestrator.spec.load import parse_spec

# 32-token KV blocks (the CPU backend's smallest; GPUs use 16) so short test rows fill whole blocks
# and the self judge's reuse of the generation's prefix cache shows.
MODEL_ARGS = {"max_model_len": 256, "dtype": "float32", "engine_args": {"block_size": 32}}
RESOURCES = {"workers": 2, "gpus_per_worker": 0, "cpus_per_worker": 1, "max_attempts": 3}


@pytest.fixture(scope="session")
def ray_runtime(s3_endpoint: str) -> Iterator[None]:
    """Local Ray, started after the S3 server so its workers inherit the endpoint settings."""
    import ray

    from orchestrator.run.ray_runtime import ensure_ray

    ensure_ray(worker_logs=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def pool(ray_runtime: None, tiny_model: Path) -> Iterator[Any]:
    """Two GenerationWorkers with the tiny model loaded once, shared by every job in the session."""
    from orchestrator.run.pool import WorkerPool

    spec = make_spec(tiny_model, "unused", {"template": {"text": "x"}})
    p = WorkerPool(spec.model, spec.resources)
    asyncio.run(p.grow(spec.resources.workers))
    yield p
    p.close()


def make_spec(model: Path, out: str, prompts: dict[str, Any], *, rows_per_shard: int = 8,
              **overrides: Any) -> JobSpec:
    """A job spec on the tiny model sized for CI; `overrides` replaces top-level sections."""
    data: dict[str, Any] = {
        "name": "it",
        "model": {"path": str(model), **MODEL_ARGS},
        "prompts": prompts,
        "sampling": {"max_tokens": 16, "temperature": 0.9, "seed": 1},
        "output": {"uri": out, "rows_per_shard": rows_per_shard},
        "resources": RESOURCES,
    }
    data.update(overrides)
    return parse_spec(data)
