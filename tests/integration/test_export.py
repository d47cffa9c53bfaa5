"""`synthfleet export` of a job run on real Ray (the fake engine, which echoes its prompt) from an OpenAI
Batch file to S3: every input custom_id in exactly one of the output and error files, in a local folder
and under an s3:// prefix alike, byte for byte; every body one the `openai` SDK's types accept; chat and
JSONL streamed to S3."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
from openai.types import Completion
from openai.types.chat import ChatCompletion

from orchestrator.cli import main
from orchestrator.run.driver import run_job
from orchestrator.spec.load import parse_spec

GATED = {"req-3", "req-17"}  # prompts the spec's filter rejects: answered, then filtered out


def batch_file(path: Path) -> list[str]:
    """37 requests: chat and completion, some with n=3; one asking for JSON the fake engine cannot give
    (schema_violation); two the filter rejects; three invalid. Returns every custom_id."""
    lines = []
    for i in range(34):
        text = f"reject-me {i}" if f"req-{i}" in GATED else f"question {i}"
        body: dict[str, Any] = {"model": "gpt-x", "max_tokens": 3}
        chat = i % 2 == 1
        body |= {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}
        body |= {"n": 3} if i % 5 == 0 else {}
        body |= {"response_format": {"type": "json_object"}} if i == 9 else {}
        url = "/v1/chat/completions" if chat else "/v1/completions"
        lines.append(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}))
    lines.append(json.dumps({"custom_id": "req-bad-url", "method": "POST", "url": "/v1/embeddings", "body": {}}))
    lines.append(json.dumps({"custom_id": "req-no-body", "method": "POST", "url": "/v1/completions"}))
    lines.append(json.dumps({"custom_id": "req-bad-messages", "method": "POST", "url": "/v1/chat/completions",
                             "body": {"messages": "hello"}}))
    path.write_text("\n".join(lines) + "\n")
    return [json.loads(line)["custom_id"] for line in lines]


def read_lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines()]


def test_a_batch_job_on_s3_exports_every_request_exactly_once_to_a_folder_and_to_s3(
        ray_runtime: None, bucket: str, tmp_path: Path, capsys: Any) -> None:
    ids = batch_file(tmp_path / "batch.jsonl")
    spec = parse_spec({
        "name": "export", "model": {"path": "fake-model", "engine": "fake",
                                    "engine_args": {"tokens_per_s": 2000, "echo": True}},
        "prompts": {"openai_batch": {"uri": str(tmp_path / "batch.jsonl")}}, "sampling": {"max_tokens": 3},
        "filters": {"deny": ["^reject-me"]}, "output": {"uri": f"s3://{bucket}/jobs", "rows_per_shard": 6},
        "resources": {"workers": 2, "gpus_per_worker": 0, "cpus_per_worker": 0}})
    result = run_job(spec)
    assert (result.rows_failed, result.rows_rejected) == (4, 2)
    local = tmp_path / "export"
    for dest in (str(local), f"s3://{bucket}/exports/batch"):
        assert main(["export", result.uri, "--format", "openai-batch", "--output", dest]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "2 requests every sample of which a gate rejected" in said

    s3 = boto3.client("s3")
    for name in ("output.jsonl", "errors.jsonl"):  # the same bytes in both places
        assert s3.get_object(Bucket=bucket, Key=f"exports/batch/{name}")["Body"].read() == (local / name).read_bytes()
    output, errors = (read_lines((local / name).read_bytes()) for name in ("output.jsonl", "errors.jsonl"))
    seen = Counter(line["custom_id"] for line in output + errors)
    assert set(seen.values()) == {1} and set(seen) == set(ids) - GATED
    for line in output:
        body = line["response"]["body"]
        got = (ChatCompletion if body["object"] == "chat.completion" else Completion).model_validate(body)
        custom = line["custom_id"]
        assert len(got.choices) == (3 if int(custom.split("-")[1]) % 5 == 0 else 1)
        assert got.choices[0].model_dump()["message" if body["object"] == "chat.completion" else "text"]
    assert {e["custom_id"]: e["error"]["code"] for e in errors} == {
        "req-9": "schema_violation", "req-bad-url": "invalid_request", "req-no-body": "invalid_request",
        "req-bad-messages": "invalid_request"}

    for fmt in ("chat", "jsonl"):  # streamed to S3 as well, and never over an existing object
        key = f"exports/{fmt}.jsonl"
        assert main(["export", result.uri, "--format", fmt, "--output", f"s3://{bucket}/{key}"]) == 0
        assert len(read_lines(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) == result.rows_ok
        assert main(["export", result.uri, "--format", fmt, "--output", f"s3://{bucket}/{key}"]) == 2
    chats = read_lines(s3.get_object(Bucket=bucket, Key="exports/chat.jsonl")["Body"].read())
    assert all(c["messages"][-1]["content"].startswith(c["messages"][-2]["content"]) for c in chats)  # echoed
