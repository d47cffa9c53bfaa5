"""The job spec: what to generate, from which prompts, with which sampling, and where to write it.

A spec is a frozen pydantic model loaded from YAML or JSON. Unknown fields are errors. Fields that
change the generated data (model, prompts, sampling) are hashed into every row's lineage; fields
that only say where and how fast (output, resources) are not, so moving a job keeps its identity.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator import defaults, gates
from orchestrator.errors import Problem, SpecError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    path: str | None = Field(None, description="Local folder with config, weights and tokenizer.")
    id: str | None = Field(None, description="Hub id (org/name), resolved by vLLM on the workers.")
    revision: str | None = Field(None, description="Hub revision; pins the weights in lineage.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans.")
    max_model_len: int | None = Field(None, ge=16, description="Prompt + completion token bound.")
    dtype: str = Field("auto", description="Weights dtype: auto, float16, bfloat16, float32.")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1,
        description="Share of GPU memory for weights + KV cache (host RAM on the CPU backend); "
        "unset: 0.9 on GPUs, 0.1 on CPUs.",
    )
    kv_cache_gib: float | None = Field(
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

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.engine == "fake":
            from workers.fake_engine import FakeEngineArgs

            try:
                FakeEngineArgs.model_validate(self.engine_args)
            except ValidationError as e:
                raise ValueError(f"engine_args for the fake engine: {e.errors()[0]['msg']} "
                                 f"at {_path(e.errors()[0]['loc'])}") from None
        if (self.path is None) == (self.id is None):
            raise ValueError("give exactly one of model.path (a local folder) or model.id (a hub id)")
        return self

    @property
    def name(self) -> str:
        return self.path if self.path is not None else str(self.id)


gates.Judge.model_rebuild(_types_namespace={"ModelSpec": ModelSpec})


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class Sample(_Strict):
    n: int = Field(..., ge=1, description="Rows drawn from the product of the seed values.")
    seed: int = Field(0, description="Which rows are drawn; same seed, same rows.")


class TemplateSource(_Strict):
    text: str | None = Field(None, description="A Jinja template rendered to a plain prompt.")
    messages: list[Message] | None = Field(
        None, description="Chat messages whose contents are Jinja templates."
    )
    seeds: dict[str, list[Any]] = Field(
        default_factory=dict, description="Variable name -> values; rows are their product."
    )
    sample: Sample | None = Field(None, description="Draw N distinct rows instead of all.")

    @model_validator(mode="after")
    def _one_form(self) -> TemplateSource:
        if (self.text is None) == (self.messages is None):
            raise ValueError("give exactly one of text or messages")
        return self

    @model_validator(mode="after")
    def _sample_fits(self) -> TemplateSource:
        size = math.prod(len(v) for v in self.seeds.values()) if self.seeds else 1
        if self.sample is not None and self.sample.n > size:
            raise ValueError(f"sample.n={self.sample.n} exceeds the {size} distinct seed combinations; "
                             "add seed values, lower sample.n, or use sampling.n for several completions per prompt")
        return self

    @field_validator("seeds")
    @classmethod
    def _non_empty(cls, seeds: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for name, values in seeds.items():
            if not values:
                raise ValueError(f"seed variable {name!r} has no values")
            if not name.isidentifier():
                raise ValueError(f"seed variable {name!r} is not a valid identifier")
        return seeds


class FileSource(_Strict):
    uri: str = Field(..., description="JSONL or Parquet with a `prompt` or `messages` column.")
    _uri = field_validator("uri")(gates.checked_uri)


class BatchSource(_Strict):
    uri: str = Field(..., description="OpenAI Batch input JSONL (custom_id, method, url, body).")
    _uri = field_validator("uri")(gates.checked_uri)


class Prompts(_Strict):
    template: TemplateSource | None = None
    file: FileSource | None = None
    openai_batch: BatchSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Prompts:
        given = [k for k in ("template", "file", "openai_batch") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one prompt source: template, file or openai_batch"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class Sampling(_Strict):
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(defaults.MAX_TOKENS, ge=1)
    n: int = Field(1, ge=1, description="Completions per prompt; each becomes its own row.")
    seed: int = Field(0, description="Base seed; each row's seed derives from it and the row.")
    stop: list[str] = Field(default_factory=list)
    ignore_eos: bool = Field(False, description="Always generate max_tokens (benchmarks).")
    json_schema: dict[str, Any] | None = Field(
        None, description="Constrain completions to JSON valid against this schema."
    )

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            import jsonschema

            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as e:
                raise ValueError(f"not a valid JSON schema: {e.message}") from None
        return schema


class Output(_Strict):
    uri: str = Field(..., description="Folder, file:// or s3://bucket/prefix; the job goes under it.")
    rows_per_shard: int = Field(defaults.ROWS_PER_SHARD, ge=1)
    _uri = field_validator("uri")(gates.checked_uri)


class Resources(_Strict):
    workers: int = Field(1, ge=1, description="GenerationWorker actors (one engine each).")
    gpus_per_worker: float = Field(1, ge=0, description="0 on CPU-only clusters.")
    cpus_per_worker: float = Field(1, ge=0)
    max_attempts: int = Field(defaults.MAX_ATTEMPTS, ge=1, description="Tries per shard.")
    shards_in_flight: int = Field(
        defaults.SHARDS_IN_FLIGHT, ge=1, description="Shards queued per worker so it never idles."
    )


class JobSpec(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    model: ModelSpec
    prompts: Prompts
    sampling: Sampling = Sampling()
    output: Output
    resources: Resources = Resources()
    judge: gates.Judge | None = Field(None, description="Score each completion; low scores go to rejected/.")
    filters: gates.Filters | None = Field(None, description="Per-row length, pattern, refusal checks.")
    dedup: gates.Dedup | None = Field(None, description="Job-wide exact and near-duplicate removal.")
    quality: gates.Quality = gates.Quality()
    mix: gates.Mix | None = Field(None, description="Also write a mixed/ split with real rows.")

    def content_hash(self) -> str:
        """Hash of what determines the data (not where it goes or how fast)."""
        content = self.model_dump(mode="json", include={"name", "model", "prompts", "sampling"},
                                  exclude={"model": {"kv_cache_gib"}})
        for gate in ("judge", "filters", "dedup", "mix"):  # absent gates keep earlier job ids
            if getattr(self, gate) is not None:
                content[gate] = getattr(self, gate).model_dump(mode="json")
        blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def job_id(self) -> str:
        return f"{self.name}-{self.content_hash()[:10]}"

    def with_output(self, uri: str) -> JobSpec:
        return self.model_copy(update={"output": self.output.model_copy(update={"uri": uri})})


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-"))


def problems_from(error: ValidationError) -> list[Problem]:
    out = []
    for e in error.errors(include_url=False):
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        out.append(Problem(_path(e["loc"]), msg))
    return out


def parse_spec(data: Any, *, source: str = "spec") -> JobSpec:
    """Validate a mapping into a JobSpec, or raise SpecError listing every problem."""
    if not isinstance(data, dict):
        raise SpecError([Problem("", f"{source}: expected a mapping at the top level")])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(problems_from(e)) from None


def load_spec(path: str | Path) -> JobSpec:
    """Read a YAML or JSON spec file (JSON is YAML) and validate it."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SpecError([Problem("", f"cannot read spec file {p}: {e.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError([Problem("", f"{p} is not valid YAML or JSON: {e}")]) from None
    return parse_spec(data, source=str(p))
