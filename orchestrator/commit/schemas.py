"""The Arrow schemas of the rows synthfleet writes: one for data, one for errors.

Seed variables become typed columns of their own; lineage is one struct column, so every row says
which spec, model, template, seed and sampling produced it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from orchestrator.errors import Problem
from orchestrator.spec.job import JobSpec

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
ERROR_FIELDS = [pa.field("error_code", pa.string()), pa.field("error_message", pa.string())]
REJECT_FIELDS = [pa.field("reject_reason", pa.string()), pa.field("reject_detail", pa.string())]
RESERVED = {f.name for f in BASE_FIELDS + DATA_FIELDS + JUDGE_FIELDS + ERROR_FIELDS + REJECT_FIELDS} | {"lineage"}


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
        t, values = _value_type(source.seeds[n]), source.seeds[n]
        json_text = pa.types.is_string(t) and not all(isinstance(v, str) or v is None for v in values)
        fields.append(pa.field(n, t, metadata=JSON_TEXT if json_text else None))
    return fields


JSON_TEXT = {b"synthfleet.json_text": b"1"}


def column_value(field: pa.Field, value: Any) -> Any:
    """Mixed-type seed values are stored as JSON text, so `1` and `"1"` stay distinct."""
    if field.metadata and field.metadata.get(b"synthfleet.json_text"):
        return json.dumps(value, sort_keys=True)
    return value


def data_schema(spec: JobSpec) -> pa.Schema:
    judged = JUDGE_FIELDS if spec.judge is not None else []
    return pa.schema(BASE_FIELDS + DATA_FIELDS + judged + variable_fields(spec) + [pa.field("lineage", LINEAGE)])


def rejected_schema(spec: JobSpec) -> pa.Schema:
    """Data rows plus why they were rejected (reason code) and a detail (judge reason, duplicate of)."""
    schema = data_schema(spec)
    for f in REJECT_FIELDS:
        schema = schema.append(f)
    return schema


def errors_schema(spec: JobSpec) -> pa.Schema:
    return pa.schema(BASE_FIELDS + ERROR_FIELDS + variable_fields(spec) + [pa.field("lineage", LINEAGE)])


def reserved_name_problems(spec: JobSpec) -> list[Problem]:
    source = spec.prompts.template
    names = sorted(set(source.seeds) & RESERVED) if source else []
    return [Problem(f"prompts.template.seeds.{n}", f"{n!r} is a reserved column name; rename the variable")
            for n in names]
