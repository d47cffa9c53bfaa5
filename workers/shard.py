"""Process one shard on a warm engine: render, generate (all rows in flight), check, commit."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from orchestrator import defaults
from orchestrator.commit import layout, schemas
from orchestrator.commit.shards import CommitOutcome, ShardStats, ShardTables, commit_shard
from orchestrator.errors import RowErrorCode
from orchestrator.plan.planner import Plan, Shard
from orchestrator.spec.job import JobSpec, Sampling
from orchestrator.spec.quality import Judge
from orchestrator.storage import Store
from orchestrator.storage.base import drain_storage_stats
from workers.engine import SAME_TURN, Completion, Engine, sampling_key
from workers.filters import rejection, schema_violation, stored_text
from workers.judge import Verdict, judge_reply, judge_sampling
from workers.prompts import PromptRow, RowFailure, shard_rows


@dataclass(frozen=True)
class WorkerCounts:
    """What a worker reports between commits: tokens per job, and its storage calls."""

    jobs: dict[str, dict[str, int]]
    storage: dict[str, int]

    @classmethod
    def drain(cls, counts: dict[str, dict[str, int]]) -> WorkerCounts:
        """A worker's counts per job since the last drain, zeroed in place (running shards hold these
        dicts), with its storage calls."""
        drained = {job: dict(c) for job, c in counts.items() if any(c.values())}
        for c in counts.values():
            for key in c:
                c[key] = 0
        return cls(drained, drain_storage_stats())

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
        out[f.name] = schemas.column_value(f, row.variables.get(f.name))
    return out


def _error(base: dict[str, Any], failure: RowFailure, sample: int | None) -> dict[str, Any]:
    return {**base, "sample_index": sample, "error_code": str(failure.code),
            "error_message": failure.message[: defaults.ERROR_MESSAGE_MAX_CHARS]}


Check = RowFailure | tuple[str, str] | None  # a schema violation, a filter's (reason, detail), or passing


def _stored(spec: JobSpec, c: Completion) -> Completion:
    """The completion as stored and judged: with `filters.filler: strip`, its filler opener and closer
    removed. A stripped one is judged from its text, not from the generation's token ids."""
    text = stored_text(spec.filters, c.text) if spec.filters else c.text
    return c if text == c.text else replace(c, text=text, follow_up_ids=None)


def check(spec: JobSpec, row: PromptRow, c: Completion) -> Check:
    schema = row.sampling.json_schema
    problem = schema_violation(schema, c.text) if schema is not None else None
    if problem is not None:
        return RowFailure(RowErrorCode.SCHEMA_VIOLATION, problem)
    return rejection(spec.filters, c.text, c.completion_tokens) if spec.filters else None


@dataclass(frozen=True)
class Judging:
    """A shard's judge: its engine, and for `self` the follow-up that asks the generation for its
    conversations' token ids (the judge's turn continues them, reusing the generation's KV)."""

    engine: Engine
    judge: Judge
    sampling: Sampling
    follow_up: str | None

    @classmethod
    def of(cls, spec: JobSpec, engine: Engine, judge_engine: Engine | None) -> Judging | None:
        if spec.judge is None:
            return None
        own = judge_engine is None or judge_engine is engine
        return cls(engine if own else judge_engine, spec.judge, judge_sampling(spec.judge),
                   SAME_TURN if own else None)


@dataclass(frozen=True)
class Generated:
    """One prompt row's outcome: its completions (or why none), and with a judge each sample's check
    and verdict (None where a check already failed)."""

    result: list[Completion] | RowFailure
    checks: list[Check] | None = None
    verdicts: list[Verdict | RowFailure | None] | None = None
    stripped: int = 0  # completions whose filler was stripped


async def _generate(engine: Engine, spec: JobSpec, row: PromptRow, counts: dict[str, int] | None,
                    judging: Judging | None) -> Generated:
    """Generate the row; with a judge, judge each passing sample as soon as it is written (its KV is
    then still in the engine's prefix cache, and the judgement fills the batch beside generation)."""
    follow = judging.follow_up if judging else None
    result = row.failure if row.failure is not None else await engine.generate(row, follow)
    if counts is not None and not isinstance(result, RowFailure):
        counts["completion_tokens"] = counts.get("completion_tokens", 0) + sum(c.completion_tokens for c in result)
        counts["prompt_tokens"] = counts.get("prompt_tokens", 0) + (result[0].prompt_tokens if result else 0)
    if isinstance(result, RowFailure):
        return Generated(result)
    raw, result = result, [_stored(spec, c) for c in result]
    stripped = sum(a is not b for a, b in zip(raw, result, strict=True))
    if judging is None:
        return Generated(result, stripped=stripped)
    checks = [check(spec, row, c) for c in result]
    judged = iter(await asyncio.gather(*(judge_reply(judging.engine, judging.judge, row, i, c, judging.sampling)
                                         for i, (c, k) in enumerate(zip(result, checks, strict=True)) if k is None)))
    verdicts: list[Verdict | RowFailure | None] = [None if k is not None else next(judged) for k in checks]
    return Generated([replace(c, follow_up_ids=None) for c in result], checks, verdicts, stripped)


@dataclass
class Sorted:
    """A shard's rows sorted into data, errors and rejected, with the token counts behind them."""

    data: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    judge_prompt_tokens: int = 0
    judge_cached_tokens: int = 0
    judge_completion_tokens: int = 0
    judge_scores: Counter[str] = field(default_factory=Counter)
    filler_stripped: int = 0

    def reject(self, row: dict[str, Any], reason: str, detail: str) -> None:
        self.rejected.append({**row, "reject_reason": reason, "reject_detail": detail})

    def judged(self, row: dict[str, Any], verdict: Verdict | RowFailure, judge: Judge) -> None:
        """Low scores to rejected, unusable judgements to errors, the rest to data with score and reason."""
        if isinstance(verdict, RowFailure):
            self.errors.append(_error(row, verdict, row["sample_index"]))
            return
        self.judge_prompt_tokens += verdict.prompt_tokens
        self.judge_cached_tokens += verdict.cached_tokens
        self.judge_completion_tokens += verdict.completion_tokens
        self.judge_scores[str(verdict.score)] += 1
        row = {**row, "judge_score": verdict.score, "judge_reason": verdict.reason, "judge_cut": verdict.cut}
        if verdict.score < judge.min_score:
            self.reject(row, "judge_low_score", f"{verdict.score} < {judge.min_score}: {verdict.reason}")
        else:
            self.data.append(row)

    def tables(self, spec: JobSpec) -> ShardTables:
        return ShardTables(pa.Table.from_pylist(self.data, schema=schemas.data_schema(spec)),
                           pa.Table.from_pylist(self.errors, schema=schemas.errors_schema(spec)),
                           pa.Table.from_pylist(self.rejected, schema=schemas.rejected_schema(spec)))


def assemble(spec: JobSpec, plan: Plan, prompt_rows: list[PromptRow], results: list[Generated],
             revision: str) -> Sorted:
    """Sort generated rows: schema violations and judge errors to errors, filtered or low-scored rows
    to rejected, the rest to data."""
    fields = schemas.variable_fields(spec)
    out = Sorted()
    for row, g in zip(prompt_rows, results, strict=True):
        base = _base(row, spec, plan, revision, fields)
        if isinstance(g.result, RowFailure):
            out.errors.append(_error(base, g.result, None))
            continue
        out.prompt_tokens += g.result[0].prompt_tokens if g.result else 0
        out.filler_stripped += g.stripped
        for i, c in enumerate(g.result):
            out.completion_tokens += c.completion_tokens
            outcome = g.checks[i] if g.checks is not None else check(spec, row, c)
            if isinstance(outcome, RowFailure):
                out.errors.append(_error(base, outcome, i))
                continue
            generated = {**base, "sample_index": i, "completion": c.text, "finish_reason": c.finish_reason,
                         "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}
            verdict = g.verdicts[i] if g.verdicts is not None else None
            if outcome is not None:
                out.reject(generated, *outcome)
            elif verdict is not None and spec.judge is not None:
                out.judged(generated, verdict, spec.judge)
            else:
                out.data.append(generated)
    return out


def _first_messages(errors: list[dict[str, Any]]) -> dict[str, str]:
    samples: dict[str, str] = {}
    for r in errors:
        samples.setdefault(r["error_code"], r["error_message"])
    return samples


def _stats(shard: Shard, attempt: int, out: Sorted, seconds: float, revision: str) -> ShardStats:
    return ShardStats(
        index=shard.index, attempt=attempt, rows_ok=len(out.data), rows_failed=len(out.errors),
        prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens, seconds=round(seconds, 3),
        model_revision=revision, rows_rejected=len(out.rejected),
        rejected=dict(Counter(r["reject_reason"] for r in out.rejected)),
        failed=dict(Counter(r["error_code"] for r in out.errors)), judge_scores=dict(out.judge_scores),
        error_samples=_first_messages(out.errors),
        judge_prompt_tokens=out.judge_prompt_tokens, judge_cached_tokens=out.judge_cached_tokens,
        judge_completion_tokens=out.judge_completion_tokens, filler_stripped=out.filler_stripped)


async def run_shard(engine: Engine, store: Store, spec: JobSpec, plan: Plan, shard: Shard, attempt: int,
                    counts: dict[str, int] | None = None, judge: Engine | None = None) -> CommitOutcome | None:
    """Generate, check and commit `shard`; None when it was already committed (nothing generated).

    `counts` is bumped as each row finishes, so progress is visible before the shard commits.
    `judge` is the engine that scores rows when the spec has a judge (the same engine for `self`).
    """
    if committed(store, spec, plan, shard):
        return None
    started = time.perf_counter()
    prompt_rows = await asyncio.to_thread(shard_rows, spec, plan, shard)
    judging = Judging.of(spec, engine, judge)
    results = await asyncio.gather(*(_generate(engine, spec, r, counts, judging) for r in prompt_rows))
    revision = engine.info.revision
    out = await asyncio.to_thread(assemble, spec, plan, prompt_rows, list(results), revision)
    return await commit_sorted(store, spec, plan, shard, attempt, out, started, revision)


def committed(store: Store, spec: JobSpec, plan: Plan, shard: Shard) -> bool:
    """Whether `shard` is already committed (a resume or a retry after a lost reply): nothing to generate."""
    return store.exists(layout.commit_key(shard.index, plan.of, spec.staged))


async def commit_sorted(store: Store, spec: JobSpec, plan: Plan, shard: Shard, attempt: int, out: Sorted,
                        started: float, revision: str) -> CommitOutcome:
    """Commit a shard's sorted rows exactly once; a commit under way completes even when the task is cancelled."""
    tables = await asyncio.to_thread(out.tables, spec)
    stats = _stats(shard, attempt, out, time.perf_counter() - started, revision)
    staged = spec.staged
    commit = asyncio.ensure_future(asyncio.to_thread(commit_shard, store, plan.of, tables, stats, staged))
    try:
        return await asyncio.shield(commit)
    except asyncio.CancelledError:
        await commit  # a commit under way completes before the cancellation is reported
        raise
