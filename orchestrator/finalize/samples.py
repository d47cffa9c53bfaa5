"""Example rows and per-seed-value tables for the quality report, gathered as the finalize pass reads shards.

A data scientist reads rows before numbers: the best and the worst judged rows with the judge's
reasons, rejected rows with why, duplicate pairs side by side. Each list is bounded
(`REPORT_EXAMPLES` rows, texts cut at `REPORT_EXAMPLE_CHARS`) and chosen deterministically (by
score, then by the hash of the row id, the key of the report's diversity sample), so memory stays
flat and the same job gives the same report. Per seed value, the table counts kept and rejected
rows, judge scores and lengths.
"""

from __future__ import annotations

import functools
import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestrator import defaults
from orchestrator.commit import layout
from orchestrator.commit.shards import ShardStats, read_parquet
from orchestrator.finalize.diversity import sample_key
from orchestrator.plan.planner import Plan, sample_id
from orchestrator.storage import Store


def sample_ids(table: pa.Table) -> list[str]:
    """`row_id/sample_index` of each row: what identifies a kept row (dedup, sampling, mixing, examples)."""
    return [sample_id(r, k) for r, k in zip(table.column("row_id").to_pylist(), table.column("sample_index").to_pylist(),
                                        strict=True)]


def sample_keys(table: pa.Table) -> np.ndarray:
    """The sample key (`diversity.sample_key`) of each row's id: the report's sampling order."""
    return np.fromiter((sample_key(i) for i in sample_ids(table)), dtype=np.uint64, count=table.num_rows)


def _cut(text: str | None, limit: int = defaults.REPORT_EXAMPLE_CHARS) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit:,} more characters]"


def asked(row: dict[str, Any]) -> str:
    """What the row's prompt asked: the prompt text, or the chat's last user turn."""
    if row.get("prompt") is not None:
        return str(row["prompt"])
    users = [m["content"] for m in row.get("messages") or [] if m.get("role") == "user"]
    return users[-1] if users else ""


def example(row: dict[str, Any], sid: str, **extra: Any) -> dict[str, Any]:
    """The JSON-ready form of a row shown in the report, its texts cut."""
    return {"row_id": sid, "prompt": _cut(asked(row)), "completion": _cut(row.get("completion")),
            "finish_reason": row.get("finish_reason"), **extra}


class Lowest:
    """The `k` items with the smallest keys seen so far (ties: the first seen)."""

    def __init__(self, k: int = defaults.REPORT_EXAMPLES) -> None:
        self.k = k
        self._heap: list[tuple[Any, int, dict[str, Any]]] = []  # (negated key, -order, item): root is the largest
        self._seen = 0

    def add(self, key: tuple[int, ...], make: Callable[[], dict[str, Any]]) -> None:
        """Offer an item: `make()` builds it only when it is kept (texts are cut only for kept items)."""
        self._seen += 1
        entry = (tuple(-k for k in key), -self._seen)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, (*entry, make()))
        elif entry > self._heap[0][:2]:
            heapq.heapreplace(self._heap, (*entry, make()))

    def items(self) -> list[dict[str, Any]]:
        return [item for *_, item in sorted(self._heap, key=lambda e: (e[0], e[1]), reverse=True)]


@dataclass
class ValueStats:
    """One seed value's rows: kept and rejected, judge scores, lengths of the kept."""

    kept: int = 0
    rejected: int = 0
    judged: int = 0
    score_sum: int = 0
    chars: int = 0
    tokens: int = 0

    def row(self) -> dict[str, Any]:
        generated = self.kept + self.rejected
        return {"kept": self.kept, "rejected": self.rejected,
                "rejection_rate": self.rejected / generated if generated else None,
                "judge_mean": self.score_sum / self.judged if self.judged else None,
                "mean_chars": self.chars / self.kept if self.kept else None,
                "mean_tokens": self.tokens / self.kept if self.kept else None}


def _by_value(table: pa.Table, name: str) -> list[dict[str, Any]]:
    """Per value of column `name`: rows, completion characters and tokens, judged rows and their score sum."""
    columns = {name: table.column(name), "chars": pc.utf8_length(pc.fill_null(table.column("completion"), "")),
               "tokens": pc.fill_null(table.column("completion_tokens"), 0)}
    aggregates: list[tuple[Any, str]] = [([], "count_all"), ("chars", "sum"), ("tokens", "sum")]
    if "judge_score" in table.column_names:
        columns["score"] = table.column("judge_score").cast(pa.int64())
        aggregates += [("score", "count"), ("score", "sum")]
    return pa.table(columns).group_by(name).aggregate(aggregates).to_pylist()


def _finish_reasons(table: pa.Table) -> Counter[str]:
    return Counter({str(c["values"]): c["counts"] for c in table.column("finish_reason").value_counts().to_pylist()})


@dataclass
class Examples:
    """What the report shows of the rows, fed every kept and every rejected table once.

    Each `add_*` takes the table and its rows' sample keys (`diversity.sample_key` of `row_id/sample_index`).
    """

    variables: list[str]
    best: Lowest = field(default_factory=Lowest)
    worst: Lowest = field(default_factory=Lowest)
    rejected: dict[str, Lowest] = field(default_factory=dict)
    duplicates: Lowest = field(default_factory=Lowest)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    values: dict[str, dict[Any, ValueStats]] = field(default_factory=dict)

    def _offer(self, low: Lowest, table: pa.Table, keys: np.ndarray, order: np.ndarray, score: np.ndarray | None,
               **extra: Any) -> None:
        """Offer the table's first `low.k` rows in `order` (their own key: score then sample key)."""
        picked = order[: low.k]
        for i, row in zip(picked.tolist(), table.take(pa.array(picked, pa.int64())).to_pylist(), strict=True):
            sid = sample_id(row['row_id'], row['sample_index'])
            fields = {"score": row["judge_score"], "reason": row["judge_reason"]} if score is not None else {}
            fields.update({k: row.get(v) for k, v in extra.items()})
            head = (int(score[i]),) if score is not None else ()
            low.add((*head, int(keys[i])), functools.partial(example, row, sid, **fields))

    def _judged(self, table: pa.Table, keys: np.ndarray, kept: bool) -> None:
        """Offer the judged rows: the best among kept rows, the worst among all (why rows were rejected)."""
        if "judge_score" not in table.column_names:
            return
        column = table.column("judge_score")
        judged = np.flatnonzero(pc.is_valid(column).to_numpy(zero_copy_only=False))
        scores = pc.fill_null(column.cast(pa.int64()), 0).to_numpy()
        s, k = scores[judged], keys[judged]
        if kept:
            self._offer(self.best, table, keys, judged[np.lexsort((k, -s))], -scores)
        self._offer(self.worst, table, keys, judged[np.lexsort((k, s))], scores)

    def _value_stats(self, table: pa.Table, kept: bool) -> None:
        for name in self.variables:
            stats = self.values.setdefault(name, {})
            for g in _by_value(table, name):
                v = stats.setdefault(g[name], ValueStats())
                if kept:
                    v.kept += g["count_all"]
                    v.chars += g["chars_sum"] or 0
                    v.tokens += g["tokens_sum"] or 0
                else:
                    v.rejected += g["count_all"]
                v.judged += g.get("score_count") or 0
                v.score_sum += g.get("score_sum") or 0

    def add_kept(self, table: pa.Table, keys: np.ndarray) -> None:
        self.finish_reasons.update(_finish_reasons(table))
        self._judged(table, keys, kept=True)
        self._value_stats(table, kept=True)

    def add_rejected(self, table: pa.Table, keys: np.ndarray) -> None:
        """Rows of a `rejected/` file: filter and judge rejects, or duplicates."""
        self.finish_reasons.update(_finish_reasons(table))
        self._judged(table, keys, kept=False)
        self._value_stats(table, kept=False)
        reasons = table.column("reject_reason").to_numpy(zero_copy_only=False)
        for reason in sorted({str(r) for r in reasons}):
            rows = np.flatnonzero(reasons == reason)
            low = self.duplicates if reason.endswith("_duplicate") else self.rejected.setdefault(
                reason, Lowest(defaults.REPORT_REJECTED_EXAMPLES))
            self._offer(low, table, keys, rows[np.argsort(keys[rows], kind="stable")], None,
                        reason="reject_reason", detail="reject_detail")

    def duplicate_ids(self) -> list[str]:
        """The ids of the rows the sampled duplicates repeat (`reject_detail` is "duplicate of ID")."""
        return [d["detail"].removeprefix("duplicate of ") for d in self.duplicates.items() if d.get("detail")]

    def report(self, originals: dict[str, str]) -> dict[str, Any]:
        """JSON-ready: the examples, duplicate pairs (with the original's text when found), finish reasons, values."""
        pairs = []
        for d in self.duplicates.items():
            oid = (d.get("detail") or "").removeprefix("duplicate of ")
            pairs.append({**d, "original_id": oid, "original": _cut(originals[oid]) if oid in originals else None})
        return {"best": self.best.items(), "worst": self.worst.items(),
                "rejected": {reason: low.items() for reason, low in sorted(self.rejected.items())},
                "duplicates": pairs, "finish_reasons": dict(self.finish_reasons.most_common()),
                "values": {name: [{"value": v, **s.row()} for v, s in stats.items()]
                           for name, stats in self.values.items()}}


def scan_rejected(store: Store, plan: Plan, shards: list[ShardStats], duplicates: set[int], examples: Examples,
                  surplus: set[int] | frozenset[int] = frozenset()) -> None:
    """Feed `examples` every `rejected/` file: a shard's filter and judge rejects, its dedup duplicates
    and its rows over target."""
    n = plan.of
    for s in shards:
        keys = [layout.rejected_key(s.index, n)] if s.rows_rejected else []
        keys += [layout.rejected_key(s.index, n, "duplicates")] if s.index in duplicates else []
        keys += [layout.rejected_key(s.index, n, "over_target")] if s.index in surplus else []
        for key in keys:
            table = read_parquet(store, key)
            examples.add_rejected(table, sample_keys(table))


def original_texts(store: Store, plan: Plan, duplicates: set[int], ids: list[str]) -> dict[str, str]:
    """The completions of the rows with these ids (`row_id/sample_index`), from their shards' `data/` files, or
    their `rejected/duplicates-*` file (a near duplicate may repeat a row that was itself dropped).

    A row id ends in the row's index, so each id's shard is known: only those shards are read.
    """
    wanted: dict[int, set[str]] = {}
    for sid in ids:
        index = int(sid.split("/")[0].rsplit("-", 1)[1])
        wanted.setdefault(plan.shard_of(index), set()).add(sid)
    found: dict[str, str] = {}
    columns = ["row_id", "sample_index", "completion"]
    for shard, sids in sorted(wanted.items()):
        keys = [layout.data_key(shard, plan.of)]
        keys += [layout.rejected_key(shard, plan.of, "duplicates")] if shard in duplicates else []
        for key in keys:
            table = read_parquet(store, key, columns)
            for sid, text in zip(sample_ids(table), table.column("completion").to_pylist(), strict=True):
                if sid in sids:
                    found[sid] = text or ""
    return found
