"""Process one shard on a warm engine: render, generate (all rows in flight), check, commit."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from orchestrator import defaults, layout, rows
from orchestrator.commit import CommitOutcome, ShardStats, commit_shard
from orchestrator.errors import RowErrorCode
from orchestrator.planner import Plan, Shard
from orchestrator.spec import JobSpec
from orchestrator.storage import Store
from workers.engine import Completion, Engine, sampling_key
from workers.filters import schema_violation
from workers.prompts import PromptRow, RowFailure, shard_rows


@dataclass(frozen=True)
class WorkerCounts:
    """What a worker reports between commits: tokens per job, and its storage calls."""

    jobs: dict[str, dict[str, int]]
    storage: dict[str, int]

    def merge(self, other: WorkerCounts) -> WorkerCounts:
        jobs = {job: dict(c) for job, c in self.jobs.items()}
        for job, counts in other.jobs.items():
            slot = jobs.setdefault(job, {})
            for k, v in counts.items():
                slot[k] = slot.get(k, 0) + v
        storage = dict(self.storage)
        for k, v in other.storage.items():
            storage[k] = storage.get(k, 0) + v
        return WorkerCounts(jobs, storage)


def _base(row: PromptRow, spec: JobSpec, plan: Plan, revision: str, fields: list[pa.Field]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "row_id": row.row_id, "custom_id": row.custom_id, "prompt": row.prompt, "messages": row.messages,
        "lineage": {
            "spec_hash": plan.spec_hash, "model": spec.model.name, "model_revision": revision,
            "template_hash": row.template_hash, "seed": row.seed, "sampling": sampling_key(row.sampling),
        },
    }
    for f in fields:
        out[f.name] = rows.column_value(f, row.variables.get(f.name))
    return out


def _error(base: dict[str, Any], failure: RowFailure, sample: int | None) -> dict[str, Any]:
    return {**base, "sample_index": sample, "error_code": str(failure.code),
            "error_message": failure.message[: defaults.ERROR_MESSAGE_MAX_CHARS]}


async def _generate(engine: Engine, row: PromptRow, counts: dict[str, int] | None) -> list[Completion] | RowFailure:
    result = row.failure if row.failure is not None else await engine.generate(row)
    if counts is not None and not isinstance(result, RowFailure):
        counts["completion_tokens"] = counts.get("completion_tokens", 0) + sum(c.completion_tokens for c in result)
        counts["prompt_tokens"] = counts.get("prompt_tokens", 0) + (result[0].prompt_tokens if result else 0)
    return result


def assemble(spec: JobSpec, plan: Plan, prompt_rows: list[PromptRow],
             results: list[list[Completion] | RowFailure], revision: str) -> tuple[pa.Table, pa.Table, int, int]:
    """Data and error tables for a shard, plus its prompt and completion token totals."""
    fields = rows.variable_fields(spec)
    data, errors, prompt_tokens, completion_tokens = [], [], 0, 0
    for row, result in zip(prompt_rows, results, strict=True):
        base = _base(row, spec, plan, revision, fields)
        if isinstance(result, RowFailure):
            errors.append(_error(base, result, None))
            continue
        prompt_tokens += result[0].prompt_tokens if result else 0
        for i, c in enumerate(result):
            completion_tokens += c.completion_tokens
            schema = row.sampling.json_schema
            problem = schema_violation(schema, c.text) if schema is not None else None
            if problem is not None:
                errors.append(_error(base, RowFailure(RowErrorCode.SCHEMA_VIOLATION, problem), i))
                continue
            data.append({**base, "sample_index": i, "completion": c.text, "finish_reason": c.finish_reason,
                         "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens})
    return (pa.Table.from_pylist(data, schema=rows.data_schema(spec)),
            pa.Table.from_pylist(errors, schema=rows.errors_schema(spec)), prompt_tokens, completion_tokens)


async def run_shard(engine: Engine, store: Store, spec: JobSpec, plan: Plan, shard: Shard,
                    attempt: int, counts: dict[str, int] | None = None) -> CommitOutcome | None:
    """Generate and commit `shard`; None when it was already committed (nothing generated).

    `counts` is bumped as each row finishes, so progress is visible before the shard commits.
    """
    if store.exists(layout.data_key(shard.index, plan.num_shards)):
        return None
    started = time.perf_counter()
    prompt_rows = await asyncio.to_thread(shard_rows, spec, plan, shard)
    results = await asyncio.gather(*(_generate(engine, r, counts) for r in prompt_rows))
    revision = engine.info.revision
    data, errors, p_tok, c_tok = await asyncio.to_thread(assemble, spec, plan, prompt_rows, list(results), revision)
    stats = ShardStats(index=shard.index, attempt=attempt, rows_ok=data.num_rows, rows_failed=errors.num_rows,
                       prompt_tokens=p_tok, completion_tokens=c_tok,
                       seconds=round(time.perf_counter() - started, 3), model_revision=revision)
    commit = asyncio.ensure_future(asyncio.to_thread(commit_shard, store, plan.num_shards, data, errors, stats))
    try:
        return await asyncio.shield(commit)
    except asyncio.CancelledError:
        await commit  # a commit under way completes before the cancellation is reported
        raise
