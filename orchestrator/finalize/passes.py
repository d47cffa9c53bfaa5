"""The finalize pass over committed shards: job-wide dedup, then the quality report of the kept rows.

With dedup, shards commit to `_generated/`; pass 1 scans every completion, pass 2 writes each
shard's kept rows to `data/` and its duplicates to `rejected/` (both exactly once: conditional
writes of deterministic content). Without dedup, the committed `data/` files are read once.
Either way the kept rows feed the report: a bounded sample for diversity, all lengths, seed
value counts for bias drift. Nothing here holds more than one shard's text at a time.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator import defaults
from orchestrator.commit import layout, schemas
from orchestrator.commit.shards import FOOTER_KEY, ShardStats, parquet_bytes, read_parquet
from orchestrator.finalize import diversity, drift
from orchestrator.finalize.dedup import Duplicate
from orchestrator.finalize.quality_report import Rows
from orchestrator.finalize.samples import Examples, sample_keys
from orchestrator.finalize.stage_quality import StageMeasures
from orchestrator.plan import draws
from orchestrator.plan.planner import Plan, template_variables
from orchestrator.plan.rounds import Strata
from orchestrator.spec.job import JobSpec
from orchestrator.spec.quality import Quality, reference_text
from orchestrator.storage import Store
from orchestrator.storage.reader import open_input

READ_BATCH = 4096


@dataclass
class ShardResult:
    """What the finalize pass did to one shard: the final data file and the duplicates it dropped."""

    rows_ok: int
    bytes: int
    sha256: str
    duplicates: dict[str, int] = field(default_factory=dict)
    over_target: int = 0  # kept rows beyond their stratum's target (targets), in rejected/over_target-*


@dataclass
class KeptRows:
    """Running measurements of the kept rows, bounded in memory."""

    sample: diversity.BottomK
    examples: Examples
    chars: list[np.ndarray] = field(default_factory=list)
    tokens: list[np.ndarray] = field(default_factory=list)
    keys: list[np.ndarray] = field(default_factory=list)  # each row's sample key, in shard order (mixing)
    seeds: dict[str, Counter[Any]] = field(default_factory=dict)
    stages: StageMeasures | None = None  # with stages: the same per stage
    column: str = "completion"  # the text the diversity sample reads (quality.column)

    def add(self, table: pa.Table) -> None:
        texts = table.column("completion").to_pylist()
        keys = sample_keys(table)
        self.keys.append(keys)
        if self.stages is not None:
            self.stages.add(table, keys)
        sampled = texts if self.column == "completion" else table.column(self.column).to_pylist()
        for key, text in zip(keys.tolist(), sampled, strict=True):
            self.sample.add(key, text or "")
        self.chars.append(np.array([len(t or "") for t in texts], dtype=np.int64))
        self.tokens.append(table.column("completion_tokens").to_numpy(zero_copy_only=False).astype(np.int64))
        for name in self.examples.variables:
            counts = self.seeds.setdefault(name, Counter())
            for item in table.column(name).value_counts().to_pylist():
                counts[item["values"]] += item["counts"]
        self.examples.add_kept(table, keys)


def _write_once(store: Store, key: str, blob: bytes) -> tuple[int, str]:
    """Write `blob` unless a crashed earlier pass did; the size and hash of what is stored."""
    if not store.put_if_absent(key, blob):
        blob = store.get(key)
    return len(blob), hashlib.sha256(blob).hexdigest()


def _dropped(table: pa.Table, spec: JobSpec, rows: list[int], reasons: list[str], details: list[str]) -> bytes:
    """Rows the finalize pass drops, as a `rejected/` file."""
    out = table.take(rows).append_column("reject_reason", pa.array(reasons, pa.string())).append_column(
        "reject_detail", pa.array(details, pa.string()))
    if spec.stages is not None:  # dropped after every stage
        out = out.append_column("at_stage", pa.nulls(out.num_rows, pa.string()))
    return parquet_bytes(out.cast(schemas.rejected_schema(spec)))


def dedup_shards(store: Store, spec: JobSpec, plan: Plan, kept: KeptRows, verdicts: list[list[Duplicate | None]],
                 over: list[np.ndarray] | None = None) -> dict[int, ShardResult]:
    """Write each staged shard's kept rows to `data/`, its duplicates (dedup's `verdicts`) to
    `rejected/duplicates-*` and, with targets, the rows `over` target to `rejected/over_target-*`."""
    n = plan.of
    results = {}
    for i in range(plan.num_shards):
        table = read_parquet(store, layout.commit_key(i, n, staged=True))
        table = table.replace_schema_metadata({k: v for k, v in (table.schema.metadata or {}).items()
                                               if k != FOOTER_KEY})
        dropped = [(j, v) for j, v in enumerate(verdicts[i]) if v is not None]
        surplus = np.flatnonzero(over[i]).tolist() if over is not None else []
        keep = np.array([v is None for v in verdicts[i]], dtype=bool)
        keep[surplus] = False
        data = table.filter(pa.array(keep, pa.bool_()))
        if dropped:
            _write_once(store, layout.rejected_key(i, n, "duplicates"), _dropped(
                table, spec, [j for j, _ in dropped], [v.reason for _, v in dropped],
                [f"duplicate of {v.of}" for _, v in dropped]))
        if surplus:
            _write_once(store, layout.rejected_key(i, n, "over_target"), _dropped(
                table, spec, surplus, ["over_target"] * len(surplus),
                ["its stratum had its target of kept rows from rows with lower ids"] * len(surplus)))
        size, sha = _write_once(store, layout.data_key(i, n), parquet_bytes(data))
        kept.add(data)
        results[i] = ShardResult(data.num_rows, size, sha, dict(Counter(v.reason for _, v in dropped)), len(surplus))
    return results


def measure_shards(store: Store, spec: JobSpec, plan: Plan, kept: KeptRows) -> None:
    """Without dedup: read each committed data file once for the report."""
    for i in range(plan.num_shards):
        kept.add(read_parquet(store, layout.data_key(i, plan.of)))


def stratified_variables(spec: JobSpec) -> list[str]:
    """The seed variables whose values the drift check compares: listed and categorical sampled ones
    (not continuous draws, large integer ranges or `choice` lists)."""
    source = spec.prompts.template
    if source is None:
        return []
    return sorted([*source.listed(), *(n for n, s in source.sampled().items() if s.categories() is not None)])


def planned_seed_counts(spec: JobSpec, plan: Plan) -> dict[str, Counter[Any]]:
    """How often each seed value was planned (times sampling.n), as stored in the seed columns. With
    targets, the `by` variables' planned mix is the targets' (what the kept rows are cut to), the other
    variables' that of every round's rows."""
    source = spec.prompts.template
    if source is None or not source.seeds:
        return {}
    fields = {f.name: f for f in schemas.variable_fields(spec)}
    n = spec.sampling.n
    counts: dict[str, Counter[Any]] = {name: Counter() for name in stratified_variables(spec)}
    if source.sampled():  # the rows' draws, counted in bounded chunks
        rounds = (draws.columns(source, r.indexes) for r in plan.rounds)
        for chunk in itertools.chain(draws.chunks(source, plan.total_rows), rounds):
            for name in counts:
                for v, c in chunk[name].counts().items():
                    counts[name][schemas.column_value(fields[name], v)] += c * n
        if spec.targets is not None:
            strata = Strata.of(spec)
            for j, name in enumerate(strata.by):
                counts[name] = Counter()
                for stratum in strata.items:
                    counts[name][schemas.column_value(fields[name], stratum.values[j])] += stratum.target
        return counts
    if source.sample is None:  # the full product: each listed value appears product/len times
        size = source.product_size()
        for name, values in source.seeds.items():
            for v in values:
                counts[name][schemas.column_value(fields[name], v)] += size // len(values) * n
        return counts
    for index in range(plan.total_rows):
        for name, v in template_variables(source, index).items():
            counts[name][schemas.column_value(fields[name], v)] += n
    return counts


def input_records(uri: str, skipped: list[str] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(record number, record) of every record of a JSONL or Parquet file of real data. A JSONL line
    that is not UTF-8 JSON of an object is passed over (its number too), and said in `skipped`."""
    with open_input(uri) as f:
        if uri.endswith(".parquet"):
            batches = pq.ParquetFile(f).iter_batches(batch_size=READ_BATCH)
            yield from enumerate(r for b in batches for r in b.to_pylist())
            return
        number = 0
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                why = None if isinstance(record, dict) else "not a JSON object"
            except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
                why = "not valid UTF-8" if isinstance(e, UnicodeDecodeError) else f"not valid JSON ({e})"
            if why is None:
                yield number, record
            elif skipped is not None:
                skipped.append(f"line {line_number}: {why}")
            number += 1


def input_texts(uri: str, skipped: list[str] | None = None) -> Iterator[tuple[int, str]]:
    """(record number, text) of the records of real data that have a text."""
    for number, record in input_records(uri, skipped):
        text = reference_text(record)
        if text is not None:
            yield number, text


def skipped_lines(skipped: list[str]) -> dict[str, Any]:
    """What a manifest says of the lines of a real-data file that were passed over."""
    return {"skipped_lines": len(skipped), "skipped_sample": skipped[: defaults.TOP_ERRORS]}


def reference_sample(uri: str, sample_rows: int, skipped: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """A `BottomK` sample of the real texts (the synthetic sample's size), and every real text's length in chars."""
    sample, lengths = diversity.BottomK(sample_rows), []
    for number, text in input_texts(uri, skipped):
        sample.add(diversity.sample_key(f"reference/{number}"), text)
        lengths.append(len(text))
    return sample.texts(), np.asarray(lengths, dtype=np.int64)


def _totals(shards: list[ShardStats], results: dict[int, ShardResult]) -> dict[str, Any]:
    rejected: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    scores: Counter[str] = Counter()
    for s in shards:
        rejected.update(s.rejected)
        failed.update(s.failed)
        scores.update(s.judge_scores)
    for r in results.values():
        rejected.update(r.duplicates)
        if r.over_target:
            rejected["over_target"] += r.over_target
    return {"rejected": dict(rejected), "failed": dict(failed), "scores": scores}


def top_errors(shards: list[ShardStats], k: int = defaults.TOP_ERRORS) -> list[dict[str, Any]]:
    """The most frequent error codes, each with how many rows and the message of its first row."""
    counts: Counter[str] = Counter()
    samples: dict[str, str] = {}
    for s in shards:
        counts.update(s.failed)
        for code, message in s.error_samples.items():
            samples.setdefault(code, message)
    return [{"code": code, "rows": n, "sample": samples.get(code, "")} for code, n in counts.most_common(k)]


def failure_flag(rows: Rows) -> str | None:
    """A warning when no row was kept for errors, or more than the spec's share of rows failed."""
    failed, total = rows.failed, rows.failed + rows.generated
    if not failed or (rows.kept and failed / total <= rows.max_failed_share):
        return None
    top = "; ".join(f"{e.code} ({e.rows}): {e.sample}" for e in rows.top_errors)
    lead = "no row succeeded" if failed == total else f"{failed} of {total} rows ({failed / total:.0%}) failed"
    return f"{lead}; see errors/. Most frequent: {top}"


def mixed_drift(spec: JobSpec, kept: KeptRows, mixed_seeds: dict[str, Counter[Any]]) -> dict[str, Any]:
    """Did the `mixed/` split keep the seed mix of the kept rows? (Its synthetic rows against all kept rows.)"""
    q = spec.quality
    return drift.bias_drift(kept.seeds, mixed_seeds, q.drift_margin, q.drift_alpha)


def _reference(q: Quality, texts: list[str]) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """The synthetic sample against real data at the same sample size, and every real text's length."""
    if q.reference is None:
        return None, None
    skipped: list[str] = []
    ref_texts, lengths = reference_sample(q.reference, q.sample_rows, skipped)
    return {"uri": q.reference, "min_ratio": q.min_reference_ratio, **skipped_lines(skipped),
            **diversity.compare_samples(texts, ref_texts, q.min_reference_ratio)}, lengths


def _dedup(spec: JobSpec, shards: list[ShardStats], results: dict[int, ShardResult]) -> dict[str, Any] | None:
    if spec.dedup is None:
        return None
    exact, near = (sum(r.duplicates.get(k, 0) for r in results.values()) for k in ("exact_duplicate", "near_duplicate"))
    before = sum(s.rows_ok for s in shards)
    return {"exact_duplicates": exact, "near_duplicates": near, "rows_scanned": before,
            "rate": (exact + near) / before if before else 0.0, "near_threshold": spec.dedup.near_threshold}


def _judge(spec: JobSpec, totals: dict[str, Any]) -> dict[str, Any] | None:
    if spec.judge is None:
        return None
    scores = totals["scores"]
    judged = sum(scores.values())
    low, high = spec.judge.scale
    return {"scores": {str(k): scores.get(str(k), 0) for k in range(low, high + 1)}, "min_score": spec.judge.min_score,
            "mean": sum(int(k) * v for k, v in scores.items()) / judged if judged else None,
            "errors": totals["failed"].get("judge_error", 0)}


def _about(spec: JobSpec, plan: Plan, shards: list[ShardStats], started_at: float) -> dict[str, Any]:
    """The report's header: what ran (spec, model, sampling), when, and what it cost."""
    finished = time.time()
    completion = sum(s.completion_tokens for s in shards)
    tokens = {k: sum(getattr(s, k) for s in shards) for k in ("prompt_tokens", "completion_tokens",
                                                              "judge_prompt_tokens", "judge_cached_tokens",
                                                              "judge_completion_tokens")}
    wall = max(finished - started_at, 1e-9)
    return {"name": spec.name, "spec_hash": plan.spec_hash, "model": spec.model.name,
            "model_revisions": sorted({s.model_revision for s in shards}),
            "sampling": spec.sampling.model_dump(mode="json", exclude_none=True),
            "started_at": _iso(started_at), "finished_at": _iso(finished), "wall_seconds": round(wall, 3),
            "tokens": tokens, "completion_tokens_per_s": completion / wall,
            "generation_seconds": round(sum(s.seconds for s in shards), 3)}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _truncation(finish_reasons: dict[str, int], max_tokens: int) -> dict[str, Any]:
    rows = sum(finish_reasons.values())
    cut = finish_reasons.get("length", 0)
    share = cut / rows if rows else 0.0
    return {"rows": cut, "share": share, "max_tokens": max_tokens, "flagged": share > defaults.MAX_TRUNCATED_SHARE,
            "max_share": defaults.MAX_TRUNCATED_SHARE}


def build_report(spec: JobSpec, plan: Plan, shards: list[ShardStats], results: dict[int, ShardResult],
                 kept: KeptRows, originals: dict[str, str], started_at: float) -> dict[str, Any]:
    """The quality section of the manifest (and the data behind `quality_report.html`)."""
    q = spec.quality
    totals = _totals(shards, results)
    texts = kept.sample.texts()
    metrics = diversity.diversity_metrics(texts)
    generated = sum(s.rows_ok + s.rows_rejected for s in shards)
    reference, reference_chars = _reference(q, texts)
    lengths = {name: diversity.length_summary(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))
               for name, parts in (("completion_chars", kept.chars), ("completion_tokens", kept.tokens))}
    if reference_chars is not None:
        lengths["reference_chars"] = diversity.length_summary(reference_chars)
    examples = kept.examples.report(originals)
    per_stage = {} if kept.stages is None else {  # absent without stages
        "stages": kept.stages.report(), "diversity_column": q.column}
    return per_stage | {
        "job_id": plan.job_id,
        "about": _about(spec, plan, shards, started_at),
        "rows": {"input": plan.rows * spec.sampling.n, "generated": generated,
                 "kept": sum(len(c) for c in kept.chars), "failed": sum(s.rows_failed for s in shards),
                 "rejected": totals["rejected"], "top_errors": top_errors(shards),
                 "errors": top_errors(shards, k=len(totals["failed"])), "max_failed_share": q.max_failed_share},
        "diversity": metrics, "sample_rows": len(texts), "reference": reference, "dedup": _dedup(spec, shards, results),
        "lengths": lengths, "judge": _judge(spec, totals),
        "finish_reasons": examples.pop("finish_reasons"),
        "truncation": _truncation(kept.examples.finish_reasons, spec.sampling.max_tokens),
        "examples": examples,
        "drift": drift.bias_drift(planned_seed_counts(spec, plan), kept.seeds, q.drift_margin, q.drift_alpha),
    }
