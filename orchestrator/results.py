"""Read a finished job through its manifest, the commit point: only committed shards are read."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator import layout
from orchestrator.errors import StorageError
from orchestrator.storage import Store, open_store


def open_job(uri: str) -> Store:
    """The store of a job folder (`{output}/{job_id}`), checked to hold a committed manifest."""
    store = open_store(uri)
    if not store.exists(layout.MANIFEST):
        raise StorageError(f"{uri} has no {layout.MANIFEST}: the job is not finished (or not a job folder)")
    return store


def manifest(store: Store) -> dict[str, Any]:
    return json.loads(store.get(layout.MANIFEST))


def iter_tables(store: Store, *, errors: bool = False) -> Iterator[pa.Table]:
    """Each committed shard's rows (or error rows), in shard order, one shard in memory at a time."""
    for shard in manifest(store)["shards"]:
        key = shard["errors_path"] if errors else shard["path"]
        if key:
            yield pq.read_table(io.BytesIO(store.get(key))).replace_schema_metadata(None)


def read_table(uri: str, *, errors: bool = False) -> pa.Table | None:
    """All data (or error) rows of a finished job as one table (None when there are none)."""
    tables = list(iter_tables(open_job(uri), errors=errors))
    return pa.concat_tables(tables) if tables else None
