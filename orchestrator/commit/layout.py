"""Key names inside a job folder: the output layout readers rely on, in one place."""

from __future__ import annotations

SPEC = "spec.json"
JOB = "_job.json"
MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
DATA_DIR = "data"
ERRORS_DIR = "errors"
REJECTED_DIR = "rejected"
GENERATED_DIR = "_generated"  # shard commits of a job with dedup: the finalize pass writes data/
MIXED_DIR = "mixed"
SHARDS_DIR = "_shards"
REPORT = "quality_report.html"
CARD = "README.md"  # the dataset card: its YAML header tells HF datasets which files are which split


def data_key(index: int, num_shards: int) -> str:
    return f"{DATA_DIR}/train-{index:05d}-of-{num_shards:05d}.parquet"


def commit_key(index: int, num_shards: int, staged: bool) -> str:
    """Where a shard commits: its final data file, or its staged file when dedup rewrites data/."""
    return f"{GENERATED_DIR}/{data_key(index, num_shards).split('/', 1)[1]}" if staged else data_key(index, num_shards)


def errors_key(index: int, num_shards: int) -> str:
    return f"{ERRORS_DIR}/errors-{index:05d}-of-{num_shards:05d}.parquet"


def rejected_key(index: int, num_shards: int, stage: str = "filters") -> str:
    """Rows a shard's filters or judge rejected (stage `filters`), or the dedup pass (`duplicates`)."""
    return f"{REJECTED_DIR}/{stage}-{index:05d}-of-{num_shards:05d}.parquet"


def mixed_key(index: int, num_parts: int) -> str:
    return f"{MIXED_DIR}/train-{index:05d}-of-{num_parts:05d}.parquet"


def shard_record_key(index: int) -> str:
    return f"{SHARDS_DIR}/{index:05d}.json"


def shard_index(key: str) -> int:
    """The shard index of a data key (inverse of data_key)."""
    return int(key.rsplit("/", 1)[-1].split("-")[1])


def shard_count(key: str) -> int:
    """The N of a data key's `-of-N` (the plan's shard count, or a targets job's shard budget)."""
    return int(key.rsplit("-of-", 1)[1].split(".")[0])
