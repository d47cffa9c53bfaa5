"""The model a job runs: which weights, on which engine, with which engine settings; a leaf module.

Every spec section and every worker needs these, so this module imports nothing of the project but
errors, defaults-free storage checks and pydantic: the spec layer, the judge section and the engines
all build on it without an import circle.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.errors import StorageError
from orchestrator.storage import check_text


class Strict(BaseModel):
    """A spec section: unknown fields are errors, and a loaded spec never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Loc = tuple[str | int, ...]  # a field path as pydantic gives it: ("stages", 2, "continue")


def error_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-"))


def invalid(title: str, problems: list[tuple[Loc, str]]) -> ValidationError:
    """Problems found across fields, as the ValidationError pydantic raises: each one on its own field path.

    Raised from a validator, its paths extend the validated model's own (a stage's `("continue",)`
    reads `stages.2.continue`), so `load.py` reports each as it reports a field error.
    """
    return ValidationError.from_exception_data(title, [
        {"type": "value_error", "loc": loc, "input": None, "ctx": {"error": ValueError(message)}}
        for loc, message in problems])


Dtype = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]  # vLLM's --dtype choices
DTYPES: tuple[str, ...] = typing.get_args(Dtype)


class FakeEngineArgs(Strict):
    """`model.engine_args` of a spec whose `model.engine` is `fake`."""

    tokens_per_s: float = Field(1000.0, gt=0, description="Per sequence; sequences run in parallel.")
    load_seconds: float = Field(0.0, ge=0, description="Simulated weight loading time.")
    fail_rows: list[int] = Field(default_factory=list, description="Row indices whose shard attempt fails.")
    die_rows: list[int] = Field(default_factory=list, description="Row indices on which the engine dies.")
    once_dir: str | None = Field(None, description="Folder of markers: each injected fault fires once.")
    request_log: str | None = Field(None, description="Append every requested row index to this file.")
    echo: bool = Field(False, description="Completions start with the prompt (tests of filters on content).")


class ModelSpec(Strict):
    path: str | None = Field(None, description="Local folder with config, weights and tokenizer.")
    id: str | None = Field(None, description="Hub id (org/name), resolved by vLLM on the workers.")
    revision: str | None = Field(None, description="Hub revision; pins the weights in lineage.")
    tensor_parallel_size: StrictInt = Field(1, ge=1, description="GPUs one engine spans.")
    max_model_len: StrictInt | None = Field(
        None, ge=16, description="Prompt + completion token bound; at most the model's own context "
        "(max_position_embeddings in its config.json).")
    dtype: Dtype = Field("auto", description="Weights dtype, as vLLM's --dtype: " + ", ".join(DTYPES) + ".")
    gpu_memory_utilization: StrictFloat | None = Field(
        None, gt=0, le=1,
        description="Share of GPU memory for weights + KV cache (host RAM on the CPU backend); "
        "unset: 0.9 on GPUs, 0.1 on CPUs.",
    )
    kv_cache_gib: StrictFloat | None = Field(
        None, gt=0,
        description="KV cache size in GiB, overriding gpu_memory_utilization's share. Unset on the CPU "
        "backend: a quarter of the memory available on the engine's NUMA node, bounded to 1-4 GiB. "
        "Not part of the job's identity (the cache size never changes what is generated).",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Any other vLLM engine argument, passed as is."
    )
    engine: Literal["vllm", "fake"] = Field(
        "vllm", description="fake: a sleeping stand-in for orchestration tests and benchmarks."
    )

    @field_validator("path")
    @classmethod
    def _plainerror_path(cls, path: str | None) -> str | None:
        if path is not None:
            try:
                check_text(path)
            except StorageError as e:
                raise ValueError(str(e)) from None
            if path.startswith("~"):
                raise ValueError(f"{path}: '~' is not expanded here; write the full path")
        return path

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.engine == "fake":
            try:
                FakeEngineArgs.model_validate(self.engine_args)
            except ValidationError as e:
                raise ValueError(f"engine_args for the fake engine: {e.errors()[0]['msg']} "
                                 f"at {error_path(e.errors()[0]['loc'])}") from None
        if (self.path is None) == (self.id is None):
            raise ValueError("give exactly one of model.path (a local folder) or model.id (a hub id)")
        return self

    @property
    def name(self) -> str:
        return self.path if self.path is not None else str(self.id)
