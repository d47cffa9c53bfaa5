"""`synthfleet preview` of a two-stage spec on real vLLM (the tiny model, an engine started in this
process): every row prints both stages' texts, nothing is written, no engine process is left, and the
process keeps its cores and environment."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import psutil
import pytest
import yaml

from orchestrator.cli import EXIT_OK, main
from tests.integration.conftest import MODEL_ARGS


def test_a_two_stage_preview_prints_both_stages_of_each_row_and_writes_nothing(
        tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = {
        "name": "preview-stages",
        "model": {"path": str(tiny_model), **MODEL_ARGS},
        "prompts": {"template": {"seeds": {"topic": ["tides", "bread", "rust", "owls", "jazz"]}}},
        "sampling": {"max_tokens": 8, "temperature": 0.9, "seed": 1, "ignore_eos": True},
        "stages": [{"name": "draft", "text": "Write about {{ topic }}."},
                   {"name": "polish", "text": "Improve: {{ draft }}"}],
        "output": {"uri": str(tmp_path / "out"), "rows_per_shard": 8},
        "resources": {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 1},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    cores, environ = os.sched_getaffinity(0), dict(os.environ)

    code = main(["preview", str(path), "--rows", "3"])

    out = capsys.readouterr().out
    assert code == EXIT_OK
    blocks = out.split("\nrow ")[1:]
    assert [int(b.split(" ", 1)[0]) for b in blocks] == [0, 1, 2]
    for block in blocks:
        draft = re.search(r"^    draft: (.*)$", block, re.M)
        polish = re.search(r"^    polish: (.*)$", block, re.M)
        prompt = re.search(r"^  prompt: (.*)$", block, re.M)
        assert draft and polish and prompt, block
        assert ast.literal_eval(draft.group(1)) and ast.literal_eval(polish.group(1))
        assert ast.literal_eval(prompt.group(1)) == "Improve: " + ast.literal_eval(draft.group(1))
    assert "estimate for 5 rows" in out
    assert not (tmp_path / "out").exists()
    engines = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and "VLLM" in p.name()]
    assert not engines, [(p.name(), p.status()) for p in engines]
    # this process as it was: a later child (a test's `synthfleet serve`) inherits its cores and environment
    assert os.sched_getaffinity(0) == cores and dict(os.environ) == environ
