"""`synthfleet preview`: the worker's row program on a job's first rows, in this process, writing nothing.

The first rows become shard 0 of a plan with that many rows per shard; the same shard code a worker
runs (workers/shard.py, workers/pipeline.py) generates and commits it to a MemoryStore, whose tables
are then printed, with an estimate of the whole job from what the preview measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.cli.common import EXIT_OK, load, out, report_problems
from orchestrator.errors import SpecError

if TYPE_CHECKING:
    from orchestrator.commit.shards import ShardStats
    from orchestrator.plan.planner import Plan, Shard
    from orchestrator.spec.job import JobSpec
    from orchestrator.spec.model import ModelSpec
    from orchestrator.storage import Store
    from workers.engine import Engine

COMPLETION_CHARS = 500  # of each printed text


@dataclass(frozen=True)
class Estimate:
    """The whole job at the preview's per-row means and measured pace, on one engine."""

    rows: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float


def estimate(rows: int, n: int, previewed: int, prompt_tokens: int, completion_tokens: int,
             seconds: float) -> Estimate:
    """Prompt tokens: the per-row mean × rows (a row's n samples share its prompt); completion tokens:
    the per-sample mean × rows × n; time: the preview's seconds per row × rows."""
    if previewed == 0:
        return Estimate(rows, 0, 0, 0.0)
    per_sample = completion_tokens / (previewed * n)
    return Estimate(rows, round(prompt_tokens / previewed * rows), round(per_sample * rows * n),
                    seconds / previewed * rows)


def duration(seconds: float) -> str:
    """`1 h 02 min`, `3 min 05 s` or `12 s`."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def preview_plan(spec: JobSpec, rows: int) -> Plan:
    """The job's plan with `rows` rows per shard, so its shard 0 is the first `rows` rows the job runs:
    the first pass, or for a targets job without one, round 1. Same job id and row ids as the job's."""
    from orchestrator.plan.planner import make_plan
    from orchestrator.plan.rounds import Strata, next_round

    small = spec.model_copy(update={"output": spec.output.model_copy(update={"rows_per_shard": rows})})
    plan = replace(make_plan(small), job_id=spec.job_id, spec_hash=spec.content_hash())
    if spec.targets is not None and not plan.total_rows:
        plan = next_round(spec, plan, Strata.of(spec), None) or plan
    return plan


class Engines:
    """The EngineFor of the preview: the spec's model for `self`, any other model loaded on first use."""

    def __init__(self, spec: JobSpec):
        self.model, self.on_gpu = spec.model, bool(spec.resources.gpus_per_worker)
        self.loaded: dict[str, Engine] = {}
        self.reaper: subprocess.Popen[bytes] | None = None
        self.environ = dict(os.environ)  # vLLM sets variables (LD_PRELOAD, ...) in the process it starts in

    def __call__(self, model: Literal["self"] | ModelSpec) -> Engine:
        from orchestrator.run import reaper
        from workers.actor import _make_engine

        m = self.model if model == "self" else model
        key = m.model_dump_json()
        if key not in self.loaded:
            if m.engine != "fake" and self.reaper is None:
                self.reaper = reaper.start()  # a killed preview leaves no vLLM process behind
            self.loaded[key] = _make_engine(m, self.on_gpu)
        return self.loaded[key]

    def close(self) -> None:
        """Stop every engine's processes, then the watchdog; leave this process as it was (its cores and
        environment), since a caller's later children inherit both."""
        from workers import placement

        for engine in self.loaded.values():
            close = getattr(engine, "close", None)
            if close is not None:
                close()
        self.loaded.clear()
        placement.restore()
        os.environ.clear()
        os.environ.update(self.environ)
        if self.reaper is not None:
            self.reaper.terminate()
            self.reaper.wait()
            self.reaper = None


def models(spec: JobSpec) -> list[Literal["self"] | ModelSpec]:
    """Every model the row program uses: loaded before the clock starts."""
    used: list[Any] = ["self", *(getattr(s, "model", "self") for s in spec.stages or [])]
    return used + ([spec.judge.model] if spec.judge is not None else [])


async def run_first_shard(spec: JobSpec, plan: Plan, shard: Shard, engines: Engines, store: Store) -> ShardStats:
    """Shard 0 through the worker's own code, as GenerationWorker.process runs it; the engines are
    stopped at the end (also on Ctrl-C, which cancels this task), inside the loop they ran in."""
    from workers.pipeline import run_staged_shard
    from workers.shard import run_shard

    try:
        for model in models(spec):
            engines(model)
        if spec.stages is not None:
            outcome = await run_staged_shard(engines, store, spec, plan, shard, 0)
        else:
            judge = None if spec.judge is None or spec.judge.model == "self" else engines(spec.judge.model)
            outcome = await run_shard(engines("self"), store, spec, plan, shard, 0, judge=judge)
    finally:
        engines.close()
    assert outcome is not None
    return outcome.stats


def outcomes(spec: JobSpec, plan: Plan, store: Store) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Each row id's samples from the committed tables: ("kept" | "rejected" | "error", row)."""
    from orchestrator.commit import layout
    from orchestrator.commit.shards import read_parquet

    keys = (("kept", layout.commit_key(0, plan.of, spec.staged)), ("rejected", layout.rejected_key(0, plan.of)),
            ("error", layout.errors_key(0, plan.of)))
    rows: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for status, key in keys:
        for row in read_parquet(store, key).to_pylist() if store.exists(key) else []:
            rows.setdefault(row["row_id"], []).append((status, row))
    for samples in rows.values():
        samples.sort(key=lambda s: s[1]["sample_index"] if s[1]["sample_index"] is not None else -1)
    if spec.dedup is not None:
        _mark_duplicates(spec, rows)
    return rows


def _mark_duplicates(spec: JobSpec, rows: dict[str, list[tuple[str, dict[str, Any]]]]) -> None:
    """Kept samples the finalize pass's dedup would drop, among the previewed rows only."""
    from orchestrator.finalize.dedup import Deduper

    assert spec.dedup is not None
    kept = [(samples, i) for samples in rows.values() for i, (status, _) in enumerate(samples) if status == "kept"]
    texts = [str(samples[i][1].get(spec.dedup.column) or "") for samples, i in kept]
    ids = [f"{samples[i][1]['row_id']}/{samples[i][1]['sample_index']}" for samples, i in kept]
    deduper = Deduper(spec.dedup)
    deduper.scan(texts)
    deduper.close_scan()
    for (samples, i), dup in zip(kept, deduper.decide(texts, ids), strict=True):
        if dup is not None:
            samples[i] = ("rejected", {**samples[i][1], "reject_reason": dup.reason, "reject_detail": f"the dedup pass would drop it: repeats {dup.of}"})


def _text(value: Any) -> str:
    return repr(str(value)[:COMPLETION_CHARS])


def print_row(spec: JobSpec, index: int, row_id: str, samples: list[tuple[str, dict[str, Any]]]) -> None:
    first = samples[0][1] if samples else {}
    prompt = first.get("prompt")
    if prompt is None and first.get("messages"):
        prompt = first["messages"][-1]["content"]
    out.print(f"\nrow {index} ({row_id})\n  prompt: {prompt!r}", highlight=False, markup=False)
    for status, row in samples:
        sample = row["sample_index"]
        head = f"  sample {sample}: " if sample is not None else "  "
        if status == "error":
            at = f" at stage {row['at_stage']}" if row.get("at_stage") else ""
            out.print(f"{head}error {row['error_code']}{at}: {row['error_message']}", highlight=False, markup=False)
        elif status == "rejected":
            out.print(f"{head}rejected ({row['reject_reason']}): {row['reject_detail']}", highlight=False, markup=False)
        else:
            out.print(f"{head}kept", highlight=False, markup=False)
        for stage in spec.stages or []:
            if stage.kind == "generate" and row.get(stage.name) is not None:
                out.print(f"    {stage.name}: {_text(row[stage.name])}", highlight=False, markup=False)
            elif stage.kind == "judge" and row.get(f"{stage.name}_score") is not None:
                out.print(f"    {stage.name}: score {row[f'{stage.name}_score']} ({row[f'{stage.name}_reason']})",
                          highlight=False, markup=False)
        if spec.stages is None and row.get("completion") is not None:
            out.print(f"    completion: {_text(row['completion'])}", highlight=False, markup=False)
        if row.get("judge_score") is not None:
            out.print(f"    judge: score {row['judge_score']} ({row['judge_reason']})", highlight=False, markup=False)


def print_estimate(spec: JobSpec, plan: Plan, shard: Shard, stats: ShardStats) -> None:
    e = estimate(plan.rows, spec.sampling.n, shard.rows, stats.prompt_tokens, stats.completion_tokens, stats.seconds)
    what = f"{e.rows:,} rows"
    if spec.targets is not None:
        from orchestrator.plan.rounds import Strata

        targeted = int(Strata.of(spec).targets.sum())
        what = (f"round 1's {e.rows:,} rows (the job targets {targeted:,} kept rows; later rounds add rows for "
                "strata short of their targets)")
    out.print(f"\nestimate for {what} × n = {spec.sampling.n}: about {e.prompt_tokens:,} prompt tokens and "
              f"{e.completion_tokens:,} completion tokens", highlight=False, markup=False)
    if stats.judge_prompt_tokens or stats.judge_completion_tokens:
        scale = e.rows / shard.rows
        out.print(f"  and for the judge about {round(stats.judge_prompt_tokens * scale):,} prompt and "
                  f"{round(stats.judge_completion_tokens * scale):,} completion tokens", highlight=False, markup=False)
    rate = stats.completion_tokens / stats.seconds if stats.seconds else 0.0
    out.print(f"time: about {duration(e.seconds)} on one engine at the {rate:,.0f} completion tokens/s this preview "
              f"measured. This is a one-engine estimate from {shard.rows} rows: a warm engine batching many rows "
              f"is faster, and {spec.resources.workers} worker(s) share the job.", highlight=False, markup=False)


def cmd_preview(args: argparse.Namespace) -> int:
    from orchestrator.plan.planner import row_id
    from orchestrator.run.preflight import check_spec
    from orchestrator.storage.memory import MemoryStore

    try:
        spec = load(args.spec, None)
        check_spec(spec, check_output=False)  # the output is never touched
        plan = preview_plan(spec, args.rows)
    except SpecError as e:
        return report_problems(args.spec, e)
    shard, store = plan.shard(0), MemoryStore()
    stats = asyncio.run(run_first_shard(spec, plan, shard, Engines(spec), store))
    out.print(f"preview of {spec.name} (job {plan.job_id}): its first {shard.rows} rows, generated here; "
              "nothing was written", highlight=False, markup=False)
    rows = outcomes(spec, plan, store)
    for i in shard.row_indexes().tolist():
        rid = row_id(plan.spec_hash, i)
        print_row(spec, i, rid, rows.get(rid, []))
    print_estimate(spec, plan, shard, stats)
    return EXIT_OK
