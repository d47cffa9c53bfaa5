"""A job whose rows fail does not look like a success: the summary names the top error codes with a
sample, the exit code says so, the quality report flags it, the service's record carries it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import cli
from orchestrator.cli import local
from orchestrator.finalize.passes import failure_flag
from orchestrator.finalize.report import render_report
from orchestrator.run.driver import run_job
from tests.integration.conftest import make_spec

GOOD, BAD = 6, 4  # validate reads the first lines of a file: the bad ones come after them


def test_a_job_where_no_row_succeeds_is_flagged_everywhere(pool: Any, tiny_model: Path, tmp_path: Path) -> None:
    # Prompts longer than the model's 256 tokens: vLLM refuses every one of them (prompt_too_long).
    spec = make_spec(tiny_model, str(tmp_path / "out"),
                     {"template": {"text": "{{ topic }} " + "word " * 400, "seeds": {"topic": ["a", "b", "c"]}}})
    result = run_job(spec, pool=pool)
    assert (result.rows_ok, result.rows_failed) == (0, 3)
    assert result.quality is not None
    rows = result.quality.rows
    assert rows.top_errors[0].code == "prompt_too_long" and rows.top_errors[0].rows == 3
    assert "maximum" in rows.top_errors[0].sample or "length" in rows.top_errors[0].sample
    flag = failure_flag(rows)
    assert flag is not None and flag.startswith("no row succeeded") and "prompt_too_long (3)" in flag
    html = render_report(result.quality)
    assert "Failed rows" in html and "No flags" not in html
    assert local.failed_rows_status(result, None) == cli.EXIT_FAILED
    manifest = json.loads((Path(result.uri) / "_manifest.json").read_text())
    assert manifest["top_errors"] == [e.json_dict() for e in rows.top_errors]


@pytest.fixture()
def partly_failing_spec(ray_runtime: None, tmp_path: Path) -> Path:
    lines = [json.dumps({"prompt": f"good {i}"}) for i in range(GOOD)] + [json.dumps({"nope": i}) for i in range(BAD)]
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    spec = {"name": "partly", "model": {"path": "fake", "engine": "fake", "engine_args": {"tokens_per_s": 10_000}},
            "prompts": {"file": {"uri": "prompts.jsonl"}}, "sampling": {"max_tokens": 4},
            "output": {"uri": str(tmp_path / "out"), "rows_per_shard": 5},
            "resources": {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 0}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(("share", "code"), [(None, 0), ("0.5", 0), ("0.2", 1)])
def test_max_failed_share_sets_the_exit_code_and_the_summary_names_the_errors(
        partly_failing_spec: Path, capsys: pytest.CaptureFixture[str], share: str | None, code: int) -> None:
    argv = ["run", str(partly_failing_spec), "--quiet", *(["--max-failed-share", share] if share else [])]
    assert cli.main(argv) == code
    stderr = capsys.readouterr().err
    assert f"errors/ invalid_request: {BAD} rows, e.g. line {GOOD + 1}:" in stderr
    assert f"{BAD} of {GOOD + BAD} rows (40%) failed" in stderr


def test_the_service_record_of_a_partly_failing_job_carries_the_warning(partly_failing_spec: Path,
                                                                        tmp_path: Path) -> None:
    from orchestrator.client import Client

    with Client.local(str(tmp_path / "state")) as client:
        record = client.submit(partly_failing_spec).wait(timeout=120)
    assert record.request_counts.failed == BAD
    assert len(record.warnings) == 1 and f"{BAD} of {GOOD + BAD} rows (40%) failed" in record.warnings[0]
    assert "invalid_request (4)" in record.warnings[0]
