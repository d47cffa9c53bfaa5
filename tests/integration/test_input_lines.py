"""A prompt file with lines that are not valid UTF-8 or not JSON: a real job on the session's pool
completes with every other row, and each bad line is one error row naming its line in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.results import read_table
from tests.integration.conftest import make_spec

LINES = [b'{"prompt": "Tell me about rain."}', b"", b'{"prompt": "caf\xe9 au lait"}',
         b'{"prompt": "Tell me about stars."}', b"\xff\xfe", b'{"prompt": "Tell me about bees."}',
         b'{"prompt": ', b'{"prompt": "Tell me about salt."}']


def test_bad_lines_of_a_prompt_file_fail_alone_and_name_their_file_line(pool: Any, tiny_model: Path,
                                                                        tmp_path: Path) -> None:
    from orchestrator.run.driver import run_job

    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b"\n".join(LINES) + b"\n")
    spec = make_spec(tiny_model, str(tmp_path / "out"), {"file": {"uri": str(path)}}, rows_per_shard=3)
    result = run_job(spec, pool=pool)
    assert (result.rows_ok, result.rows_failed) == (4, 3)
    errors = read_table(result.uri, errors=True).to_pylist()
    assert {e["error_code"] for e in errors} == {"invalid_request"}
    assert sorted(e["error_message"].split(" (")[0] for e in errors) == [
        "line 3: not valid UTF-8", "line 5: not valid UTF-8", "line 7: not valid JSON"]
    data = read_table(result.uri).column("prompt").to_pylist()
    assert sorted(data) == sorted(f"Tell me about {w}." for w in ("rain", "stars", "bees", "salt"))
