"""Finalize: gather every shard's stats and write the manifest, the job's commit point."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from orchestrator import layout
from orchestrator.commit import ShardStats, recover_shard
from orchestrator.planner import Plan
from orchestrator.spec import JobSpec
from orchestrator.storage import Store


def build_manifest(spec: JobSpec, plan: Plan, shards: list[ShardStats], started_at: float) -> dict[str, Any]:
    n = plan.num_shards
    entries = [{**asdict(s), "path": layout.data_key(s.index, n),
                "errors_path": layout.errors_key(s.index, n) if s.rows_failed else None} for s in shards]
    totals = {k: sum(getattr(s, k) for s in shards)
              for k in ("rows_ok", "rows_failed", "prompt_tokens", "completion_tokens", "bytes")}
    return {
        "format": 1,
        "job_id": plan.job_id,
        "name": spec.name,
        "spec_hash": plan.spec_hash,
        "model": spec.model.name,
        "model_revisions": sorted({s.model_revision for s in shards}),
        "input_rows": plan.total_rows,
        "num_shards": n,
        **totals,
        "generation_seconds": round(sum(s.seconds for s in shards), 3),
        "started_at": started_at,
        "finished_at": time.time(),
        "shards": entries,
    }


def finalize(store: Store, spec: JobSpec, plan: Plan, known: dict[int, ShardStats],
             started_at: float) -> dict[str, Any]:
    """Write `_manifest.json` (once) and `_SUCCESS`; return the manifest that is committed."""
    shards = [known.get(i) or recover_shard(store, i, plan.num_shards) for i in range(plan.num_shards)]
    manifest = build_manifest(spec, plan, shards, started_at)
    if not store.put_if_absent(layout.MANIFEST, json.dumps(manifest, indent=1).encode()):
        manifest = json.loads(store.get(layout.MANIFEST))
    store.put(layout.SUCCESS, b"")
    return manifest
