"""OpenAI's Batch API on the coordinator, with the real `openai` SDK as the client: upload, create, poll,
download, list and cancel as OpenAI documents them, on real vLLM (the session's warm pool) and, where only
the lifecycle is under test (cancel, expiry, restart), on the sleeping fake engine.

Every check is against what the test planted: which requests it made fail and how, which custom_ids it
sent, what the job folder committed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pyarrow.parquet as pq
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from orchestrator.client import Client
from orchestrator.openai_api.served import ServedModel
from orchestrator.spec.job import Resources
from orchestrator.spec.model import ModelSpec
from tests.integration.conftest import make_spec

DONE = ("completed", "failed", "expired", "cancelled")


def fake_model(tokens_per_s: float = 400.0, rows_per_shard: int = 4) -> ServedModel:
    return ServedModel(model=ModelSpec(path="fake", engine="fake", engine_args={"tokens_per_s": tokens_per_s}),
                       resources=Resources(workers=1, gpus_per_worker=0, cpus_per_worker=0, shards_in_flight=1),
                       rows_per_shard=rows_per_shard)


def chat_request(custom_id: str, model: str, content: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}], **body}}


def jsonl(requests: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in requests).encode()


def sdk(client: Client) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{client.url}/v1", api_key=client.token, max_retries=0)


def wait(oa: openai.OpenAI, batch_id: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    batch = oa.batches.retrieve(batch_id)
    while batch.status not in DONE:
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout} s"
        time.sleep(0.3)
        batch = oa.batches.retrieve(batch_id)
    return batch


def lines(oa: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    return [] if file_id is None else [json.loads(x) for x in oa.files.content(file_id).text.splitlines()]


@pytest.fixture()
def served(pool: Any, tiny_model: Path, tmp_path: Path) -> Iterator[Client]:
    """A server whose `tiny` is the session's warm vLLM pool and whose `slow` is the fake engine."""
    spec = make_spec(tiny_model, "unused", {"template": {"text": "x"}})
    models = {"tiny": ServedModel(model=spec.model, resources=spec.resources, rows_per_shard=4,
                                  sampling=spec.sampling.model_copy(update={"max_tokens": 12})),
              "slow": fake_model(tokens_per_s=8)}
    with Client.local(str(tmp_path / "state"), pools=[pool], models=models, max_running_jobs=2) as client:
        yield client


def test_the_documented_flow_on_vllm_through_the_openai_sdk(served: Client, tmp_path: Path) -> None:
    oa = sdk(served)
    good = [chat_request(f"q-{i}", "tiny", f"Write a line about topic {i}.", max_tokens=6 + i % 4, seed=i)
            for i in range(12)]
    planted_failures = {"bad-temperature": chat_request("bad-temperature", "tiny", "x", temperature=-3),
                        "too-long": chat_request("too-long", "tiny", "word " * 600)}
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(good[:6] + list(planted_failures.values()) + good[6:]))

    uploaded = oa.files.create(file=path.open("rb"), purpose="batch")
    assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == ("batch", path.stat().st_size, "requests.jsonl")
    assert oa.files.retrieve(uploaded.id) == uploaded and uploaded.id in [f.id for f in oa.files.list()]
    assert oa.files.content(uploaded.id).content == path.read_bytes()

    created = oa.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                completion_window="24h", metadata={"team": "synthetic-data"})
    assert created.status in ("validating", "in_progress") and created.metadata == {"team": "synthetic-data"}
    assert created.expires_at == created.created_at + 24 * 3600
    batch = wait(oa, created.id)

    assert batch.status == "completed" and batch.model == "tiny"
    assert batch.request_counts.total == 14
    assert (batch.request_counts.completed, batch.request_counts.failed) == (12, 2)
    assert batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.failed_at is None and batch.errors is None
    output, errors = lines(oa, batch.output_file_id), lines(oa, batch.error_file_id)
    assert sorted(r["custom_id"] for r in output) == sorted(r["custom_id"] for r in good)
    assert {r["custom_id"] for r in errors} == set(planted_failures)
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = ChatCompletion.model_validate(line["response"]["body"])  # the SDK's own type
        asked = next(r for r in good if r["custom_id"] == line["custom_id"])["body"]["max_tokens"]
        assert body.model == "tiny" and len(body.choices) == 1 and body.choices[0].message.content
        assert body.usage is not None and 1 <= body.usage.completion_tokens <= asked
    for line in errors:
        assert line["response"] is None and line["error"]["code"] and line["error"]["message"]
    assert batch.usage.output_tokens == sum(x["response"]["body"]["usage"]["completion_tokens"] for x in output)
    assert batch.usage.input_tokens >= sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in output) > 0
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens

    output_file = oa.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output" and output_file.bytes == len(oa.files.content(output_file.id).content)
    listed = list(oa.batches.list(limit=1))  # auto-pagination walks `after` one batch at a time
    assert [b.id for b in listed] == [batch.id] and listed[0].status == "completed"


def test_completions_endpoint_answers_text_completion_bodies(served: Client, tmp_path: Path) -> None:
    oa = sdk(served)
    requests = [{"custom_id": f"c-{i}", "method": "POST", "url": "/v1/completions",
                 "body": {"model": "tiny", "prompt": f"Once upon a time {i}", "max_tokens": 5, "n": 2}}
                for i in range(3)]
    file = oa.files.create(file=("completions.jsonl", jsonl(requests)), purpose="batch")
    batch = wait(oa, oa.batches.create(input_file_id=file.id, endpoint="/v1/completions",
                                       completion_window="24h").id)
    assert batch.status == "completed" and batch.error_file_id is None
    output = lines(oa, batch.output_file_id)
    assert sorted(r["custom_id"] for r in output) == ["c-0", "c-1", "c-2"]
    for line in output:
        body = Completion.model_validate(line["response"]["body"])
        assert body.object == "text_completion" and [c.index for c in body.choices] == [0, 1]


def test_cancel_through_the_sdk_delivers_what_was_done_and_every_request_once(served: Client,
                                                                              tmp_path: Path) -> None:
    oa = sdk(served)
    requests = [chat_request(f"r-{i:02d}", "slow", f"request {i}", max_tokens=8) for i in range(40)]
    file = oa.files.create(file=("slow.jsonl", jsonl(requests)), purpose="batch")
    batch = oa.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    while oa.batches.retrieve(batch.id).request_counts.completed < 4:
        time.sleep(0.2)
    cancelling = oa.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    batch = wait(oa, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at >= batch.cancelling_at
    output, errors = lines(oa, batch.output_file_id), lines(oa, batch.error_file_id)
    committed = _committed_custom_ids(served, batch.id)
    assert 4 <= len(committed) < 40
    assert sorted(r["custom_id"] for r in output) == sorted(committed)  # exactly what the job committed
    assert sorted(r["custom_id"] for r in output + errors) == [r["custom_id"] for r in requests]
    assert {r["error"]["code"] for r in errors} == {"batch_cancelled"}
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        40, len(committed), 40 - len(committed))
    with pytest.raises(openai.ConflictError) as e:
        oa.batches.cancel(batch.id)
    assert e.value.code == "batch_not_cancellable"


def test_an_expired_window_marks_the_batch_expired_and_still_delivers_what_is_done(served: Client) -> None:
    oa = sdk(served)
    warm = oa.files.create(file=("warm.jsonl", jsonl([chat_request("w", "slow", "w", max_tokens=1)])), purpose="batch")
    assert wait(oa, oa.batches.create(input_file_id=warm.id, endpoint="/v1/chat/completions",
                                      completion_window="24h").id).status == "completed"  # the pool is up
    requests = [chat_request(f"e-{i:02d}", "slow", f"request {i}", max_tokens=8) for i in range(40)]
    file = oa.files.create(file=("expiring.jsonl", jsonl(requests)), purpose="batch")
    created = oa.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                completion_window="4s")  # 40 requests at one second a shard of 4 take ~10 s
    assert created.expires_at == created.created_at + 4
    batch = wait(oa, created.id)
    assert batch.status == "expired" and batch.expired_at >= created.expires_at
    output, errors = lines(oa, batch.output_file_id), lines(oa, batch.error_file_id)
    committed = _committed_custom_ids(served, batch.id)
    assert 0 < len(committed) < 40 and sorted(r["custom_id"] for r in output) == sorted(committed)
    assert sorted(r["custom_id"] for r in output + errors) == [r["custom_id"] for r in requests]
    assert {r["error"]["code"] for r in errors} == {"batch_expired"}


def test_an_unknown_model_fails_the_batch_with_openai_errors(served: Client) -> None:
    oa = sdk(served)
    requests = [chat_request("a", "tiny", "x"), chat_request("b", "gpt-9", "y")]
    file = oa.files.create(file=("unknown.jsonl", jsonl(requests)), purpose="batch")
    batch = wait(oa, oa.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                       completion_window="24h").id)
    assert batch.status == "failed" and batch.failed_at is not None and batch.output_file_id is None
    assert batch.errors is not None and len(batch.errors.data) == 1
    error = batch.errors.data[0]
    assert (error.code, error.line, error.param) == ("model_not_found", 2, "body.model")
    assert "'gpt-9'" in str(error.message) and "slow, tiny" in str(error.message)
    assert served.jobs() == []  # nothing queued


def test_bad_input_gets_openai_errors_and_nothing_is_stored_or_queued(served: Client) -> None:
    oa = sdk(served)
    good = jsonl([chat_request("ok", "slow", "hello", max_tokens=2)])
    refused: list[tuple[type[openai.APIStatusError], str | None, str | None, Any]] = []

    def refuse(call: Any) -> None:
        with pytest.raises(openai.APIStatusError) as e:
            call()
        refused.append((type(e.value), e.value.param, e.value.code, e.value.body))

    refuse(lambda: oa.files.create(file=("doc.pdf", b"%PDF-1.7\n\x00\x01binary"), purpose="batch"))
    refuse(lambda: oa.files.create(file=("bad.jsonl", good + b'{"custom_id": "x", "method": "POST"\n' +
                                         jsonl([chat_request("ok2", "slow", "hi")])), purpose="batch"))
    refuse(lambda: oa.files.create(file=("dup.jsonl", good + jsonl([chat_request("ok", "slow", "again")])),
                                   purpose="batch"))
    refuse(lambda: oa.files.create(file=("ft.jsonl", good), purpose="fine-tune"))
    refuse(lambda: oa.batches.create(input_file_id="file-doesnotexist", endpoint="/v1/chat/completions",
                                     completion_window="24h"))
    file = oa.files.create(file=("good.jsonl", good), purpose="batch")
    refuse(lambda: oa.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h"))
    refuse(lambda: oa.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                     completion_window="forever"))
    refuse(lambda: openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0).files.list())

    assert [(kind, param, code) for kind, param, code, _ in refused] == [
        (openai.BadRequestError, "file", "invalid_file"),
        (openai.BadRequestError, "file", "invalid_file"),
        (openai.BadRequestError, "file", "duplicate_custom_id"),
        (openai.BadRequestError, "purpose", "invalid_value"),
        (openai.NotFoundError, "input_file_id", None),
        (openai.BadRequestError, "endpoint", "invalid_value"),
        (openai.BadRequestError, "completion_window", "invalid_value"),
        (openai.AuthenticationError, None, "invalid_api_key"),
    ]
    for _, _, _, body in refused:  # OpenAI's error shape, as the SDK received it
        assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    messages = [body["message"] for _, _, _, body in refused]
    assert "line 1: not valid JSON" in messages[0]
    assert "line 2: " in messages[1] and "line 1" not in messages[1] and "line 3" not in messages[1]
    assert "'ok' is on line 1 and again on line 2" in messages[2]

    assert [f.id for f in oa.files.list()] == [file.id]  # only the good upload is stored
    assert list(oa.batches.list()) == [] and served.jobs() == []  # nothing queued
    batch = wait(oa, oa.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                       completion_window="24h").id)
    assert batch.status == "completed"  # and the service is healthy afterwards
    deadline = time.monotonic() + 10  # the lifecycle loop counts batches by status for /metrics
    while 'synthfleet_batches{status="completed"} 1.0' not in httpx.get(f"{served.url}/metrics").text:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with pytest.raises(openai.NotFoundError):
        oa.files.delete("file-doesnotexist")
    assert oa.files.delete(file.id).deleted and [f.id for f in oa.files.list(purpose="batch")] == []


def test_files_and_batches_live_in_the_s3_state_store_across_a_restart(ray_runtime: None, bucket: str) -> None:
    state, models = f"s3://{bucket}/state", {"slow": fake_model(tokens_per_s=20)}
    requests = [chat_request(f"s-{i}", "slow", f"request {i}", max_tokens=10) for i in range(24)]
    with Client.local(state, models=models) as first:
        oa = sdk(first)
        file = oa.files.create(file=("s3.jsonl", jsonl(requests)), purpose="batch")
        batch = oa.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        while oa.batches.retrieve(batch.id).request_counts.completed < 4:
            time.sleep(0.2)
    with Client.local(state, models=models) as second:  # a new server on the same state: it resumes the batch
        oa = sdk(second)
        assert oa.files.content(file.id).content == jsonl(requests)
        batch = wait(oa, batch.id)
        assert batch.status == "completed" and batch.request_counts.completed == 24
        output = lines(oa, batch.output_file_id)
        assert sorted(r["custom_id"] for r in output) == sorted(r["custom_id"] for r in requests)


def _committed_custom_ids(client: Client, batch_id: str) -> list[str]:
    """The custom_ids in the data shards the batch's job committed, read from its folder."""
    job = next(j for j in client.jobs() if j.id.startswith("batch-" + batch_id.removeprefix("batch_")))
    folder = Path(job.status().output) / "data"
    return [c for f in sorted(folder.glob("*.parquet")) for c in pq.read_table(f).column("custom_id").to_pylist()]


def test_the_readme_snippet_runs_as_it_is_written(served: Client, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).parents[2]
    section = (root / "README.md").read_text().split("## OpenAI Batch API", 1)[1].split("\n## ", 1)[0]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    requests = [json.loads(x) for x in (root / "examples" / "batch_requests.jsonl").read_text().splitlines()]
    monkeypatch.chdir(root)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{served.url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", str(served.token))
    exec(compile(snippet, "README.md", "exec"), {})  # noqa: S102 - the project's own README
    printed = capsys.readouterr().out
    status = printed.split("\n", 1)[0]
    assert status.startswith("completed ") and f"completed={len(requests)}, failed=0, total={len(requests)}" in status
    starts = [printed.find(f"\n{r['custom_id']} ") for r in requests]  # a completion may span lines
    assert -1 not in starts and starts == sorted(starts)
