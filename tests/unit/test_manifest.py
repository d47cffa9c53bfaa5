"""`_manifest.json`: the typed manifest writes the JSON the dict-built one wrote, reads back byte for byte,
and refuses a damaged one naming the field.

The golden files in `fixtures/` were written by the manifest code before it was typed (the dict
builder), from the same planted jobs (`manifest_jobs.py`), and are equal to what this code writes, key
order and value types included; only clock readings and what depends on them are masked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.errors import ManifestError
from orchestrator.finalize.manifest import FORMAT, Manifest, manifest_bytes, parse_manifest
from orchestrator.results import manifest, open_job
from tests.unit.manifest_jobs import golden, masked, run

KINDS = ("full", "plain")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, Path]]:
    out = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(kind)
        out[kind] = run(kind, folder), folder
    return out


def _data(jobs: dict[str, tuple[bytes, Path]], kind: str = "full") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jobs[kind][0])
    return data


@pytest.mark.parametrize("kind", KINDS)
def test_the_manifest_on_disk_is_the_golden_one(jobs: dict[str, tuple[bytes, Path]], kind: str) -> None:
    blob, folder = jobs[kind]
    assert masked(blob, folder) == golden(kind).read_text()  # same keys, order, types and values


def test_the_full_job_has_every_optional_part(jobs: dict[str, tuple[bytes, Path]]) -> None:
    m = parse_manifest(jobs["full"][0])
    q = m.quality
    assert q.judge is not None and q.dedup is not None and q.reference is not None
    assert m.mixed is not None and q.mixed_drift is not None
    assert q.dedup.exact_duplicates == 2 and m.rejected["exact_duplicate"] == 2
    assert any(s.generated_path for s in m.shards) and q.reference.skipped_lines == 1
    plain = parse_manifest(jobs["plain"][0])
    assert plain.mixed is None and plain.quality.judge is None and plain.quality.dedup is None
    assert all(s.generated_path is None for s in plain.shards)
    assert "generated_path" not in _data(jobs, "plain")["shards"][0]  # an unset field is not written


@pytest.mark.parametrize("kind", KINDS)
def test_a_manifest_reads_back_byte_for_byte(jobs: dict[str, tuple[bytes, Path]], kind: str) -> None:
    blob = jobs[kind][0]
    assert manifest_bytes(parse_manifest(blob)) == blob


def _refused(data: dict[str, Any]) -> str:
    with pytest.raises(ManifestError) as e:
        parse_manifest(json.dumps(data).encode(), "job/_manifest.json")
    return str(e.value)


def test_a_missing_field_is_named(jobs: dict[str, tuple[bytes, Path]]) -> None:
    data = _data(jobs)
    del data["quality"]["truncation"]
    message = _refused(data)
    assert message.startswith("job/_manifest.json: quality.truncation: Field required")


def test_a_renamed_field_is_named(jobs: dict[str, tuple[bytes, Path]]) -> None:
    data = _data(jobs)
    data["shards"][1]["rows_good"] = data["shards"][1].pop("rows_ok")
    message = _refused(data)
    assert "shards.1.rows_ok: Field required" in message and "2 problem(s)" in message


def test_a_field_of_the_wrong_type_is_named(jobs: dict[str, tuple[bytes, Path]]) -> None:
    data = _data(jobs)
    data["quality"]["drift"]["variables"]["persona"]["values"][0]["kept"] = "three"
    assert "quality.drift.variables.persona.values.0.kept: Input should be a valid integer" in _refused(data)


def test_another_format_and_non_json_are_refused(jobs: dict[str, tuple[bytes, Path]]) -> None:
    data = _data(jobs)
    data["format"] = FORMAT + 1
    assert "format 2 is not 1" in _refused(data)
    with pytest.raises(ManifestError, match="is not JSON"):
        parse_manifest(b'{"format": 1,', "job/_manifest.json")


def test_the_manifest_is_frozen(jobs: dict[str, tuple[bytes, Path]]) -> None:
    m = parse_manifest(jobs["full"][0])
    with pytest.raises(ValidationError):
        m.rows_ok = 0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        m.quality.rows.kept = 0  # type: ignore[misc]


def test_the_public_reader_gives_the_typed_manifest(jobs: dict[str, tuple[bytes, Path]]) -> None:
    blob, folder = jobs["full"]
    m = parse_manifest(blob)
    read = manifest(open_job(str(folder / m.job_id)))
    assert isinstance(read, Manifest) and read == m
    assert [s.keys() for s in read.shards] == [[s.path] for s in m.shards]
    assert sum(len(s.keys(rejected=True)) for s in read.shards) == sum(len(s.rejected_paths) for s in m.shards) > 0
