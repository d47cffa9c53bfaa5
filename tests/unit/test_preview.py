"""`synthfleet preview` on the fake engine, against truth computed here: the printed prompts are the
first rows' own, a planted denied row is shown rejected with its reason, nothing is written under the
output, the estimate's completion tokens are rows × n × max_tokens, and a bad spec exits 2 before
any engine starts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli import EXIT_BAD_INPUT, EXIT_OK, main
from orchestrator.cli.preview import duration, estimate

ROWS, N, MAX_TOKENS = 100, 2, 7
DENIED = 3  # echo makes row 3's completion start with "row 3 ", which filters.deny rejects


def write_spec(tmp_path: Path, **sections: Any) -> Path:
    data: dict[str, Any] = {
        "name": "preview",
        "model": {"path": "fake", "engine": "fake",
                  "engine_args": {"tokens_per_s": 5000, "echo": True, "request_log": str(tmp_path / "requests")}},
        "prompts": {"template": {"text": "row {{ i }}", "seeds": {"i": list(range(ROWS))}}},
        "sampling": {"max_tokens": MAX_TOKENS, "n": N, "seed": 3},
        "filters": {"deny": [f"^row {DENIED} "]},
        "output": {"uri": str(tmp_path / "out"), "rows_per_shard": 10},
    }
    data.update(sections)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def preview(tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: int = 5, **sections: Any) -> tuple[int, str, str]:
    code = main(["preview", str(write_spec(tmp_path, **sections)), "--rows", str(rows)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_printed_prompts_are_the_first_rows_rendered_prompts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = preview(tmp_path, capsys, rows=5)
    assert code == EXIT_OK
    assert re.findall(r"^  prompt: (.*)$", out, re.M) == [repr(f"row {i}") for i in range(5)]


def test_each_sample_shows_its_completion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = preview(tmp_path, capsys, rows=2)
    texts = re.findall(r"^    completion: (.*)$", out, re.M)
    assert texts == [repr(f"row {i} " + " ".join(["tok"] * MAX_TOKENS)) for i in range(2) for _ in range(N)]


def test_a_planted_denied_row_is_shown_rejected_with_its_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = preview(tmp_path, capsys, rows=5)
    blocks = out.split("\nrow ")[1:]
    verdicts = {int(b.split(" ", 1)[0]): re.findall(r"^  sample \d+: (.*)$", b, re.M) for b in blocks}
    assert verdicts[DENIED] == ["rejected (deny_pattern): matches filters.deny[0]"] * N
    assert all(v == ["kept"] * N for i, v in verdicts.items() if i != DENIED)


def test_nothing_is_written_under_the_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = preview(tmp_path, capsys)
    assert code == EXIT_OK
    assert not (tmp_path / "out").exists()


def test_only_the_first_rows_are_generated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preview(tmp_path, capsys, rows=4)
    assert sorted(int(line) for line in (tmp_path / "requests").read_text().split()) == [0, 1, 2, 3]


def test_the_estimate_counts_every_rows_samples_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = preview(tmp_path, capsys, rows=5)
    completion = ROWS * N * MAX_TOKENS  # the fake engine returns exactly max_tokens per sample: 1,400
    prompt = ROWS * 2  # "row {i}" is two words, once per row whatever n
    assert f"estimate for {ROWS:,} rows × n = {N}: about {prompt:,} prompt tokens and {completion:,} completion tokens" in out
    assert "one-engine estimate from 5 rows" in out


def test_a_bad_spec_exits_2_naming_its_field_before_any_engine_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = preview(tmp_path, capsys, prompts={"template": {"text": "row {{ i.nope }}", "seeds": {"i": [1, 2]}}})
    assert code == EXIT_BAD_INPUT
    assert "prompts.template.text" in err and "preview of" not in out
    assert not (tmp_path / "requests").exists() and not (tmp_path / "out").exists()


def test_the_estimate_scales_the_per_row_means() -> None:
    e = estimate(rows=1000, n=3, previewed=4, prompt_tokens=40, completion_tokens=120, seconds=2.0)
    assert (e.rows, e.prompt_tokens, e.completion_tokens, e.seconds) == (1000, 10_000, 30_000, 500.0)


def test_durations_read_plainly() -> None:
    assert [duration(s) for s in (12.4, 185, 3720)] == ["12 s", "3 min 05 s", "1 h 02 min"]
