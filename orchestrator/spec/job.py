"""The job spec: what to generate, from which prompts, with which sampling, and where to write it.

A spec is a frozen pydantic model loaded from YAML or JSON. Unknown fields are errors. Fields that
change the generated data (model, prompts, sampling) are hashed into every row's lineage; fields
that only say where and how fast (output, resources) are not, so moving a job keeps its identity.

Relative paths to what a job reads resolve against the spec file's folder (`load_spec`), so a spec
works from any working directory; the job id hashes them as written, so it does not depend on where
the spec is checked out either (see `SpecFolder`). output.uri is relative to the working directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any

from pydantic import BaseModel, Field, StrictFloat, StrictInt, field_validator, model_validator

from orchestrator import defaults
from orchestrator.spec.generation import Message, Sampling
from orchestrator.spec.model import Loc, ModelSpec, Strict, invalid
from orchestrator.spec.quality import Dedup, Filters, Judge, Mix, Quality, checked_uri
from orchestrator.spec.sampler_checks import rows_problem, sampler_problems
from orchestrator.spec.samplers import Sampler, Seed
from orchestrator.spec.stage_checks import stage_problems
from orchestrator.spec.stages import GenerateStage, Stage, stage_identity
from orchestrator.spec.targets import Targets, targets_problems

# The fields naming what a job reads; a relative local path in them resolves against the spec's folder.
# output.uri, where the job writes, is relative to the working directory, as `--output` is.
PATH_FIELDS = ("model.path", "judge.model.path", "prompts.file.uri", "prompts.openai_batch.uri",
               "quality.reference", "mix.uri")


class Sample(Strict):
    n: StrictInt = Field(..., ge=1, description="Rows drawn from the product of the seed values.")
    seed: StrictInt = Field(0, description="Which rows are drawn; same seed, same rows.")


class TemplateSource(Strict):
    """Prompts from a template over seed values: exactly one of text or messages, or, with stages, neither.

    A seed variable is a list of values (the rows are the product of the lists) or a sampler drawn per
    row (orchestrator/spec/samplers.py); with any sampler, `rows` says how many rows to draw.
    """

    text: str | None = Field(None, description="A Jinja template rendered to a plain prompt.")
    messages: list[Message] | None = Field(
        None, description="Chat messages whose contents are Jinja templates."
    )
    seeds: dict[str, Seed] = Field(
        default_factory=dict, description="Variable name -> values (a factor of the product) or a sampler."
    )
    sample: Sample | None = Field(None, description="Draw N distinct rows of the product instead of all.")
    rows: StrictInt | None = Field(None, ge=1, description=(
        "With samplers: the rows to draw. Row i takes the listed variables' product combination i mod "
        "their product, and a fresh draw of every sampler."))
    seed: StrictInt | None = Field(None, description="With samplers: which values they draw (default 0).")

    @model_validator(mode="after")
    def _one_form(self) -> TemplateSource:
        if self.text is not None and self.messages is not None:  # neither: checked by JobSpec (stages)
            raise ValueError("give exactly one of text or messages")
        return self

    @model_validator(mode="after")
    def _sample_fits(self) -> TemplateSource:
        size = self.product_size()
        if self.sample is not None and self.sample.n > size:
            raise ValueError(f"sample.n={self.sample.n} exceeds the {size} distinct seed combinations; "
                             "add seed values, lower sample.n, or use sampling.n for several completions per prompt")
        return self

    @model_validator(mode="after")
    def _samplers_hold(self) -> TemplateSource:
        if problems := sampler_problems(self.listed(), self.sampled(), rows=self.rows, sample=self.sample is not None,
                                        seed=self.seed):
            raise invalid("TemplateSource", problems)
        return self

    @field_validator("seeds")
    @classmethod
    def _non_empty(cls, seeds: dict[str, Seed]) -> dict[str, Seed]:
        for name, values in seeds.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"seed variable {name!r} has no values")
            if not name.isidentifier():
                raise ValueError(f"seed variable {name!r} is not a valid identifier")
        return seeds

    def listed(self) -> dict[str, list[Any]]:
        """The listed variables: the factors of the product."""
        return {k: v for k, v in self.seeds.items() if isinstance(v, list)}

    def sampled(self) -> dict[str, Sampler]:
        return {k: v for k, v in self.seeds.items() if isinstance(v, Sampler)}

    def product_size(self) -> int:
        """The product of the listed variables' lengths (1 without any)."""
        return math.prod(len(v) for v in self.listed().values())

    @property
    def total_rows(self) -> int:
        if self.rows is not None:
            return self.rows
        return self.sample.n if self.sample else self.product_size()


class FileSource(Strict):
    uri: str = Field(..., description="JSONL or Parquet with a `prompt` or `messages` column.")
    _uri = field_validator("uri")(checked_uri)


class BatchSource(Strict):
    uri: str = Field(..., description="OpenAI Batch input JSONL (custom_id, method, url, body).")
    _uri = field_validator("uri")(checked_uri)


class Prompts(Strict):
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

    @property
    def file_uri(self) -> str | None:
        """The URI of the prompt file (prompts.file or prompts.openai_batch); None for templates."""
        source = self.file or self.openai_batch
        return source.uri if source is not None else None


class Output(Strict):
    uri: str = Field(..., description="Folder, file:// or s3://bucket/prefix; the job goes under it.")
    rows_per_shard: StrictInt = Field(defaults.ROWS_PER_SHARD, ge=1)
    _uri = field_validator("uri")(checked_uri)


class Resources(Strict):
    workers: StrictInt = Field(1, ge=1, description="GenerationWorker actors (one engine each).")
    gpus_per_worker: StrictFloat = Field(1, ge=0, description="0 on CPU-only clusters.")
    cpus_per_worker: StrictFloat = Field(1, ge=0)
    max_attempts: StrictInt = Field(defaults.MAX_ATTEMPTS, ge=1, description="Tries per shard.")
    shards_in_flight: StrictInt = Field(
        defaults.SHARDS_IN_FLIGHT, ge=1, description="Shards queued per worker so it never idles."
    )


class SpecFolder(Strict):
    """Where a spec file's relative paths were resolved: set by `load_spec`, not written by hand.

    The path fields then hold absolute paths any process can use (a server included), while the job
    id hashes each one as the spec wrote it, so the same spec keeps its job id wherever it is
    checked out, and a spec whose paths are all absolute or s3:// hashes exactly as before.
    """

    folder: str = Field(..., description="The spec file's folder (absolute).")
    written: dict[str, str] = Field(..., description="Field path -> the relative path as the spec wrote it.")


class JobSpec(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    model: ModelSpec
    prompts: Prompts
    sampling: Sampling = Sampling()
    output: Output
    resources: Resources = Resources()
    judge: Judge | None = Field(None, description="Score each completion; low scores go to rejected/.")
    filters: Filters | None = Field(None, description="Per-row length, pattern, refusal checks.")
    dedup: Dedup | None = Field(None, description="Job-wide exact and near-duplicate removal.")
    quality: Quality = Quality()
    mix: Mix | None = Field(None, description="Also write a mixed/ split with real rows.")
    stages: list[Stage] | None = Field(None, min_length=1, description=(
        "A row program: stages run in order on each row, each reading the seeds and earlier stages "
        "(orchestrator/spec/stages.py). Unset: one stage, prompted by prompts.template."))
    targets: Targets | None = Field(None, description=(
        "Generate further rounds until every stratum has its target of kept rows (orchestrator/spec/targets.py)."))
    relative_to: SpecFolder | None = Field(
        None, description="Set by load_spec: the folder relative paths were resolved against.")

    @model_validator(mode="after")
    def _one_program(self) -> JobSpec:
        """Rows are prompted by prompts.template's text or messages or, with stages, by each stage's own prompt."""
        template = self.prompts.template
        if self.stages is None:
            if template is not None and template.text is None and template.messages is None:
                raise invalid("JobSpec", [(("prompts", "template"), "give exactly one of text or messages")])
            if problems := _text_column_problems(self):
                raise invalid("JobSpec", problems)
            return self
        problems = _staged_source_problems(self) + _text_column_problems(self)
        if template is not None and template.seeds:
            problems += stage_problems(self.stages, template.seeds, self.sampling, top_judge=self.judge is not None)
        if problems:
            raise invalid("JobSpec", problems)
        return self

    @model_validator(mode="after")
    def _targets_hold(self) -> JobSpec:
        t = self.prompts.template
        if self.targets is None:
            if t is not None and (problems := rows_problem(t.sampled(), t.rows)):
                raise invalid("JobSpec", problems)
            return self
        listed, sampled = (t.listed(), t.sampled()) if t is not None else ({}, {})
        if problems := targets_problems(self.targets, listed, sampled, t.rows if t is not None else None):
            raise invalid("JobSpec", problems)
        return self

    @model_validator(mode="after")
    def _resolutions_hold(self) -> JobSpec:
        """Each path `relative_to` records is its written text joined to its folder (so the hash is honest)."""
        if self.relative_to is None:
            return self
        folder = self.relative_to.folder
        if not os.path.isabs(folder):
            raise ValueError("relative_to.folder must be absolute; remove relative_to (load_spec sets it)")
        for field, text in self.relative_to.written.items():
            if field not in path_fields(self) or not is_relative_path(text) or \
                    field_value(self, field) != os.path.normpath(os.path.join(folder, text)):
                raise ValueError(f"relative_to.written.{field} does not match {field}; remove relative_to "
                                 "(load_spec sets it)")
        return self

    def content_hash(self) -> str:
        """Hash of what determines the data (not where it goes or how fast)."""
        content = self.model_dump(mode="json", include={"name", "model", "prompts", "sampling"},
                                  exclude={"model": {"kv_cache_gib"}})
        for gate in ("judge", "filters", "dedup", "mix", "targets"):  # absent gates keep earlier job ids
            if getattr(self, gate) is not None:
                content[gate] = getattr(self, gate).model_dump(mode="json")
        if self.dedup is not None and self.dedup.column == "completion":  # the default keeps earlier job ids
            del content["dedup"]["column"]
        if self.stages is not None:  # so do absent stages
            content["stages"] = stage_identity(self.stages)
        if (template := content["prompts"].get("template")) is not None:  # and absent samplers
            template["seeds"].update({name: s.model_dump(mode="json", exclude_none=True)
                             for name, s in self.prompts.template.sampled().items()})  # type: ignore[union-attr]
            for key in ("rows", "seed"):
                if template[key] is None:
                    del template[key]
        for field, text in (self.relative_to.written.items() if self.relative_to else ()):
            replace_at(content, field.split("."), text)  # as written: the same wherever the spec lives
        blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def staged(self) -> bool:
        """Shards commit to `_generated/` and the finalize pass writes `data/`: with dedup or targets."""
        return self.dedup is not None or self.targets is not None

    @property
    def job_id(self) -> str:
        return f"{self.name}-{self.content_hash()[:10]}"

    def with_output(self, uri: str) -> JobSpec:
        return self.model_copy(update={"output": self.output.model_copy(update={"uri": uri})})


SEEDS_NEEDED = "stages need prompts.template.seeds, the variables whose product makes the rows"


def _staged_source_problems(spec: JobSpec) -> list[tuple[Loc, str]]:
    """With stages, the rows come from prompts.template.seeds alone and fan out per stage."""
    template = spec.prompts.template
    found: list[tuple[Loc, str]] = []
    if template is None:
        found.append((("prompts",), SEEDS_NEEDED + " (file and openai_batch prompt sources with stages are not "
                                                   "supported yet)"))
    else:
        found += [(("prompts", "template", k), (f"with stages each stage has its own prompt; remove "
                                               f"prompts.template.{k} and give it to a stage"))
                  for k in ("text", "messages") if getattr(template, k) is not None]
        if not template.seeds:
            found.append((("prompts", "template", "seeds"), SEEDS_NEEDED))
    if spec.sampling.n != 1:
        found.append((("sampling", "n"), ("with stages, fan out per stage: set sampling.n on the stage to branch "
                                         "(a select stage merges the branches) and keep the job's sampling.n at 1")))
    return found


def _text_column_problems(spec: JobSpec) -> list[tuple[Loc, str]]:
    """dedup.column and quality.column name the completion or, with stages, a generate stage."""
    columns = {"quality": spec.quality.column, "dedup": spec.dedup.column if spec.dedup is not None else "completion"}
    names = [s.name for s in spec.stages or [] if isinstance(s, GenerateStage)]
    if spec.stages is None:
        return [((section, "column"), f"{column!r}: without stages, {section} reads the completion; remove "
                                      f"{section}.column")
                for section, column in columns.items() if column != "completion"]
    return [((section, "column"), f"{column!r} is not a generate stage ({', '.join(names)}); give one of them, "
                                  "or completion (the last stage's text)")
            for section, column in columns.items() if column != "completion" and column not in names]


def path_fields(spec: JobSpec) -> list[str]:
    """PATH_FIELDS, the model path of each stage with a model of its own ("stages.2.model.path") and the
    uri of each seed file ("prompts.template.seeds.persona.from_file.uri")."""
    template = spec.prompts.template
    seed_files = [f"prompts.template.seeds.{name}.from_file.uri" for name, s in
                  (template.sampled().items() if template is not None else ()) if s.from_file is not None]
    return [*PATH_FIELDS, *(f"stages.{i}.model.path" for i, s in enumerate(spec.stages or [])
                            if isinstance(getattr(s, "model", None), ModelSpec)), *seed_files]


def is_relative_path(value: str) -> bool:
    """A relative local path (not s3://, not absolute): what load_spec resolves against the spec's folder."""
    return not value.startswith("s3://") and not os.path.isabs(value)


def field_value(spec: BaseModel, field: str) -> Any:
    """The value at a dotted field path such as "judge.model.path" or "stages.0.model"; None where any part is missing."""
    value: Any = spec
    for part in field.split("."):
        if isinstance(value, list):
            value = value[int(part)] if part.isdigit() and int(part) < len(value) else None
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            value = getattr(value, part, None) if isinstance(value, BaseModel) else None
    return value


def replace_at(content: dict[str, Any], parts: list[str], text: str) -> None:
    """Set content[a][b]... = text where that path exists (an absent section stays absent); a number indexes a list."""
    node: Any = content
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and parts[-1] in node:
        node[parts[-1]] = text
