"""`synthfleet export`: every line of an openai-batch export is what the `openai` SDK's own types accept,
every request lands exactly once in the output or the error file, exports are byte-identical when
repeated, nothing existing is overwritten unless asked, and a large job exports with flat memory."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from orchestrator.cli import main
from orchestrator.errors import ExistsError
from orchestrator.export import BATCH_FILES, export_job, formats
from orchestrator.export.formats import BatchContext
from orchestrator.finalize.finish import finalize
from orchestrator.run.driver import prepare
from orchestrator.spec.job import JobSpec
from orchestrator.spec.load import parse_spec
from orchestrator.spec.model import FakeEngineArgs
from workers.fake_engine import sleeping_engine
from workers.shard import run_shard

CTX = BatchContext(model="tiny", created=1_700_000_000)
LINEAGE = {"spec_hash": "abc", "model": "tiny", "model_revision": "rev1", "template_hash": "t", "seed": 1,
           "sampling": "{}"}


def data_row(row_id: str, sample: int = 0, *, chat: bool = True, custom_id: str | None = None,
             completion: str = "an answer", finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return {"row_id": row_id, "sample_index": sample, "custom_id": custom_id,
            "prompt": None if chat else "complete this",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a question"}]
            if chat else None, "completion": completion, "finish_reason": finish, "prompt_tokens": 7,
            "completion_tokens": 3, "lineage": dict(LINEAGE), **extra}


def error_row(row_id: str, sample: int | None, code: str, custom_id: str | None = None) -> dict[str, Any]:
    return {"row_id": row_id, "sample_index": sample, "custom_id": custom_id, "prompt": "p", "messages": None,
            "error_code": code, "error_message": f"{code} on {sample}", "lineage": dict(LINEAGE)}


def parsed(line: bytes) -> dict[str, Any]:
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return json.loads(line)


# --- openai-batch lines, against the SDK's types ----------------------------------------------------

def test_a_chat_row_is_an_output_line_whose_body_is_the_sdks_chat_completion() -> None:
    line = parsed(formats.batch_output_line([data_row("r1", custom_id="req-1")], CTX))
    assert list(line) == ["id", "custom_id", "response", "error"]
    assert line["id"].startswith("batch_req_") and line["custom_id"] == "req-1" and line["error"] is None
    assert line["response"]["status_code"] == 200 and line["response"]["request_id"].startswith("req_")
    body = ChatCompletion.model_validate(line["response"]["body"])
    assert body.object == "chat.completion" and body.model == "tiny" and body.created == CTX.created
    assert body.id.startswith("chatcmpl-") and body.system_fingerprint == "rev1"
    assert [(c.index, c.message.role, c.message.content, c.finish_reason) for c in body.choices] == [
        (0, "assistant", "an answer", "stop")]
    assert body.usage is not None and (body.usage.prompt_tokens, body.usage.completion_tokens,
                                       body.usage.total_tokens) == (7, 3, 10)


def test_a_text_prompt_row_has_the_sdks_text_completion_body() -> None:
    line = parsed(formats.batch_output_line([data_row("r1", chat=False, finish="length")], CTX))
    body = Completion.model_validate(line["response"]["body"])
    assert body.object == "text_completion" and body.id.startswith("cmpl-")
    assert [(c.index, c.text, c.finish_reason) for c in body.choices] == [(0, "an answer", "length")]


def test_a_requests_samples_are_the_choices_of_one_response_and_the_prompt_is_counted_once() -> None:
    samples = [data_row("r1", s, completion=f"answer {s}") for s in (2, 0, 1)]
    body = ChatCompletion.model_validate(parsed(formats.batch_output_line(samples, CTX))["response"]["body"])
    assert [(c.index, c.message.content) for c in body.choices] == [(0, "answer 0"), (1, "answer 1"), (2, "answer 2")]
    assert body.usage is not None and (body.usage.prompt_tokens, body.usage.completion_tokens) == (7, 9)


def test_kept_samples_are_numbered_among_themselves_when_one_was_dropped() -> None:
    body = parsed(formats.batch_output_line([data_row("r1", 0), data_row("r1", 2)], CTX))["response"]["body"]
    assert [c["index"] for c in body["choices"]] == [0, 1]


def test_finish_reasons_are_openais_length_or_stop() -> None:
    reasons = {r: parsed(formats.batch_output_line([data_row("r", finish=r)], CTX))["response"]["body"]["choices"][0]
               ["finish_reason"] for r in ("stop", "length", "abort", "eos")}
    assert reasons == {"stop": "stop", "length": "length", "abort": "stop", "eos": "stop"}


def test_custom_id_is_the_rows_own_else_its_row_id() -> None:
    assert parsed(formats.batch_output_line([data_row("r1", custom_id="mine")], CTX))["custom_id"] == "mine"
    assert parsed(formats.batch_output_line([data_row("r1")], CTX))["custom_id"] == "r1"


def test_ids_are_derived_from_the_row_id_alone() -> None:
    a, b = formats.batch_output_line([data_row("r1")], CTX), formats.batch_output_line([data_row("r1")], CTX)
    assert a == b
    ids = {parsed(formats.batch_output_line([data_row(f"r{i}")], CTX))["id"] for i in range(100)}
    assert len(ids) == 100


def test_an_error_line_carries_the_code_and_message_of_the_requests_first_error() -> None:
    rows = [error_row("r1", 1, "schema_violation", "req-1"), error_row("r1", 0, "schema_violation", "req-1")]
    line = parsed(formats.batch_error_line(rows))
    assert line == {"id": formats.derived_id("batch_req_", "r1"), "custom_id": "req-1", "response": None,
                    "error": {"code": "schema_violation", "message": "schema_violation on 0"}}
    assert parsed(formats.batch_error_line([error_row("r2", None, "invalid_request")]))["custom_id"] == "r2"


def test_requests_group_a_rows_samples_and_refuse_samples_stored_apart() -> None:
    rows = [data_row("a", 0), data_row("a", 1), data_row("b", 0)]
    assert [[r["sample_index"] for r in g] for g in formats.requests(rows)] == [[0, 1], [0]]
    with pytest.raises(ValueError, match="not stored together"):
        list(formats.requests([data_row("a"), data_row("b"), data_row("a", 1)]))


# --- jsonl and chat lines -----------------------------------------------------------------------------

def test_a_jsonl_line_is_every_column_with_lineage_an_object() -> None:
    row = data_row("r1", topic="rain", tags=["a", "b"], x=0.5)
    line = parsed(formats.jsonl_line(row))
    assert line == row and list(line) == list(row) and isinstance(line["lineage"], dict)


def test_a_float_json_cannot_hold_is_null() -> None:
    assert parsed(formats.jsonl_line({"row_id": "r", "x": float("nan"), "y": [float("inf"), 1.5]})) == {
        "row_id": "r", "x": None, "y": [None, 1.5]}


def test_non_ascii_text_is_written_as_utf8() -> None:
    assert "héllo ✓".encode() in formats.jsonl_line(data_row("r", completion="héllo ✓"))


def test_a_chat_line_is_the_prompt_messages_then_the_completion() -> None:
    assert parsed(formats.chat_line(data_row("r1"))) == {"messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "a question"},
        {"role": "assistant", "content": "an answer"}]}


def test_a_text_prompt_becomes_one_user_message() -> None:
    assert formats.chat_messages(data_row("r1", chat=False)) == [
        {"role": "user", "content": "complete this"}, {"role": "assistant", "content": "an answer"}]


def test_a_staged_rows_whole_conversation_is_written_as_it_is() -> None:
    turns = [{"role": "user", "content": "ask"}, {"role": "assistant", "content": "q?"},
             {"role": "user", "content": "answer it"}, {"role": "assistant", "content": "an answer"}]
    staged = {**data_row("r1"), "messages": turns, "lineage": {**LINEAGE, "stages": "[]"}}
    assert formats.chat_messages(staged) == turns


def test_a_staged_row_asked_without_its_reply_gets_the_completion_appended() -> None:
    asked = [{"role": "user", "content": "pick one"}]  # a select stage's pair: the fan-out's question
    staged = {**data_row("r1", completion="chosen"), "messages": asked, "lineage": {**LINEAGE, "stages": "[]"}}
    assert formats.chat_messages(staged)[-1] == {"role": "assistant", "content": "chosen"}
    unstaged = {**data_row("r1"), "messages": [{"role": "assistant", "content": "an answer"}]}
    assert len(formats.chat_messages(unstaged)) == 2  # only a staged row's messages hold the reply


# --- a finished job, exported ------------------------------------------------------------------------

def batch_input(path: Path) -> list[str]:
    """An OpenAI Batch file: chat and completion requests, two with n=2, one whose JSON output the fake
    engine cannot give (schema_violation), two gated out by the spec's filter, two invalid; its custom_ids."""
    lines = []
    for i in range(10):
        body: dict[str, Any] = {"model": "any", "max_tokens": 2}
        text = f"reject-me {i}" if i in (3, 7) else f"question {i}"
        if i % 2:
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        body |= {"n": 2} if i in (1, 4) else {}
        body |= {"response_format": {"type": "json_object"}} if i == 5 else {}
        url = "/v1/chat/completions" if i % 2 else "/v1/completions"
        lines.append(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}))
    lines.append(json.dumps({"custom_id": "req-bad-url", "method": "POST", "url": "/v1/embeddings", "body": {}}))
    lines.append(json.dumps({"custom_id": "req-no-body", "method": "POST", "url": "/v1/completions"}))
    path.write_text("\n".join(lines) + "\n")
    return [json.loads(line)["custom_id"] for line in lines]


def batch_spec(out: Path, batch: Path) -> JobSpec:
    return parse_spec({"name": "export", "model": {"path": "fake", "engine": "fake"},
                       "prompts": {"openai_batch": {"uri": str(batch)}}, "sampling": {"max_tokens": 2},
                       "filters": {"deny": ["^reject-me"]},
                       "output": {"uri": str(out), "rows_per_shard": 4}, "resources": {"gpus_per_worker": 0}})


def finished_job(spec: JobSpec) -> str:
    """The job run as run_job runs it, with the shipped fake engine (echoing prompts) in this process."""
    job = prepare(spec)
    engine = sleeping_engine(spec.model.name, FakeEngineArgs(tokens_per_s=1e6, echo=True))
    known = {}
    for shard in job.plan.shards():
        outcome = asyncio.run(run_shard(engine, job.store, spec, job.plan, shard, attempt=1))
        assert outcome is not None
        known[shard.index] = outcome.stats
    finalize(job.store, spec, job.plan, known, started_at=0.0)
    return job.store.uri


@pytest.fixture()
def job(tmp_path: Path) -> tuple[str, list[str]]:
    ids = batch_input(tmp_path / "batch.jsonl")
    return finished_job(batch_spec(tmp_path / "out", tmp_path / "batch.jsonl")), ids


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_request_is_answered_once_in_the_output_or_error_file_and_gated_ones_are_counted(
        job: tuple[str, list[str]], tmp_path: Path) -> None:
    uri, ids = job
    done = export_job(uri, "openai-batch", str(tmp_path / "export"))
    output, errors = (lines(tmp_path / "export" / name) for name in BATCH_FILES)
    for line in output:
        body = line["response"]["body"]
        (ChatCompletion if body["object"] == "chat.completion" else Completion).model_validate(body)
    seen = Counter(line["custom_id"] for line in output + errors)
    assert set(seen.values()) == {1}
    assert set(seen) == set(ids) - {"req-3", "req-7"}  # every sample of these two was rejected by the filter
    assert {e["custom_id"]: e["error"]["code"] for e in errors} == {
        "req-5": "schema_violation", "req-bad-url": "invalid_request", "req-no-body": "invalid_request"}
    by_id = {line["custom_id"]: line["response"]["body"] for line in output}
    assert len(by_id["req-1"]["choices"]) == len(by_id["req-4"]["choices"]) == 2
    assert by_id["req-1"]["object"] == "chat.completion" and by_id["req-4"]["object"] == "text_completion"
    assert by_id["req-1"]["choices"][0]["message"]["content"].startswith("question 1")
    assert (done.lines, done.rows, done.error_lines, done.rejected_requests) == (7, 9, 3, 2)


def test_a_second_export_is_byte_identical(job: tuple[str, list[str]], tmp_path: Path) -> None:
    for fmt in ("openai-batch", "jsonl", "chat"):
        a, b = tmp_path / f"a-{fmt}", tmp_path / f"b-{fmt}"
        export_job(job[0], fmt, str(a))
        export_job(job[0], fmt, str(b))
        files = BATCH_FILES if fmt == "openai-batch" else None
        pairs = [(a / n, b / n) for n in files] if files else [(a, b)]
        assert all(x.read_bytes() == y.read_bytes() and x.stat().st_size for x, y in pairs)


def test_jsonl_has_every_kept_row_with_every_column(job: tuple[str, list[str]], tmp_path: Path) -> None:
    from orchestrator.results import read_table

    done = export_job(job[0], "jsonl", str(tmp_path / "rows.jsonl"))
    table = read_table(job[0])
    assert lines(tmp_path / "rows.jsonl") == table.to_pylist() and done.rows == table.num_rows == 9


def test_chat_has_one_conversation_per_kept_row(job: tuple[str, list[str]], tmp_path: Path) -> None:
    export_job(job[0], "chat", str(tmp_path / "chat.jsonl"))
    got = lines(tmp_path / "chat.jsonl")
    assert len(got) == 9 and all(list(c) == ["messages"] and c["messages"][-1]["role"] == "assistant" for c in got)
    assert {c["messages"][0]["role"] for c in got} == {"user"}


def test_an_existing_destination_is_refused_and_left_as_it_was(job: tuple[str, list[str]], tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "errors.jsonl").write_text("mine\n")
    with pytest.raises(ExistsError, match="errors.jsonl exists"):
        export_job(job[0], "openai-batch", str(tmp_path / "export"))
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["errors.jsonl"]
    assert (tmp_path / "export" / "errors.jsonl").read_text() == "mine\n"
    export_job(job[0], "openai-batch", str(tmp_path / "export"), force=True)
    assert len(lines(tmp_path / "export" / "errors.jsonl")) == 3


def test_a_failed_export_leaves_nothing_at_its_names(job: tuple[str, list[str]], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(row: dict[str, Any]) -> bytes:
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(__import__("orchestrator.export.write").export.write.LINES, "chat", broken)
    with pytest.raises(RuntimeError):
        export_job(job[0], "chat", str(tmp_path / "out" / "chat.jsonl"))
    assert not (tmp_path / "out" / "chat.jsonl").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-chat")]


# --- the command ------------------------------------------------------------------------------------

def test_the_command_exports_and_says_what_it_left_out(job: tuple[str, list[str]], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "export"
    assert main(["export", job[0], "--format", "openai-batch", "--output", str(dest)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "exported 7 requests (9 rows)" in said and "3 failed requests" in said
    assert "2 requests every sample of which a gate rejected" in said
    assert main(["export", job[0], "--format", "openai-batch", "--output", str(dest)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export", job[0], "--format", "openai-batch", "--output", str(dest), "--force"]) == 0


def test_a_spec_names_its_job_folder_as_show_resolves_it(tmp_path: Path) -> None:
    import yaml

    batch_input(tmp_path / "batch.jsonl")
    spec = batch_spec(tmp_path / "out", tmp_path / "batch.jsonl")
    finished_job(spec)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True)))
    assert main(["export", str(path), "--format", "chat", "--output", str(tmp_path / "c.jsonl")]) == 0
    assert len(lines(tmp_path / "c.jsonl")) == 9


def test_a_folder_named_as_the_file_or_a_file_as_the_folder_is_refused_before_reading(
        job: tuple[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("mine")
    assert main(["export", job[0], "--format", "jsonl", "--output", str(tmp_path / "folder")]) == 2
    assert "is a folder; name a file" in capsys.readouterr().err
    assert main(["export", job[0], "--format", "openai-batch", "--output", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert list((tmp_path / "folder").iterdir()) == [] and (tmp_path / "file").read_text() == "mine"


def test_a_folder_without_a_manifest_is_one_message_and_exit_2(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "job").mkdir()
    assert main(["export", str(tmp_path / "job"), "--format", "jsonl", "--output", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "_manifest.json" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.jsonl").exists()


# --- memory -------------------------------------------------------------------------------------------

RSS_SCRIPT = """
import json, resource, sys
from orchestrator.export import export_job
import orchestrator.export.write, pyarrow.parquet
def peak():  # VmHWM: this process's own peak (ru_maxrss keeps the forking parent's across exec)
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024
base = peak()
done = export_job(sys.argv[1], "openai-batch", sys.argv[2])
print(json.dumps({"base": base, "peak": peak(), "lines": done.lines}))
"""
BIG_ROWS, BIG_SHARD = 200_000, 5_000


def big_job(out: Path) -> str:
    """A finished job of 200,000 rows whose shards are written directly with the row schema (generating
    them would take minutes), each with a completion of 330 characters: about 800 bytes per exported line."""
    import pyarrow as pa

    from orchestrator.commit import schemas
    from orchestrator.commit.shards import ShardStats, ShardTables, commit_shard
    from orchestrator.plan.planner import row_id

    spec = parse_spec({"name": "big", "model": {"path": "fake", "engine": "fake"},
                       "prompts": {"template": {"text": "q {{ i }}", "seeds": {"i": {"uniform_int": [0, 2]}},
                                                "rows": BIG_ROWS}},
                       "sampling": {"max_tokens": 60}, "output": {"uri": str(out), "rows_per_shard": BIG_SHARD},
                       "quality": {"sample_rows": 10},
                       "resources": {"gpus_per_worker": 0}})
    job = prepare(spec)
    known = {}
    for shard in job.plan.shards():
        n, first = shard.end - shard.start, shard.start
        rows = {"row_id": [row_id(job.plan.spec_hash, first + k) for k in range(n)], "sample_index": [0] * n,
                "prompt": [f"q {k % 3}" for k in range(n)], "completion": [f"{first + k:08d} " + "tok " * 80
                                                                            for k in range(n)],
                "finish_reason": ["length"] * n, "prompt_tokens": [2] * n, "completion_tokens": [60] * n,
                "i": [k % 3 for k in range(n)], "lineage": [dict(LINEAGE, spec_hash=job.plan.spec_hash)] * n}
        schema = schemas.data_schema(spec)
        data = pa.Table.from_pydict({f.name: rows.get(f.name, [None] * n) for f in schema}, schema=schema)
        stats = ShardStats(index=shard.index, attempt=1, rows_ok=n, rows_failed=0, prompt_tokens=2 * n,
                           completion_tokens=60 * n, seconds=0.0, model_revision="rev1")
        tables = ShardTables(data, schemas.errors_schema(spec).empty_table(),
                             schemas.rejected_schema(spec).empty_table())
        known[shard.index] = commit_shard(job.store, job.plan.of, tables, stats).stats
    finalize(job.store, spec, job.plan, known, started_at=0.0)
    return job.store.uri


def test_a_200k_row_job_exports_with_flat_memory(tmp_path: Path) -> None:
    """Peak RSS of a fresh process exporting 200,000 rows (about 150 MB of lines) grows by what a shard
    and a record batch take, not by the job: the lines are streamed to the file as they are made."""
    import subprocess
    import sys

    uri = big_job(tmp_path / "out")
    dest = tmp_path / "export"
    got = subprocess.run([sys.executable, "-c", RSS_SCRIPT, uri, str(dest)], check=False, capture_output=True,
                         text=True, timeout=600, cwd=Path(__file__).parents[2])
    assert got.returncode == 0, got.stderr
    measured = json.loads(got.stdout)
    size = (dest / "output.jsonl").stat().st_size / 2**20
    grown = (measured["peak"] - measured["base"]) / 2**20
    assert measured["lines"] == BIG_ROWS and size > 150
    assert grown < 80, f"peak RSS grew {grown:.0f} MB exporting {size:.0f} MB of lines"
    print(f"peak RSS grew {grown:.1f} MB exporting {size:.0f} MB")
