"""`_manifest.json`, the commit point of a job: typed and frozen, written once, read through `read_manifest`."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import ValidationError

from orchestrator.commit import layout
from orchestrator.errors import ManifestError
from orchestrator.finalize.quality_report import ErrorCount, Frozen, Num, QualityReport
from orchestrator.storage import Store

FORMAT = 1


class ShardEntry(Frozen):
    """One committed shard: its stats and where its data, error and rejected rows are."""

    index: int
    attempt: int
    rows_ok: int
    rows_failed: int
    prompt_tokens: int
    completion_tokens: int
    seconds: Num
    model_revision: str
    bytes: int
    sha256: str
    rows_rejected: int
    rejected: dict[str, int]
    failed: dict[str, int]
    error_samples: dict[str, str]
    judge_scores: dict[str, int]
    judge_prompt_tokens: int
    judge_cached_tokens: int
    judge_completion_tokens: int
    filler_stripped: int
    path: str
    errors_path: str | None
    rejected_paths: list[str]
    generated_path: str | None = None  # with dedup: the shard as generated, before the finalize pass

    def keys(self, *, errors: bool = False, rejected: bool = False) -> list[str]:
        """The files of this shard's data rows, or its error rows, or its rejected rows."""
        if rejected:
            return list(self.rejected_paths)
        key = self.errors_path if errors else self.path
        return [key] if key else []


class Mixed(Frozen):
    """The `mixed/` split: kept synthetic rows interleaved with real ones."""

    uri: str
    ratio: Num
    rows: int
    real_rows: int
    synthetic_rows: int
    parts: list[str]
    skipped_lines: int
    skipped_sample: list[str]
    empty: str | None = None  # why nothing was mixed


class Manifest(Frozen):
    format: Literal[1]
    job_id: str
    name: str
    spec_hash: str
    model: str
    model_revisions: list[str]
    input_rows: int
    num_shards: int
    rows_ok: int
    rows_failed: int
    rows_rejected: int
    prompt_tokens: int
    completion_tokens: int
    judge_prompt_tokens: int
    judge_cached_tokens: int
    judge_completion_tokens: int
    bytes: int
    rejected: dict[str, int]
    failed: dict[str, int]
    top_errors: list[ErrorCount]
    generation_seconds: Num
    started_at: Num
    finished_at: Num
    quality: QualityReport
    report_path: str
    mixed: Mixed | None
    shards: list[ShardEntry]


def manifest_bytes(manifest: Manifest) -> bytes:
    return json.dumps(manifest.json_dict(), indent=1).encode()


def parse_manifest(blob: bytes, source: str = layout.MANIFEST) -> Manifest:
    """A manifest from its JSON; a malformed one is a `ManifestError` naming the field."""
    try:
        data = json.loads(blob)
    except ValueError as e:
        raise ManifestError(f"{source} is not JSON ({e}): the job folder is damaged") from e
    if isinstance(data, dict) and data.get("format") != FORMAT:
        raise ManifestError(f"{source}: format {data.get('format')!r} is not {FORMAT}, the one this synthfleet "
                            "reads; read it with the synthfleet that wrote it")
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ManifestError(f"{source}: {where}: {first['msg']} ({e.error_count()} problem(s)); "
                            "the job folder is damaged or was written by another version") from e


def read_manifest(store: Store) -> Manifest:
    return parse_manifest(store.get(layout.MANIFEST), f"{store.uri}/{layout.MANIFEST}")
