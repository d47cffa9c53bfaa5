"""The dataset card on a job run on real Ray (the fake engine, which echoes its prompt): `datasets` loads
the job folder as it is, without data_dir or data_files, as its train split exactly the rows in data/, and
the rejected and errors configs as the rows in rejected/ and errors/ (read with pyarrow, not through the card)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from orchestrator.commit import layout
from orchestrator.run.driver import run_job
from orchestrator.spec.load import parse_spec

# Alternating kept and denied rows, a shard of denied rows only (its data file has no row), then rows
# without a prompt after the lines validation reads: each shard adds to data/, rejected/ or errors/.
LINES = ([{"prompt": f"{'drop' if i % 2 else 'keep'} {i}"} for i in range(16)]
         + [{"prompt": f"drop {i}"} for i in range(16, 24)]
         + [{"prompt": f"keep {i}"} for i in range(24, 28)] + [{"nope": i} for i in range(28, 32)])
KEPT, DENIED, BAD = 12, 16, 4


@pytest.fixture(scope="module")
def job(ray_runtime: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("card")
    (folder / "prompts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in LINES))
    spec = parse_spec({
        "name": "carded",
        "model": {"path": "fake-model", "engine": "fake", "engine_args": {"tokens_per_s": 5000, "echo": True}},
        "prompts": {"file": {"uri": str(folder / "prompts.jsonl")}},
        "sampling": {"max_tokens": 2},
        "filters": {"deny": ["^drop"]},
        "output": {"uri": str(folder / "out"), "rows_per_shard": 8},
        "resources": {"workers": 2, "gpus_per_worker": 0, "cpus_per_worker": 0},
    })
    result = run_job(spec)
    assert (result.rows_ok, result.rows_rejected, result.rows_failed) == (KEPT, DENIED, BAD)
    return Path(result.uri)


def row_ids(folder: Path) -> list[str]:
    ids: list[str] = ds.dataset(folder, format="parquet").to_table(columns=["row_id"])["row_id"].to_pylist()
    return sorted(ids)


def load(job: Path, *config: str) -> Any:
    import datasets

    return datasets.load_dataset(str(job), *config, cache_dir=str(job.parent / "hf-cache"))


def test_the_job_folder_loads_as_its_train_split_of_the_rows_in_data(job: Path) -> None:
    assert (job / layout.CARD).read_text().startswith("---\n")
    loaded = load(job)
    assert list(loaded) == ["train"]
    assert sorted(loaded["train"]["row_id"]) == row_ids(job / layout.DATA_DIR) and loaded["train"].num_rows == KEPT
    assert all(c.startswith("keep") for c in loaded["train"]["completion"])


def test_the_rejected_config_loads_the_rows_in_rejected(job: Path) -> None:
    rejected = load(job, "rejected")["train"]
    assert sorted(rejected["row_id"]) == row_ids(job / layout.REJECTED_DIR) and rejected.num_rows == DENIED
    assert set(rejected["reject_reason"]) == {"deny_pattern"}


def test_the_errors_config_loads_the_rows_in_errors(job: Path) -> None:
    errors = load(job, "errors")["train"]
    assert sorted(errors["row_id"]) == row_ids(job / layout.ERRORS_DIR) and errors.num_rows == BAD
    assert all(errors["error_code"])


def test_the_card_counts_what_the_manifest_counts(job: Path) -> None:
    text = (job / layout.CARD).read_text()
    manifest = json.loads((job / layout.MANIFEST).read_text())
    assert f"| `default` | `data/` | {manifest['rows_ok']} |" in text
    assert f"| `rejected` | `rejected/` | {manifest['rows_rejected']} |" in text
    assert f"| `errors` | `errors/` | {manifest['rows_failed']} |" in text
    assert "the prompts of the file prompts.jsonl" in text and str(job.parent.parent) not in text
