"""Kept rows per stratum of a targets job, read from its committed shards: what the next round needs,
which rows are over target at the end, and the report's per-stratum table.

A row counts as kept when its shard kept it (filters, judge) and dedup, run over every shard
committed so far in shard order, keeps it too. Of a stratum's kept rows the first `target` by row
id (row index, then sample index: earlier rounds first) stay in `data/`; the rest are `over_target`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from orchestrator.commit import layout, schemas
from orchestrator.commit.shards import read_parquet
from orchestrator.finalize.dedup import Deduper, Duplicate
from orchestrator.finalize.samples import sample_ids
from orchestrator.plan.planner import Plan
from orchestrator.plan.rounds import Standing, Strata, next_round, why_short
from orchestrator.spec.job import JobSpec
from orchestrator.storage import Store

READ_BATCH = 4096
SAMPLE_BITS = 16  # a row's order key: its index, then its sample index below it


def dedup_verdicts(store: Store, spec: JobSpec, plan: Plan) -> list[list[Duplicate | None]]:
    """Dedup's verdict on every row of every staged shard, in shard order (all None without dedup)."""
    n = plan.of
    if spec.dedup is None:
        return [[None] * read_parquet(store, layout.commit_key(i, n, True), ["row_id"]).num_rows
                for i in range(plan.num_shards)]
    column, deduper = spec.dedup.column, Deduper(spec.dedup)
    for i in range(plan.num_shards):
        texts = read_parquet(store, layout.commit_key(i, n, True), [column]).column(column).to_pylist()
        for start in range(0, len(texts), READ_BATCH):
            deduper.scan([t or "" for t in texts[start:start + READ_BATCH]])
    deduper.close_scan()
    out = []
    for i in range(plan.num_shards):
        table = read_parquet(store, layout.commit_key(i, n, True), [column, "row_id", "sample_index"])
        texts, ids = table.column(column).to_pylist(), sample_ids(table)
        verdicts: list[Duplicate | None] = []
        for start in range(0, len(texts), READ_BATCH):
            verdicts += deduper.decide([t or "" for t in texts[start:start + READ_BATCH]], ids[start:start + READ_BATCH])
        out.append(verdicts)
    return out


def stratum_ids(table: pa.Table, spec: JobSpec, strata: Strata) -> np.ndarray:
    """Each row's stratum id, from its seed columns as stored."""
    fields = {f.name: f for f in schemas.variable_fields(spec)}
    lookup = {tuple(schemas.column_value(fields[n], v) for n, v in zip(strata.by, s.values, strict=True)): i
              for i, s in enumerate(strata.items)}
    columns = [table.column(n).to_pylist() for n in strata.by]
    return np.fromiter((lookup[row] for row in zip(*columns, strict=True)), dtype=np.int64, count=table.num_rows)


def order_keys(table: pa.Table) -> np.ndarray:
    """Each row's place in "first by row id": its row index, then its sample index."""
    index = np.array([int(r.rsplit("-", 1)[1]) for r in table.column("row_id").to_pylist()], dtype=np.int64)
    return (index << SAMPLE_BITS) + table.column("sample_index").to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass
class KeptStrata:
    """Per shard: the stratum and order key of each row dedup keeps (None for rows it drops)."""

    ids: list[np.ndarray]
    keys: list[np.ndarray]
    kept: list[np.ndarray]  # bool per row of the shard: kept by dedup

    def counts(self, strata: int) -> np.ndarray:
        return sum((np.bincount(i[k], minlength=strata) for i, k in zip(self.ids, self.kept, strict=True)),
                   np.zeros(strata, dtype=np.int64))

    def over_target(self, targets: np.ndarray) -> list[np.ndarray]:
        """Per shard: the rows dedup keeps beyond their stratum's first `target` by row id."""
        ids = np.concatenate([i[k] for i, k in zip(self.ids, self.kept, strict=True)] or [np.zeros(0, np.int64)])
        keys = np.concatenate([o[k] for o, k in zip(self.keys, self.kept, strict=True)] or [np.zeros(0, np.int64)])
        cutoff = np.full(len(targets), np.iinfo(np.int64).max)
        for s in range(len(targets)):
            mine = np.sort(keys[ids == s])
            if len(mine) > targets[s]:
                cutoff[s] = mine[targets[s] - 1] if targets[s] else -1
        return [k & (o > cutoff[i]) for i, o, k in zip(self.ids, self.keys, self.kept, strict=True)]


def kept_strata(store: Store, spec: JobSpec, plan: Plan, strata: Strata,
                verdicts: list[list[Duplicate | None]]) -> KeptStrata:
    out = KeptStrata([], [], [])
    for i, shard_verdicts in enumerate(verdicts):
        table = read_parquet(store, layout.commit_key(i, plan.of, True), ["row_id", "sample_index", *strata.by])
        out.ids.append(stratum_ids(table, spec, strata))
        out.keys.append(order_keys(table))
        out.kept.append(np.array([v is None for v in shard_verdicts], dtype=bool))
    return out


def standing(spec: JobSpec, plan: Plan, strata: Strata, kept: KeptStrata) -> Standing:
    """Each stratum's generated rows (from the plan) and kept rows (`kept`, read from its shards)."""
    assert spec.prompts.template is not None
    return Standing(strata.counts(spec.prompts.template, plan), kept.counts(len(strata.items)))


def targets_report(spec: JobSpec, plan: Plan, strata: Strata, state: Standing) -> dict[str, Any]:
    """The report's and manifest's targets section: per stratum, what it cost and whether it was met."""
    assert spec.targets is not None
    assert spec.prompts.template is not None
    n, per_round = spec.sampling.n, strata.per_round(spec.prompts.template, plan)
    rows = []
    for s, stratum in enumerate(strata.items):
        generated, kept = int(state.generated[s]), int(state.kept[s])
        why = why_short(state, s, n, plan, spec, strata)
        rows.append({"stratum": stratum.label, "values": list(stratum.values), "planned_share": stratum.share,
                     "target": stratum.target, "generated": generated * n, "kept": min(kept, stratum.target),
                     "over_target": max(0, kept - stratum.target),
                     "acceptance": kept / (generated * n) if generated else None,
                     "rounds": sum(1 for c in per_round if c[s]), "met": why is None, "why_not": why})
    unmet = [r["stratum"] for r in rows if not r["met"]]
    minimum = sum(r["target"] / r["acceptance"] for r in rows if r["acceptance"])
    return {"by": list(strata.by), "rounds": plan.rounds_done, "max_rounds": spec.targets.max_rounds,
            "rows_generated": plan.rows * n, "kept": sum(r["kept"] for r in rows),
            "targeted": int(strata.targets.sum()),
            "cost_ratio": plan.rows * n / minimum if minimum and not unmet else None,
            "strata": rows, "unmet": unmet, "flagged": bool(unmet)}


def advance(store: Store, spec: JobSpec, plan: Plan) -> Plan | None:
    """With every shard of `plan` committed: the plan with the next round, or None when none is due
    (a plan with no rows yet: its first round, drawn from the targets alone)."""
    strata = Strata.of(spec)
    if not plan.rows:
        return next_round(spec, plan, strata, None)
    kept = kept_strata(store, spec, plan, strata, dedup_verdicts(store, spec, plan))
    return next_round(spec, plan, strata, standing(spec, plan, strata, kept))


def replay(store: Store, spec: JobSpec, plan: Plan, committed: set[int]) -> Plan:
    """The rounds an earlier run of the job planned, planned again from its committed shards: each next
    round once the rounds before it are all committed (a targets job's resume)."""
    while spec.targets is not None and (not plan.rows or all(i in committed for i in range(plan.num_shards))):
        further = advance(store, spec, plan)
        if further is None:
            break
        plan = further
    return plan
