"""synthfleet: a distributed synthetic-data job orchestrator (Ray + vLLM + object storage)."""

from orchestrator.errors import (
    ConflictError,
    EngineDeadError,
    JobFailedError,
    Problem,
    SpecError,
    StorageError,
    SynthfleetError,
)
from orchestrator.spec.job import JobSpec
from orchestrator.spec.load import load_spec, parse_spec

__all__ = [
    "ConflictError", "EngineDeadError", "JobFailedError", "JobSpec", "Problem", "SpecError",
    "StorageError", "SynthfleetError", "load_spec", "parse_spec",
]
