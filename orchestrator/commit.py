"""Commit a shard exactly once.

The data file is the shard's commit: one conditional write at its final name, carrying the shard's
error rows and statistics in its Parquet footer. Whatever else belongs to the shard (its `errors/`
file, its `_shards/` record) is derived from that one object, so a crash between writes loses
nothing and a retry or zombie attempt can never overwrite or contradict a commit.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator import layout
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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardStats:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class CommitOutcome:
    stats: ShardStats
    won: bool  # False: another attempt had committed this shard first; ours was discarded


def encode_shard(data: pa.Table, errors: pa.Table, stats: ShardStats) -> bytes:
    """Parquet bytes of the data rows; errors (as Arrow IPC) and stats ride in the footer."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, errors.schema) as w:
        w.write_table(errors)
    meta = dict(data.schema.metadata or {})
    meta[FOOTER_KEY] = json.dumps({"stats": asdict(stats), "errors_ipc": base64.b64encode(sink.getvalue()).decode()}).encode()
    out = io.BytesIO()
    pq.write_table(data.replace_schema_metadata(meta), out, compression="zstd")
    return out.getvalue()


def decode_footer(blob: bytes) -> tuple[ShardStats, pa.Table]:
    meta = pq.ParquetFile(io.BytesIO(blob)).schema_arrow.metadata or {}
    footer = json.loads(meta[FOOTER_KEY])
    errors = pa.ipc.open_stream(base64.b64decode(footer["errors_ipc"])).read_all()
    return ShardStats.from_json(footer["stats"]), errors


def _write_errors(store: Store, index: int, num_shards: int, errors: pa.Table) -> None:
    if errors.num_rows:
        out = io.BytesIO()
        pq.write_table(errors, out, compression="zstd")
        store.put_if_absent(layout.errors_key(index, num_shards), out.getvalue())


def _record(stats: ShardStats, blob: bytes) -> ShardStats:
    return ShardStats(**{**asdict(stats), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})


def commit_shard(store: Store, num_shards: int, data: pa.Table, errors: pa.Table,
                 stats: ShardStats) -> CommitOutcome:
    """Write the shard unless another attempt already did; then its derived files."""
    blob = encode_shard(data, errors, stats)
    if not store.put_if_absent(layout.data_key(stats.index, num_shards), blob):
        return CommitOutcome(stats, won=False)
    _write_errors(store, stats.index, num_shards, errors)
    final = _record(stats, blob)
    store.put_if_absent(layout.shard_record_key(stats.index), json.dumps(asdict(final)).encode())
    return CommitOutcome(final, won=True)


def recover_shard(store: Store, index: int, num_shards: int) -> ShardStats:
    """Stats of a committed shard from storage alone, re-deriving anything a crash left out."""
    record_key = layout.shard_record_key(index)
    if store.exists(record_key):
        stats = ShardStats.from_json(json.loads(store.get(record_key)))
        if not stats.rows_failed or store.exists(layout.errors_key(index, num_shards)):
            return stats
    blob = store.get(layout.data_key(index, num_shards))
    stats, errors = decode_footer(blob)
    _write_errors(store, index, num_shards, errors)
    final = _record(stats, blob)
    store.put_if_absent(record_key, json.dumps(asdict(final)).encode())
    return final


def committed_shards(store: Store) -> set[int]:
    """Indices of the shards whose data file exists: the coordinator's resume state."""
    return {layout.shard_index(k) for k in store.list(layout.DATA_DIR + "/") if k.endswith(".parquet")}
