"""Key names inside a job folder: the output layout readers rely on, in one place."""

from __future__ import annotations

SPEC = "spec.json"
JOB = "_job.json"
MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
DATA_DIR = "data"
ERRORS_DIR = "errors"
SHARDS_DIR = "_shards"


def data_key(index: int, num_shards: int) -> str:
    return f"{DATA_DIR}/train-{index:05d}-of-{num_shards:05d}.parquet"


def errors_key(index: int, num_shards: int) -> str:
    return f"{ERRORS_DIR}/errors-{index:05d}-of-{num_shards:05d}.parquet"


def shard_record_key(index: int) -> str:
    return f"{SHARDS_DIR}/{index:05d}.json"


def shard_index(key: str) -> int:
    """The shard index of a data key (inverse of data_key)."""
    return int(key.rsplit("/", 1)[-1].split("-")[1])
