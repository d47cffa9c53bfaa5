"""Commit a shard exactly once.

The data file is the shard's commit: one conditional write at its final name, carrying the shard's
error rows, rejected rows and statistics in its Parquet footer. Whatever else belongs to the shard
(its `errors/` and `rejected/` files, its `_shards/` record) is derived from that one object, so a
crash between writes loses nothing and a retry or zombie attempt can never overwrite or contradict
a commit. A job with dedup commits to `_generated/`; its finalize pass writes `data/`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.commit import layout
from orchestrator.storage import Store

FOOTER_KEY = b"synthfleet.shard"


@dataclass(frozen=True)
class ShardStats:
    """What the manifest says of one committed shard."""

    index: int
    attempt: int
    rows_ok: int
    rows_failed: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    model_revision: str
    bytes: int = 0
    sha256: str = ""
    rows_rejected: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> rows
    failed: dict[str, int] = field(default_factory=dict)  # error code -> rows
    error_samples: dict[str, str] = field(default_factory=dict)  # error code -> its first row's message
    judge_scores: dict[str, int] = field(default_factory=dict)  # "1".."10" -> rows judged so
    judge_prompt_tokens: int = 0
    judge_cached_tokens: int = 0  # of the judge's prompt tokens, those read from the prefix cache
    judge_completion_tokens: int = 0
    filler_stripped: int = 0  # completions stored with their filler opener or closer stripped (filters.filler)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardStats:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class StatsLedger(Mapping[int, ShardStats]):
    """The stats of a run's committed shards by index, as the coordinator keeps them until finalize:
    each packed into one small bytes object (~250 bytes a shard with its key, against ~700 as
    objects), so a 10M-row job's 39,063 shards stay near 10 MB. Read back as `ShardStats`."""

    _fields = tuple(ShardStats.__dataclass_fields__)

    def __init__(self) -> None:
        self._packed: dict[int, bytes] = {}

    def add(self, index: int, stats: ShardStats) -> None:
        self._packed[index] = pickle.dumps(tuple(getattr(stats, f) for f in self._fields), protocol=5)

    def __getitem__(self, index: int) -> ShardStats:
        return ShardStats(*pickle.loads(self._packed[index]))

    def __iter__(self) -> Iterator[int]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)


@dataclass(frozen=True)
class ShardTables:
    """A shard's rows, each in exactly one table."""

    data: pa.Table
    errors: pa.Table
    rejected: pa.Table


@dataclass(frozen=True)
class CommitOutcome:
    stats: ShardStats
    won: bool  # False: another attempt had committed this shard first; ours was discarded


def _ipc(table: pa.Table) -> str:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return base64.b64encode(sink.getvalue()).decode()


def parquet_bytes(table: pa.Table) -> bytes:
    """The table as Parquet; without rows, a file of no row group (HF datasets fails on an empty one)."""
    out = io.BytesIO()
    if table.num_rows:
        pq.write_table(table, out, compression="zstd")
    else:
        pq.ParquetWriter(out, table.schema, compression="zstd").close()
    return out.getvalue()


def read_parquet(store: Store, key: str, columns: list[str] | None = None) -> pa.Table:
    """One stored Parquet object as a table (`columns` only, when given)."""
    return pq.read_table(io.BytesIO(store.get(key)), columns=columns)


def encode_shard(tables: ShardTables, stats: ShardStats) -> bytes:
    """Parquet bytes of the data rows; errors and rejected rows (Arrow IPC) and stats ride in the footer."""
    meta = dict(tables.data.schema.metadata or {})
    meta[FOOTER_KEY] = json.dumps({"stats": asdict(stats), "errors_ipc": _ipc(tables.errors),
                                   "rejected_ipc": _ipc(tables.rejected)}).encode()
    return parquet_bytes(tables.data.replace_schema_metadata(meta))


def decode_footer(blob: bytes) -> tuple[ShardStats, pa.Table, pa.Table]:
    """A committed shard's stats, error rows and rejected rows."""
    meta = pq.ParquetFile(io.BytesIO(blob)).schema_arrow.metadata or {}
    footer = json.loads(meta[FOOTER_KEY])
    errors, rejected = (pa.ipc.open_stream(base64.b64decode(footer[k])).read_all()
                        for k in ("errors_ipc", "rejected_ipc"))
    return ShardStats.from_json(footer["stats"]), errors, rejected


def _derived(index: int, num_shards: int, stats: ShardStats) -> list[str]:
    """Keys of the files derived from a shard's commit, for the tables it has rows in."""
    keys = [layout.errors_key(index, num_shards)] if stats.rows_failed else []
    return keys + ([layout.rejected_key(index, num_shards)] if stats.rows_rejected else [])


def _write_derived(store: Store, index: int, num_shards: int, errors: pa.Table, rejected: pa.Table) -> None:
    if errors.num_rows:
        store.put_if_absent(layout.errors_key(index, num_shards), parquet_bytes(errors))
    if rejected.num_rows:
        store.put_if_absent(layout.rejected_key(index, num_shards), parquet_bytes(rejected))


def _record(stats: ShardStats, blob: bytes) -> ShardStats:
    return ShardStats(**{**asdict(stats), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})


def commit_shard(store: Store, num_shards: int, tables: ShardTables, stats: ShardStats,
                 staged: bool = False) -> CommitOutcome:
    """Write the shard unless another attempt already did; then its derived files."""
    blob = encode_shard(tables, stats)
    if not store.put_if_absent(layout.commit_key(stats.index, num_shards, staged), blob):
        return CommitOutcome(stats, won=False)
    _write_derived(store, stats.index, num_shards, tables.errors, tables.rejected)
    final = _record(stats, blob)
    store.put_if_absent(layout.shard_record_key(stats.index), json.dumps(asdict(final)).encode())
    return CommitOutcome(final, won=True)


def recover_shard(store: Store, index: int, num_shards: int, staged: bool = False) -> ShardStats:
    """Stats of a committed shard from storage alone, re-deriving anything a crash left out."""
    record_key = layout.shard_record_key(index)
    if store.exists(record_key):
        stats = ShardStats.from_json(json.loads(store.get(record_key)))
        if all(store.exists(k) for k in _derived(index, num_shards, stats)):
            return stats
    blob = store.get(layout.commit_key(index, num_shards, staged))
    stats, errors, rejected = decode_footer(blob)
    _write_derived(store, index, num_shards, errors, rejected)
    final = _record(stats, blob)
    store.put_if_absent(record_key, json.dumps(asdict(final)).encode())
    return final


def committed_shards(store: Store, staged: bool = False) -> set[int]:
    """Indices of the shards whose commit exists: the coordinator's resume state."""
    folder = layout.GENERATED_DIR if staged else layout.DATA_DIR
    return {layout.shard_index(k) for k in store.list(folder + "/") if k.endswith(".parquet")}
