"""The `mixed/` split: kept synthetic rows and real rows interleaved at an exact ratio.

Real rows are taken in file order; position i of the split is real when the running count of real
rows must grow there (an even spread, so any prefix of the split has close to the ratio: a reader
that stops early still trains on the right mixture). When the real file is too short for every kept
synthetic row, the synthetic rows used are those with the smallest hash of their id (the sampling of
the quality report), so they are a uniform sample of the kept rows, not the first shards (which, in
product order, hold only the first seed values); they appear in shard order. The seed values of the
synthetic rows used are counted, so the report can check that the mix kept the kept rows' mix.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from orchestrator.commit import layout, schemas
from orchestrator.commit.shards import parquet_bytes, read_parquet
from orchestrator.finalize.passes import input_records, input_texts, skipped_lines
from orchestrator.plan.planner import sample_id
from orchestrator.spec.quality import Mix, reference_text
from orchestrator.storage import Store

SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),  # real | synthetic
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("prompt", pa.string()),
    pa.field("messages", schemas.MESSAGES),
    pa.field("completion", pa.string()),
    pa.field("lineage", schemas.LINEAGE),  # null for real rows
])


def mix_counts(synthetic: int, real_available: int, ratio: float) -> tuple[int, int]:
    """(synthetic, real) rows so that real / (real + synthetic) is `ratio`, as exactly as integers allow.

    All synthetic rows are used when the real file has enough rows; otherwise all real rows are, and
    the synthetic rows are cut to match.
    """
    real = round(synthetic * ratio / (1 - ratio))
    if real <= real_available:
        return synthetic, real
    return min(synthetic, round(real_available * (1 - ratio) / ratio)), real_available


def is_real(position: int, total: int, real: int) -> bool:
    """Whether `position` of the split holds a real row: real rows spread evenly over the split."""
    return (position + 1) * real // total > position * real // total


def _real_rows(uri: str) -> Iterator[dict[str, Any]]:
    for number, record in input_records(uri):
        text = reference_text(record)
        if text is not None:
            prompt = record.get("prompt")
            yield {"source": "real", "row_id": f"real-{number}", "prompt": prompt if isinstance(prompt, str) else None,
                   "messages": None, "completion": text, "lineage": None}


def chosen_synthetic(keys: np.ndarray, wanted: int) -> np.ndarray | None:
    """Which kept rows (in shard order, by their sample keys) the split uses: the `wanted` smallest; None for all."""
    if wanted >= len(keys):
        return None
    mask = np.zeros(len(keys), dtype=bool)
    mask[np.argsort(keys, kind="stable")[:wanted]] = True
    return mask


def _synthetic_rows(store: Store, data_keys: list[str], chosen: np.ndarray | None, variables: Sequence[str],
                    seeds: dict[str, Counter[Any]]) -> Iterator[dict[str, Any]]:
    """The chosen kept rows in shard order; their seed values counted into `seeds` as they go."""
    columns = ["row_id", "sample_index", "prompt", "messages", "completion", "lineage", *variables]
    position = 0
    for key in data_keys:
        for r in read_parquet(store, key, columns).to_pylist():
            position += 1
            if chosen is not None and not chosen[position - 1]:
                continue
            for name in variables:
                seeds.setdefault(name, Counter())[r[name]] += 1
            yield {"source": "synthetic", "row_id": sample_id(r['row_id'], r['sample_index']), "prompt": r["prompt"],
                   "messages": r["messages"], "completion": r["completion"], "lineage": r["lineage"]}


def write_mixed(store: Store, mix: Mix, data_keys: list[str], keys: np.ndarray, rows_per_part: int,
                variables: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, Counter[Any]]]:
    """Write `mixed/` (each part exactly once); what the manifest says of it, and the synthetic rows' seed counts.

    `keys` are the sample keys of the kept rows in `data_keys`, in order (`KeptRows.keys`).

    With nothing to mix (no kept rows, or no real text), nothing is written and `parts` is empty.
    """
    skipped: list[str] = []
    available = sum(1 for _ in input_texts(mix.uri, skipped))
    kept = len(keys)
    n_synth, n_real = mix_counts(kept, available, mix.ratio)
    total = n_synth + n_real
    parts = math.ceil(total / rows_per_part)
    seeds: dict[str, Counter[Any]] = {name: Counter() for name in variables}
    synthetic = _synthetic_rows(store, data_keys, chosen_synthetic(keys, n_synth), variables, seeds)
    real = _real_rows(mix.uri)
    buffer: list[dict[str, Any]] = []
    part = 0
    for position in range(total):
        buffer.append(next(real) if is_real(position, total, n_real) else next(synthetic))
        if len(buffer) == rows_per_part or position == total - 1:
            table = pa.Table.from_pylist(buffer, schema=SCHEMA)
            store.put_if_absent(layout.mixed_key(part, parts), parquet_bytes(table))
            part, buffer = part + 1, []
    out = {"uri": mix.uri, "ratio": mix.ratio, "rows": total, "real_rows": n_real, "synthetic_rows": n_synth,
           "parts": [layout.mixed_key(i, parts) for i in range(parts)], **skipped_lines(skipped)}
    if not total:
        out["empty"] = "no kept synthetic rows" if not kept else f"no real text records in {mix.uri}"
    return out, seeds
