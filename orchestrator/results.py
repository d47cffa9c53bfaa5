"""Read a finished job through its manifest, the commit point: only committed shards are read."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa

from orchestrator.commit import layout, schemas
from orchestrator.commit.shards import read_parquet
from orchestrator.errors import StorageError
from orchestrator.finalize.manifest import read_manifest
from orchestrator.spec.load import parse_spec
from orchestrator.storage import Store, open_store


def open_job(uri: str) -> Store:
    """The store of a job folder (`{output}/{job_id}`), checked to hold a committed manifest."""
    store = open_store(uri)
    if not store.exists(layout.MANIFEST):
        raise StorageError(f"{uri} has no {layout.MANIFEST}: the job is not finished (or not a job folder)")
    return store


manifest = read_manifest  # the public name: the typed manifest; a damaged one is a `ManifestError`


def iter_tables(store: Store, *, errors: bool = False, rejected: bool = False) -> Iterator[pa.Table]:
    """Each committed shard's rows (or its error or rejected rows), in shard order, one file at a time."""
    for shard in manifest(store).shards:
        for key in shard.keys(errors=errors, rejected=rejected):
            yield read_parquet(store, key).replace_schema_metadata(None)


def empty_table(store: Store, *, errors: bool = False, rejected: bool = False) -> pa.Table:
    """No rows, with the columns the job's data (or error, or rejected) rows have: from its stored spec."""
    spec = parse_spec(json.loads(store.get(layout.SPEC)), source=layout.SPEC)
    schema = schemas.rejected_schema(spec) if rejected else schemas.errors_schema(spec) if errors else schemas.data_schema(spec)
    return schema.empty_table()


def read_table(uri: str, *, errors: bool = False, rejected: bool = False) -> pa.Table:
    """All data (or error, or rejected) rows of a finished job as one table; a kind with no rows is an
    empty table with that kind's columns, so callers filter and count without a None case."""
    store = open_job(uri)
    tables = list(iter_tables(store, errors=errors, rejected=rejected))
    if not tables:
        return empty_table(store, errors=errors, rejected=rejected)
    return pa.concat_tables(tables, promote_options="default")
