"""The job spec: what to generate, from which prompts, with which sampling, and where to write it.

A spec is a frozen pydantic model loaded from YAML or JSON. Unknown fields are errors. Fields that
change the generated data (model, prompts, sampling) are hashed into every row's lineage; fields
that only say where and how fast (output, resources) are not, so moving a job keeps its identity.

Relative paths to what a job reads resolve against the spec file's folder (`load_spec`), so a spec
works from any working directory; the job id hashes them as written, so it does not depend on where
the spec is checked out either (see `SpecFolder`). output.uri is relative to the working directory.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator import defaults, gates
from orchestrator.errors import Problem, SpecError, StorageError
from orchestrator.storage import check_text

Dtype = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]  # vLLM's --dtype choices
DTYPES: tuple[str, ...] = typing.get_args(Dtype)
# The fields naming what a job reads; a relative local path in them resolves against the spec's folder.
# output.uri, where the job writes, is relative to the working directory, as `--output` is.
PATH_FIELDS = ("model.path", "judge.model.path", "prompts.file.uri", "prompts.openai_batch.uri",
               "quality.reference", "mix.uri")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
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
    def _plain_path(cls, path: str | None) -> str | None:
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
    n: StrictInt = Field(..., ge=1, description="Rows drawn from the product of the seed values.")
    seed: StrictInt = Field(0, description="Which rows are drawn; same seed, same rows.")


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
    temperature: StrictFloat = Field(1.0, ge=0)
    top_p: StrictFloat = Field(1.0, gt=0, le=1)
    max_tokens: StrictInt = Field(defaults.MAX_TOKENS, ge=1, description="At most model.max_model_len.")
    n: StrictInt = Field(1, ge=1, description="Completions per prompt; each becomes its own row.")
    seed: StrictInt = Field(0, description="Base seed; each row's seed derives from it and the row.")
    stop: list[str] = Field(default_factory=list)
    ignore_eos: StrictBool = Field(False, description="Always generate max_tokens (benchmarks).")
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
    rows_per_shard: StrictInt = Field(defaults.ROWS_PER_SHARD, ge=1)
    _uri = field_validator("uri")(gates.checked_uri)


class Resources(_Strict):
    workers: StrictInt = Field(1, ge=1, description="GenerationWorker actors (one engine each).")
    gpus_per_worker: StrictFloat = Field(1, ge=0, description="0 on CPU-only clusters.")
    cpus_per_worker: StrictFloat = Field(1, ge=0)
    max_attempts: StrictInt = Field(defaults.MAX_ATTEMPTS, ge=1, description="Tries per shard.")
    shards_in_flight: StrictInt = Field(
        defaults.SHARDS_IN_FLIGHT, ge=1, description="Shards queued per worker so it never idles."
    )


class SpecFolder(_Strict):
    """Where a spec file's relative paths were resolved: set by `load_spec`, not written by hand.

    The path fields then hold absolute paths any process can use (a server included), while the job
    id hashes each one as the spec wrote it, so the same spec keeps its job id wherever it is
    checked out, and a spec whose paths are all absolute or s3:// hashes exactly as before.
    """

    folder: str = Field(..., description="The spec file's folder (absolute).")
    written: dict[str, str] = Field(..., description="Field path -> the relative path as the spec wrote it.")


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
    relative_to: SpecFolder | None = Field(
        None, description="Set by load_spec: the folder relative paths were resolved against.")

    @model_validator(mode="after")
    def _resolutions_hold(self) -> JobSpec:
        """Each path `relative_to` records is its written text joined to its folder (so the hash is honest)."""
        if self.relative_to is None:
            return self
        folder = self.relative_to.folder
        if not os.path.isabs(folder):
            raise ValueError("relative_to.folder must be absolute; remove relative_to (load_spec sets it)")
        for field, text in self.relative_to.written.items():
            if field not in PATH_FIELDS or not is_relative_path(text) or \
                    field_value(self, field) != os.path.normpath(os.path.join(folder, text)):
                raise ValueError(f"relative_to.written.{field} does not match {field}; remove relative_to "
                                 "(load_spec sets it)")
        return self

    def content_hash(self) -> str:
        """Hash of what determines the data (not where it goes or how fast)."""
        content = self.model_dump(mode="json", include={"name", "model", "prompts", "sampling"},
                                  exclude={"model": {"kv_cache_gib"}})
        for gate in ("judge", "filters", "dedup", "mix"):  # absent gates keep earlier job ids
            if getattr(self, gate) is not None:
                content[gate] = getattr(self, gate).model_dump(mode="json")
        for field, text in (self.relative_to.written.items() if self.relative_to else ()):
            _replace(content, field.split("."), text)  # as written: the same wherever the spec lives
        blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def job_id(self) -> str:
        return f"{self.name}-{self.content_hash()[:10]}"

    def with_output(self, uri: str) -> JobSpec:
        return self.model_copy(update={"output": self.output.model_copy(update={"uri": uri})})


def is_relative_path(value: str) -> bool:
    """A relative local path (not s3://, not absolute): what load_spec resolves against the spec's folder."""
    return not value.startswith("s3://") and not os.path.isabs(value)


def field_value(spec: BaseModel, field: str) -> Any:
    """The value at a dotted field path such as "judge.model.path"; None where any part is missing."""
    value: Any = spec
    for part in field.split("."):
        value = getattr(value, part, None) if isinstance(value, BaseModel) else None
    return value


def _replace(content: dict[str, Any], parts: list[str], text: str) -> None:
    """Set content[a][b]... = text where that path exists (an absent section stays absent)."""
    for part in parts[:-1]:
        content = content.get(part) if isinstance(content, dict) else None  # type: ignore[assignment]
    if isinstance(content, dict) and parts[-1] in content:
        content[parts[-1]] = text


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-"))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, unions, lists and dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names the model at `loc` (a pydantic error location, its last part excluded) accepts."""
    model: type[BaseModel] = JobSpec
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        inner = _models_in(field.annotation) if field is not None else []
        model = inner[0] if inner else model  # list indices and union tags leave the model as it is
    return list(model.model_fields)


def _unknown_field(loc: tuple[Any, ...]) -> str:
    names = [n for n in _fields_at(loc) if n != "relative_to"]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    if close:
        return f"unknown field; did you mean `{close[0]}`?"
    return f"unknown field; remove it or check its spelling (fields here: {', '.join(names)})"


_EXPECTED = {"int_type": "a whole number", "float_type": "a number", "bool_type": "true or false"}


def _shown(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _other_branch(loc: tuple[Any, ...], errors: list[Any]) -> bool:
    """An error against `"self"` where the value was plainly meant as a model (judge.model: {...})."""
    if not loc or not str(loc[-1]).startswith("literal["):
        return False
    return any(len(e["loc"]) > len(loc) and e["loc"][:len(loc) - 1] == loc[:-1] for e in errors)


def problems_from(error: ValidationError) -> list[Problem]:
    out = []
    errors = error.errors(include_url=False)
    for e in errors:
        if _other_branch(e["loc"], errors):
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = _unknown_field(e["loc"])
        elif e["type"] in _EXPECTED:  # strict fields: a bool or a string is not a number here
            msg = f"expected {_EXPECTED[e['type']]}, got {_shown(e['input'])}"
        out.append(Problem(_path(e["loc"]), msg))
    return out


def parse_spec(data: Any, *, source: str = "spec") -> JobSpec:
    """Validate a mapping into a JobSpec, or raise SpecError listing every problem.

    Pure field checks only (no template is analysed or rendered, no file read), so it is cheap
    enough for the service's event loop; `orchestrator.validate.check_spec` does the rest.
    """
    if not isinstance(data, dict):
        raise SpecError([Problem("", f"{source}: expected a mapping at the top level")])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(problems_from(e)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (plain YAML keeps the last silently,
    so a second `name:` would rename the job)."""

    source = "spec"

    def construct_document(self, node: yaml.Node) -> Any:
        problems = _duplicate_keys(node, self.source)
        if problems:
            raise SpecError(problems)
        return super().construct_document(node)


def _duplicate_keys(root: yaml.Node, source: str) -> list[Problem]:
    """A problem for each key repeated in a mapping, naming both lines; each node is visited once."""
    problems, seen_nodes, stack = [], set(), [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}.{i}".lstrip(".")) for i, item in enumerate(node.value))
        if not isinstance(node, yaml.MappingNode):
            continue
        lines: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            where, line = f"{path}.{key.value}".lstrip("."), key.start_mark.line + 1
            if (key.tag, key.value) in lines:
                problems.append(Problem(where, f"duplicate key {key.value!r} on lines {lines[key.tag, key.value]} "
                                               f"and {line} of {source}; YAML would keep only the last: remove one"))
            lines.setdefault((key.tag, key.value), line)
            stack.append((value, where))
    return sorted(problems, key=lambda p: p.message)


def _read_text(p: Path) -> str:
    """The spec file's text: UTF-8 (a BOM is dropped), or a SpecError saying what it is instead."""
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise SpecError([Problem("", f"cannot read spec file {p}: {e.strerror}")]) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")
        what = "UTF-16 text" if utf16 else f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        raise SpecError([Problem("", f"{p} is {what}; save it as UTF-8 YAML or JSON")]) from None


def _resolved(spec: JobSpec, folder: Path) -> JobSpec:
    """`spec` with each relative local path joined to `folder`, the text as written kept for the job id.

    The model path of the fake engine is a name, not a folder, and stays as it is.
    """
    data, written = spec.model_dump(), {}
    for field in PATH_FIELDS:
        value, model = field_value(spec, field), field_value(spec, field.rpartition(".")[0])
        if not isinstance(value, str) or not is_relative_path(value) or getattr(model, "engine", None) == "fake":
            continue
        written[field] = value
        _replace(data, field.split("."), os.path.normpath(os.path.join(folder, value)))
    if not written:
        return spec
    data["relative_to"] = {"folder": str(folder), "written": written}
    return JobSpec.model_validate(data)


def load_spec(path: str | Path) -> JobSpec:
    """Read a YAML or JSON spec file (JSON is YAML) and validate it.

    Relative paths to what the job reads (PATH_FIELDS: model.path, judge.model.path, prompts.file.uri,
    prompts.openai_batch.uri, quality.reference, mix.uri) resolve against the spec file's folder, as
    inputs in a docker-compose or kustomize file do, so the spec works from any working directory;
    see `SpecFolder` for the job id. output.uri, where the job writes, stays relative to the working
    directory like `--output` (and `..` stays refused in it).
    A spec that already carries `relative_to` (a job's spec.json) is taken as it is.
    """
    p = Path(path)
    loader = type("Loader", (_UniqueKeyLoader,), {"source": p.name})
    try:
        data = yaml.load(_read_text(p), Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise SpecError([Problem("", f"{p} is not valid YAML or JSON: {e}")]) from None
    spec = parse_spec(data, source=str(p))
    return spec if spec.relative_to is not None else _resolved(spec, p.absolute().parent)
