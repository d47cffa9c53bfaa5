"""The Arrow schemas of the rows synthfleet writes: one for data, one for errors.

Seed variables become typed columns of their own; lineage is one struct column, so every row says
which spec, model, template, seed and sampling produced it. With stages, each stage adds its own
columns (a generate stage's text under its name, with finish reason and token counts;
a judge stage's score, reason and cut; a select stage's pair), a preference pair is also given as
TRL's DPO columns (`prompt`, `chosen`, `rejected`), and errors and rejected rows name the stage
they ended at (`at_stage`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from orchestrator.errors import Problem
from orchestrator.spec.job import JobSpec
from orchestrator.spec.samplers import Sampler
from orchestrator.spec.stages import COLUMN_SUFFIXES, stage_columns

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
LINEAGE = pa.struct([
    ("spec_hash", pa.string()),
    ("model", pa.string()),
    ("model_revision", pa.string()),
    ("template_hash", pa.string()),
    ("seed", pa.int64()),
    ("sampling", pa.string()),
])
BASE_FIELDS = [
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("sample_index", pa.int32()),
    pa.field("custom_id", pa.string()),
    pa.field("prompt", pa.string()),
    pa.field("messages", MESSAGES),
]
DATA_FIELDS = [
    pa.field("completion", pa.string()),
    pa.field("finish_reason", pa.string()),
    pa.field("prompt_tokens", pa.int32()),
    pa.field("completion_tokens", pa.int32()),
]
# judge_cut: the judgement reached its token budget, so its reason is cut short (reason first, the
# score was then asked for on its own, after the reason so far)
JUDGE_FIELDS = [pa.field("judge_score", pa.int8()), pa.field("judge_reason", pa.string()),
                pa.field("judge_cut", pa.bool_())]
# Stages: the type of each column a stage adds (orchestrator/spec/stages.py's COLUMN_SUFFIXES)
STAGE_COLUMN_TYPES: dict[str, pa.DataType] = {
    "": pa.string(), "finish_reason": pa.string(), "prompt_tokens": pa.int32(), "cached_tokens": pa.int32(),
    "completion_tokens": pa.int32(), "score": pa.int8(), "reason": pa.string(), "cut": pa.bool_(),
    "chosen": pa.string(), "rejected": pa.string(), "chosen_score": pa.int8(), "rejected_score": pa.int8()}
DPO_FIELDS = [pa.field("chosen", pa.string()), pa.field("rejected", pa.string()),
              pa.field("chosen_score", pa.int8()), pa.field("rejected_score", pa.int8())]
AT_STAGE = pa.field("at_stage", pa.string())
STAGED_LINEAGE = pa.struct([*LINEAGE, ("stages", pa.string())])  # per stage: template hash, model, sampling (JSON)
ERROR_FIELDS = [pa.field("error_code", pa.string()), pa.field("error_message", pa.string())]
REJECT_FIELDS = [pa.field("reject_reason", pa.string()), pa.field("reject_detail", pa.string())]
RESERVED = {f.name for f in BASE_FIELDS + DATA_FIELDS + JUDGE_FIELDS + ERROR_FIELDS + REJECT_FIELDS + DPO_FIELDS} | {
    "lineage", "seed", AT_STAGE.name}


def _value_type(values: Sequence[Any]) -> pa.DataType:
    try:
        t = pa.array(list(values)).type
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.string()
    return t if (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                 or pa.types.is_string(t)) else pa.string()


def variable_fields(spec: JobSpec) -> list[pa.Field]:
    """One typed column per seed variable (sorted by name); JSON text when values are mixed."""
    source = spec.prompts.template
    if source is None:
        return []
    fields = []
    for n in sorted(source.seeds):
        seed = source.seeds[n]
        values = seed if isinstance(seed, list) else seed.output_values()
        if values is None:  # uniform, normal
            fields.append(pa.field(n, pa.float64()))
            continue
        t = _value_type(values)
        json_text = pa.types.is_string(t) and not all(isinstance(v, str) or v is None for v in values)
        if isinstance(seed, Sampler) and seed.choice is not None:  # k of the values, a list per row
            t = pa.string() if json_text else t
            fields.append(pa.field(n, pa.list_(t), metadata=JSON_TEXT if json_text else None))
        else:
            fields.append(pa.field(n, t, metadata=JSON_TEXT if json_text else None))
    return fields


JSON_TEXT = {b"synthfleet.json_text": b"1"}


def column_value(field: pa.Field, value: Any) -> Any:
    """Mixed-type seed values are stored as JSON text, so `1` and `"1"` stay distinct (each item of a
    `choice` list)."""
    if field.metadata and field.metadata.get(b"synthfleet.json_text"):
        if pa.types.is_list(field.type):
            return [json.dumps(v, sort_keys=True) for v in value]
        return json.dumps(value, sort_keys=True, default=str)  # a seed file row may hold dates
    return value


def stage_fields(spec: JobSpec) -> list[pa.Field]:
    """Each stage's columns in stage order; TRL's DPO columns when a select stage makes pairs."""
    fields = [pa.field(name, STAGE_COLUMN_TYPES[suffix]) for s in spec.stages or []
              for name, suffix in zip(stage_columns(s), COLUMN_SUFFIXES[s.kind], strict=True)]
    return fields + (DPO_FIELDS if any(s.kind == "select" for s in spec.stages or []) else [])


def _lineage(spec: JobSpec) -> pa.Field:
    return pa.field("lineage", STAGED_LINEAGE if spec.stages else LINEAGE)


def data_schema(spec: JobSpec) -> pa.Schema:
    judged = JUDGE_FIELDS if spec.judge is not None else []
    return pa.schema(BASE_FIELDS + DATA_FIELDS + judged + variable_fields(spec) + stage_fields(spec) + [_lineage(spec)])


def rejected_schema(spec: JobSpec) -> pa.Schema:
    """Data rows plus why they were rejected (reason code) and a detail (judge reason, duplicate of)."""
    schema = data_schema(spec)
    for f in REJECT_FIELDS + ([AT_STAGE] if spec.stages else []):
        schema = schema.append(f)
    return schema


def errors_schema(spec: JobSpec) -> pa.Schema:
    staged = [AT_STAGE] if spec.stages else []
    return pa.schema(BASE_FIELDS + ERROR_FIELDS + staged + variable_fields(spec) + stage_fields(spec) + [_lineage(spec)])


def reserved_name_problems(spec: JobSpec) -> list[Problem]:
    source = spec.prompts.template
    names = sorted(set(source.seeds) & RESERVED) if source else []
    return [Problem(f"prompts.template.seeds.{n}", f"{n!r} is a reserved column name; rename the variable")
            for n in names]
