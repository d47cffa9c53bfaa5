"""Render the prompts of one shard: read its rows from the source, fill templates in a sandbox.

Row data is only ever passed to templates as values; it is never itself rendered as a template.
A row that cannot be rendered or parsed is returned with an error instead of a prompt.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from orchestrator.errors import RowErrorCode
from orchestrator.plan.draws import index_sampling
from orchestrator.plan.planner import Plan, Shard, row_id, row_seed, shard_variables
from orchestrator.spec.job import JobSpec, Sampling, TemplateSource
from orchestrator.storage.reader import open_input
from workers import sandbox, template_checks

BATCH_URLS = ("/v1/chat/completions", "/v1/completions")
FILE_COLUMNS = ("prompt", "messages", "custom_id")  # what a prompt file row is made of; other columns are its variables


@dataclass(frozen=True)
class RowFailure:
    code: RowErrorCode
    message: str


@dataclass(frozen=True)
class PromptRow:
    """One input row, ready for the engine (or carrying why it is not)."""

    index: int
    row_id: str
    seed: int
    sampling: Sampling
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    prompt_token_ids: list[int] | None = None  # already tokenized (a follow-up on the same engine)
    variables: dict[str, Any] = field(default_factory=dict)
    custom_id: str | None = None
    template_hash: str | None = None
    failure: RowFailure | None = None


def template_texts(source: TemplateSource) -> list[str]:
    return [source.text] if source.text is not None else [m.content for m in source.messages or []]


def template_hash(source: TemplateSource) -> str:
    blob = json.dumps(template_texts(source) if source.text is not None
                      else [[m.role, m.content] for m in source.messages or []])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def undeclared_variables(text: str) -> set[str]:
    """Variables a template reads; jinja2.TemplateSyntaxError on bad syntax, sandbox.TemplateTimeout when
    analysing it takes longer than TEMPLATE_CHECK_S."""
    return template_checks.undeclared_variables(text)


def _render_template(spec: JobSpec, plan: Plan, index: int, values: dict[str, Any], sampling: Sampling) -> PromptRow:
    source = spec.prompts.template
    assert source is not None
    base = dict(index=index, row_id=row_id(plan.spec_hash, index), seed=row_seed(spec.sampling.seed, index),
                sampling=sampling, variables=values, template_hash=template_hash(source))
    try:  # within the sandbox's bounds: MAX_PROMPT_CHARS for all the row's texts, TEMPLATE_MAX_STEPS, ...
        rendered = sandbox.render_all(template_texts(source), values)
    except sandbox.RenderError as e:  # TemplateError, a bound, or anything a filter or operator raises
        return PromptRow(failure=RowFailure(RowErrorCode.TEMPLATE_ERROR, str(e)), **base)
    if source.text is not None:
        return PromptRow(prompt=rendered[0], **base)
    messages = [{"role": m.role, "content": text} for m, text in zip(source.messages or [], rendered, strict=True)]
    return PromptRow(messages=messages, **base)


def _lines(uri: str, shard: Shard) -> Iterator[tuple[int, bytes]]:
    """(1-based file line number, undecoded bytes) of each non-blank line in the shard's byte range."""
    assert shard.byte_start is not None and shard.byte_end is not None and shard.first_line is not None
    with open_input(uri, shard.byte_start) as f:
        data = f.read(shard.byte_end - shard.byte_start)
    for number, line in enumerate(io.BytesIO(data), start=shard.first_line):
        if line.strip():
            yield number, line


def _parquet_records(uri: str, shard: Shard) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    with open_input(uri) as f:
        pf = pq.ParquetFile(f)
        first = 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if first + n > shard.start and first < shard.end:
                table = pf.read_row_group(g).slice(max(0, shard.start - first),
                                                   min(shard.end, first + n) - max(first, shard.start))
                yield from table.to_pylist()
            first += n


def _records(uri: str, shard: Shard) -> Iterator[tuple[int | None, dict[str, Any] | bytes]]:
    """The shard's rows in order: (file line number, raw JSONL line), or (None, Parquet record).

    JSONL lines stay undecoded here so that a bad one fails only its own row (see `_record`).
    """
    if shard.byte_start is None:
        yield from ((None, record) for record in _parquet_records(uri, shard))
    else:
        yield from _lines(uri, shard)


def _record(line: bytes) -> dict[str, Any]:
    """One JSONL line as an object; a ValueError saying why not (positions are within the line).

    Decoded here, strictly, rather than by `json.loads` on bytes, whose UnicodeDecodeError would
    fail the whole shard: invalid UTF-8 fails only its own row. A BOM is dropped, as `json.loads` does.
    """
    try:
        text = line.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")  # so json's column is the line's
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 ({e.reason} 0x{line[e.start]:02x} at byte {e.start + 1})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        raise ValueError("messages must be a list of {role, content} objects with string content")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _file_row(record: dict[str, Any], base: dict[str, Any]) -> PromptRow:
    custom_id = record.get("custom_id")
    base["custom_id"] = None if custom_id is None else str(custom_id)
    base["variables"] = {k: v for k, v in record.items() if k not in FILE_COLUMNS}  # e.g. a judge's reference
    if isinstance(record.get("prompt"), str):
        return PromptRow(prompt=record["prompt"], **base)
    if record.get("messages") is not None:
        return PromptRow(messages=_messages(record["messages"]), **base)
    raise ValueError("row has neither a string `prompt` nor a `messages` list")


def batch_sampling(spec: Sampling, body: dict[str, Any]) -> Sampling:
    """The job's sampling, overridden by an OpenAI request body's own fields."""
    update: dict[str, Any] = {}
    for key in ("temperature", "top_p", "n", "seed"):
        if body.get(key) is not None:
            update[key] = body[key]
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is not None:
        update["max_tokens"] = tokens
    if body.get("stop") is not None:
        update["stop"] = [body["stop"]] if isinstance(body["stop"], str) else body["stop"]
    fmt = body.get("response_format")
    if fmt is not None and not isinstance(fmt, dict):
        raise ValueError("response_format must be an object")
    if fmt and fmt.get("type") == "json_schema":
        inner = fmt.get("json_schema")
        if not isinstance(inner, dict):
            raise ValueError("response_format.json_schema must be an object holding a schema")
        update["json_schema"] = inner.get("schema")
    elif fmt and fmt.get("type") == "json_object":
        update["json_schema"] = {"type": "object"}
    elif fmt and fmt.get("type") not in (None, "text"):
        raise ValueError(f"unsupported response_format type {fmt.get('type')!r}; use text, json_object or json_schema")
    return Sampling.model_validate({**spec.model_dump(), **update})


def _batch_row(record: dict[str, Any], base: dict[str, Any]) -> PromptRow:
    base["custom_id"] = None if record.get("custom_id") is None else str(record["custom_id"])
    url, body = record.get("url"), record.get("body")
    if base["custom_id"] is None:
        raise ValueError("request has no custom_id")
    if record.get("method", "POST") != "POST" or url not in BATCH_URLS:
        raise ValueError(f"unsupported endpoint {record.get('method')} {url}; use POST {' or '.join(BATCH_URLS)}")
    if not isinstance(body, dict):
        raise ValueError("request has no body object")
    sampling = batch_sampling(base.pop("sampling"), body)
    if "seed" in body:
        base["seed"] = sampling.seed
    if url == BATCH_URLS[0]:
        return PromptRow(messages=_messages(body.get("messages")), sampling=sampling, **base)
    if not isinstance(body.get("prompt"), str):
        raise ValueError("completions body needs a string prompt")
    return PromptRow(prompt=body["prompt"], sampling=sampling, **base)


def shard_rows(spec: JobSpec, plan: Plan, shard: Shard) -> list[PromptRow]:
    """Every row of `shard`, in order, each with a prompt or a failure."""
    p, indexes = spec.prompts, shard.row_indexes()
    samplings = index_sampling(spec.sampling, indexes)
    if p.template is not None:
        values = shard_variables(p.template, shard, plan.seed_files)
        return [_render_template(spec, plan, i, v, s)
                for i, v, s in zip(indexes.tolist(), values, samplings, strict=True)]
    uri = str(p.file_uri)
    make = _file_row if p.file is not None else _batch_row
    rows = []
    for index, (number, source) in enumerate(_records(uri, shard), start=shard.start):
        base: dict[str, Any] = dict(index=index, row_id=row_id(plan.spec_hash, index),
                                    seed=row_seed(spec.sampling.seed, index), sampling=samplings[index - shard.start])
        rows.append(_input_row(make, number, source, base))
    return rows


def _input_row(make: Callable[[dict[str, Any], dict[str, Any]], PromptRow], number: int | None,
               source: dict[str, Any] | bytes, base: dict[str, Any]) -> PromptRow:
    """One file row made by `make`, or an invalid_request row saying why, led by its file line."""
    record: dict[str, Any] = {}
    try:
        record = _record(source) if isinstance(source, bytes) else source
        return make(record, dict(base))
    except (ValueError, ValidationError) as e:
        if record.get("custom_id") is not None:
            base["custom_id"] = str(record["custom_id"])
        where = "" if number is None else f"line {number}: "
        return PromptRow(failure=RowFailure(RowErrorCode.INVALID_REQUEST, f"{where}{e}"), **base)
