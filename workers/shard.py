"""Process one shard on a warm engine: render, generate (all rows in flight), check, commit."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from orchestrator import defaults, layout, rows
from orchestrator.commit import CommitOutcome, ShardStats, ShardTables, commit_shard
from orchestrator.errors import RowErrorCode
from orchestrator.gates import Judge
from orchestrator.planner import Plan, Shard
from orchestrator.spec import JobSpec
from orchestrator.storage import Store
from workers.engine import Completion, Engine, sampling_key
from workers.filters import rejection, schema_violation
from workers.judge import judge_row, judge_sampling
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


@dataclass
class Sorted:
    """A shard's rows sorted into data, errors and rejected, with the token counts behind them."""

    data: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    judge_prompt_tokens: int = 0
    judge_completion_tokens: int = 0
    judge_scores: Counter[str] = field(default_factory=Counter)

    def reject(self, row: dict[str, Any], reason: str, detail: str) -> None:
        self.rejected.append({**row, "reject_reason": reason, "reject_detail": detail})

    def tables(self, spec: JobSpec) -> ShardTables:
        return ShardTables(pa.Table.from_pylist(self.data, schema=rows.data_schema(spec)),
                           pa.Table.from_pylist(self.errors, schema=rows.errors_schema(spec)),
                           pa.Table.from_pylist(self.rejected, schema=rows.rejected_schema(spec)))


def assemble(spec: JobSpec, plan: Plan, prompt_rows: list[PromptRow],
             results: list[list[Completion] | RowFailure], revision: str) -> Sorted:
    """Sort generated rows: schema violations to errors, filtered rows to rejected, the rest to data."""
    fields = rows.variable_fields(spec)
    out = Sorted()
    for row, result in zip(prompt_rows, results, strict=True):
        base = _base(row, spec, plan, revision, fields)
        if isinstance(result, RowFailure):
            out.errors.append(_error(base, result, None))
            continue
        out.prompt_tokens += result[0].prompt_tokens if result else 0
        for i, c in enumerate(result):
            out.completion_tokens += c.completion_tokens
            schema = row.sampling.json_schema
            problem = schema_violation(schema, c.text) if schema is not None else None
            if problem is not None:
                out.errors.append(_error(base, RowFailure(RowErrorCode.SCHEMA_VIOLATION, problem), i))
                continue
            generated = {**base, "sample_index": i, "completion": c.text, "finish_reason": c.finish_reason,
                         "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}
            rejected = rejection(spec.filters, c.text, c.completion_tokens) if spec.filters else None
            if rejected is not None:
                out.reject(generated, *rejected)
            else:
                out.data.append(generated)
    return out


async def judge_rows(engine: Engine, judge: Judge, out: Sorted) -> None:
    """Score every data row on `engine`; low scores move to rejected, unusable judgements to errors."""
    sampling = judge_sampling(judge)
    verdicts = await asyncio.gather(*(judge_row(engine, judge, r, sampling) for r in out.data))
    kept = []
    for row, verdict in zip(out.data, verdicts, strict=True):
        if isinstance(verdict, RowFailure):
            out.errors.append(_error(row, verdict, row["sample_index"]))
            continue
        out.judge_prompt_tokens += verdict.prompt_tokens
        out.judge_completion_tokens += verdict.completion_tokens
        out.judge_scores[str(verdict.score)] += 1
        judged = {**row, "judge_score": verdict.score, "judge_reason": verdict.reason}
        if verdict.score < judge.min_score:
            out.reject(judged, "judge_low_score", f"{verdict.score} < {judge.min_score}: {verdict.reason}")
        else:
            kept.append(judged)
    out.data = kept


def _stats(shard: Shard, attempt: int, out: Sorted, seconds: float, revision: str) -> ShardStats:
    return ShardStats(
        index=shard.index, attempt=attempt, rows_ok=len(out.data), rows_failed=len(out.errors),
        prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens, seconds=round(seconds, 3),
        model_revision=revision, rows_rejected=len(out.rejected),
        rejected=dict(Counter(r["reject_reason"] for r in out.rejected)),
        failed=dict(Counter(r["error_code"] for r in out.errors)), judge_scores=dict(out.judge_scores),
        judge_prompt_tokens=out.judge_prompt_tokens, judge_completion_tokens=out.judge_completion_tokens)


async def run_shard(engine: Engine, store: Store, spec: JobSpec, plan: Plan, shard: Shard, attempt: int,
                    counts: dict[str, int] | None = None, judge: Engine | None = None) -> CommitOutcome | None:
    """Generate, check and commit `shard`; None when it was already committed (nothing generated).

    `counts` is bumped as each row finishes, so progress is visible before the shard commits.
    `judge` is the engine that scores rows when the spec has a judge (the same engine for `self`).
    """
    staged = spec.dedup is not None
    if store.exists(layout.commit_key(shard.index, plan.num_shards, staged)):
        return None
    started = time.perf_counter()
    prompt_rows = await asyncio.to_thread(shard_rows, spec, plan, shard)
    results = await asyncio.gather(*(_generate(engine, r, counts) for r in prompt_rows))
    revision = engine.info.revision
    out = await asyncio.to_thread(assemble, spec, plan, prompt_rows, list(results), revision)
    if spec.judge is not None:
        await judge_rows(judge or engine, spec.judge, out)
    tables = await asyncio.to_thread(out.tables, spec)
    stats = _stats(shard, attempt, out, time.perf_counter() - started, revision)
    commit = asyncio.ensure_future(asyncio.to_thread(commit_shard, store, plan.num_shards, tables, stats, staged))
    try:
        return await asyncio.shield(commit)
    except asyncio.CancelledError:
        await commit  # a commit under way completes before the cancellation is reported
        raise
