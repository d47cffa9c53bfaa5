"""Finalize: dedup and measure the committed shards, write the report and the dataset card, then the manifest
(the commit point)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from orchestrator.commit import layout
from orchestrator.commit.shards import ShardStats, recover_shard
from orchestrator.finalize import diversity
from orchestrator.finalize.card import card
from orchestrator.finalize.manifest import Manifest, manifest_bytes, read_manifest
from orchestrator.finalize.mixing import write_mixed
from orchestrator.finalize.passes import (
    KeptRows,
    ShardResult,
    build_report,
    dedup_shards,
    measure_shards,
    mixed_drift,
    stratified_variables,
)
from orchestrator.finalize.report import render_report
from orchestrator.finalize.targets import dedup_verdicts, kept_strata, standing, targets_report
from orchestrator.finalize.samples import Examples, original_texts, scan_rejected
from orchestrator.finalize.stage_quality import StageMeasures
from orchestrator.plan.planner import Plan
from orchestrator.plan.rounds import Strata
from orchestrator.spec.job import JobSpec
from orchestrator.storage import Store


def _entry(s: ShardStats, n: int, result: ShardResult | None) -> dict[str, Any]:
    entry = {**asdict(s), "path": layout.data_key(s.index, n),
             "errors_path": layout.errors_key(s.index, n) if s.rows_failed else None,
             "rejected_paths": [layout.rejected_key(s.index, n)] if s.rows_rejected else []}
    if result is not None:  # dedup rewrote the shard: the entry describes data/, the commit stays staged
        entry.update(generated_path=layout.commit_key(s.index, n, staged=True), rows_ok=result.rows_ok,
                     bytes=result.bytes, sha256=result.sha256,
                     rows_rejected=s.rows_rejected + sum(result.duplicates.values()) + result.over_target,
                     rejected={**s.rejected, **result.duplicates,
                               **({"over_target": result.over_target} if result.over_target else {})})
        if result.duplicates:
            entry["rejected_paths"].append(layout.rejected_key(s.index, n, "duplicates"))
        if result.over_target:
            entry["rejected_paths"].append(layout.rejected_key(s.index, n, "over_target"))
    return entry


def build_manifest(spec: JobSpec, plan: Plan, shards: list[ShardStats], results: dict[int, ShardResult],
                   quality: dict[str, Any], mixed: dict[str, Any] | None, started_at: float) -> Manifest:
    entries = [_entry(s, plan.of, results.get(s.index)) for s in shards]
    totals = {k: sum(e[k] for e in entries) for k in ("rows_ok", "rows_failed", "rows_rejected", "prompt_tokens",
                                                        "completion_tokens", "judge_prompt_tokens",
                                                        "judge_cached_tokens", "judge_completion_tokens", "bytes")}
    return Manifest.model_validate({
        "format": 1,
        "job_id": plan.job_id,
        "name": spec.name,
        "spec_hash": plan.spec_hash,
        "model": spec.model.name,
        "model_revisions": sorted({s.model_revision for s in shards}),
        "input_rows": plan.rows,
        "num_shards": plan.num_shards,
        **totals,
        "rejected": quality["rows"]["rejected"],
        "failed": dict(sum((Counter(s.failed) for s in shards), Counter())),
        "top_errors": quality["rows"]["top_errors"],
        "generation_seconds": round(sum(s.seconds for s in shards), 3),
        "started_at": started_at,
        "finished_at": time.time(),
        "quality": quality,
        "report_path": layout.REPORT,
        "mixed": mixed,
        "shards": entries,
    })


def finalize(store: Store, spec: JobSpec, plan: Plan, known: Mapping[int, ShardStats],
             started_at: float) -> Manifest:
    """Run the quality pass, write the report, the dataset card, `_manifest.json` (once) and `_SUCCESS`."""
    if store.exists(layout.MANIFEST):
        return read_manifest(store)
    staged, n = spec.staged, plan.of
    shards = [known.get(i) or recover_shard(store, i, n, staged) for i in range(plan.num_shards)]
    variables = stratified_variables(spec)  # what the per-value tables and the drift check count
    kept = KeptRows(diversity.BottomK(spec.quality.sample_rows), Examples(variables),
                    stages=StageMeasures(spec) if spec.stages else None, column=spec.quality.column)
    results, targets = {}, None
    if staged:
        verdicts = dedup_verdicts(store, spec, plan)
        over = None
        if spec.targets is not None:
            strata = Strata.of(spec)
            by_stratum = kept_strata(store, spec, plan, strata, verdicts)
            over = by_stratum.over_target(strata.targets)
            targets = targets_report(spec, plan, strata, standing(spec, plan, strata, by_stratum))
        results = dedup_shards(store, spec, plan, kept, verdicts, over)
    else:
        measure_shards(store, spec, plan, kept)
    duplicated = {i for i, r in results.items() if r.duplicates}
    surplus = {i for i, r in results.items() if r.over_target}
    scan_rejected(store, plan, shards, duplicated, kept.examples, surplus)
    originals = original_texts(store, plan, duplicated, kept.examples.duplicate_ids())
    quality = build_report(spec, plan, shards, results, kept, originals, started_at)
    if targets is not None:
        quality["targets"] = targets
    mixed = None
    if spec.mix is not None:
        keys = np.concatenate(kept.keys) if kept.keys else np.zeros(0, dtype=np.uint64)
        mixed, seeds = write_mixed(store, spec.mix, [layout.data_key(i, n) for i in range(plan.num_shards)], keys,
                                   spec.output.rows_per_shard, variables)
        quality["mixed_drift"] = mixed_drift(spec, kept, seeds)
    manifest = build_manifest(spec, plan, shards, results, quality, mixed, started_at)
    store.put(layout.REPORT, render_report(manifest.quality).encode())
    store.put(layout.CARD, card(manifest, spec).encode())
    if not store.put_if_absent(layout.MANIFEST, manifest_bytes(manifest)):
        manifest = read_manifest(store)
    store.put(layout.SUCCESS, b"")
    return manifest
