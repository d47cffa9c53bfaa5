"""Process one shard of a job with stages: every row runs its stages as its own task, then the shard
commits once, with every stage's columns, as a stage-less shard does (workers/shard.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from orchestrator import defaults
from orchestrator.commit import schemas
from orchestrator.commit.shards import CommitOutcome
from orchestrator.plan.draws import index_sampling
from orchestrator.plan.planner import Plan, Shard, row_id, row_seed, shard_variables
from orchestrator.spec.job import JobSpec
from orchestrator.spec.stages import COLUMN_SUFFIXES, GenerateStage, Stage, stage_columns
from orchestrator.storage import Store
from workers.engine import Engine, sampling_key
from workers.shard import Sorted, commit_sorted, committed
from workers.stages import Branch, EngineFor, Program, SeedRow, Tokens, run_row


def seed_rows(spec: JobSpec, plan: Plan, shard: Shard) -> list[SeedRow]:
    """The shard's rows as the first stage gets them: id, seed and seed values."""
    source = spec.prompts.template
    assert source is not None
    indexes = shard.row_indexes()
    values = shard_variables(source, shard, plan.seed_files)
    samplings = index_sampling(spec.sampling, indexes)
    return [SeedRow(i, row_id(plan.spec_hash, i), row_seed(spec.sampling.seed, i), v, s)
            for i, v, s in zip(indexes.tolist(), values, samplings, strict=True)]


def _template_hash(stage: Stage) -> str | None:
    if not isinstance(stage, GenerateStage):
        return None
    texts = [stage.text] if stage.text is not None else [[m.role, m.content] for m in stage.messages or []]
    return hashlib.sha256(json.dumps([texts, stage.when, stage.continue_]).encode()).hexdigest()[:16]


def stages_lineage(spec: JobSpec, revision: str) -> dict[str, Any]:
    """The lineage every row of the job shares: each stage's template hash, model and sampling."""
    stages = []
    for s in spec.stages or []:
        entry: dict[str, Any] = {"name": s.name, "kind": s.kind}
        model = getattr(s, "model", "self")
        entry["model"] = model if model == "self" else model.name
        if isinstance(s, GenerateStage):
            entry |= {"template_hash": _template_hash(s), "sampling": json.loads(sampling_key(s.sampling.over(spec.sampling)))}
        stages.append(entry)
    blob = json.dumps(stages, sort_keys=True, separators=(",", ":"))
    return {"model": spec.model.name, "model_revision": revision, "sampling": sampling_key(spec.sampling),
            "template_hash": hashlib.sha256(blob.encode()).hexdigest()[:16], "stages": blob}


class Rows:
    """Turns a row's branches into the rows of data/, errors/ and rejected/."""

    def __init__(self, spec: JobSpec, plan: Plan, revision: str):
        self.spec = spec
        self.fields = schemas.variable_fields(spec)
        self.lineage = {"spec_hash": plan.spec_hash, **stages_lineage(spec, revision)}

    def row(self, seed: SeedRow, b: Branch) -> dict[str, Any]:
        out: dict[str, Any] = {"row_id": seed.row_id, "sample_index": b.sample, "custom_id": None,
                               "lineage": {**self.lineage, "seed": seed.seed}}
        if seed.sampling is not self.spec.sampling:  # a parameter drawn per row: the row's draw
            out["lineage"]["sampling"] = sampling_key(seed.sampling)
        out |= {f.name: schemas.column_value(f, seed.variables.get(f.name)) for f in self.fields}
        for stage in self.spec.stages or []:
            columns = b.columns.get(stage.name, {})
            out |= {name: columns.get(suffix)
                    for name, suffix in zip(stage_columns(stage), COLUMN_SUFFIXES[stage.kind], strict=True)}
        judged = b.columns.get("judge")  # the top-level judge's
        if judged is not None:
            out |= {"judge_score": judged["score"], "judge_reason": judged["reason"], "judge_cut": judged["cut"]}
        if b.dpo is not None:
            out |= {**b.dpo, "completion": b.dpo["chosen"]}
        elif b.last is not None:
            c = b.last.reply
            out |= {"prompt": b.last.prompt, "messages": b.last.conversation, "completion": c.text,
                    "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens}
        return out

    def sort(self, out: Sorted, seed: SeedRow, branches: list[Branch]) -> None:
        for b in branches:
            row, end = self.row(seed, b), b.ending
            if end is None:
                out.data.append(row)
                if "judge_score" in row and row["judge_score"] is not None:
                    out.judge_scores[str(row["judge_score"])] += 1
            elif end.failure is not None:
                out.errors.append({**row, "at_stage": end.stage, "error_code": str(end.failure.code),
                                   "error_message": f"stage {end.stage}: {end.failure.message}"[
                                       : defaults.ERROR_MESSAGE_MAX_CHARS]})
            else:
                assert end.reject is not None
                reason, detail = end.reject
                out.rejected.append({**row, "at_stage": end.stage, "reject_reason": reason,
                                     "reject_detail": f"stage {end.stage}: {detail}"})


def _add(out: Sorted, tokens: Tokens) -> None:
    out.prompt_tokens += tokens.prompt
    out.completion_tokens += tokens.completion
    out.judge_prompt_tokens += tokens.judge_prompt
    out.judge_cached_tokens += tokens.judge_cached
    out.judge_completion_tokens += tokens.judge_completion
    out.filler_stripped += tokens.filler_stripped


async def run_staged_shard(engines: EngineFor, store: Store, spec: JobSpec, plan: Plan, shard: Shard, attempt: int,
                           counts: dict[str, int] | None = None) -> CommitOutcome | None:
    """Run the stages of every row of `shard` and commit it; None when it was already committed.

    `engines` gives the engine of a stage's model (`self`: the worker's own).
    """
    if committed(store, spec, plan, shard):
        return None
    started = time.perf_counter()
    seeds = await asyncio.to_thread(seed_rows, spec, plan, shard)
    program = Program(spec, engines, counts)
    tokens = [Tokens() for _ in seeds]
    ended = await asyncio.gather(*(run_row(program, s, t) for s, t in zip(seeds, tokens, strict=True)))
    engine: Engine = engines("self")
    revision = engine.info.revision
    rows, out = Rows(spec, plan, revision), Sorted()
    for seed, branches, t in zip(seeds, ended, tokens, strict=True):
        rows.sort(out, seed, branches)
        _add(out, t)
    return await commit_sorted(store, spec, plan, shard, attempt, out, started, revision)

