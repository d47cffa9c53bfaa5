"""The Batch API's checks and shapes without Ray: upload validation against planted bad lines and
duplicates, create-request validation field by field, completion windows, pagination, served-model
configuration, and the HTTP layer's limits and error shapes (a FastAPI test client on the routes)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.openai_api.batch_objects import checked_create, file_problems, window_seconds
from orchestrator.openai_api.batches import BatchService
from orchestrator.openai_api.errors import OpenAIError
from orchestrator.openai_api.files import FileObject, FileRecord, page, scan_batch_file
from orchestrator.openai_api.routes import openai_authorized, openai_router
from orchestrator.openai_api.served import ServedModel, model_option, models_file, served_models
from orchestrator.service.api import bearer_matches
from orchestrator.spec.model import ModelSpec
from orchestrator.storage.memory import MemoryStore


def request(custom_id: str, model: str = "m", url: str = "/v1/chat/completions") -> bytes:
    body: dict[str, Any] = {"model": model}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if url.endswith("chat/completions")
                else {"prompt": "hi"})
    return (json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}) + "\n").encode()


def record() -> FileRecord:
    return FileRecord(file=FileObject(id="file-x", bytes=0, created_at=0, filename="f", purpose="batch"),
                      created_ns=0)


def scan(data: bytes) -> FileRecord:
    r = record()
    scan_batch_file(io.BytesIO(data), r)
    return r


def refusal(data: bytes) -> OpenAIError:
    with pytest.raises(OpenAIError) as e:
        scan(data)
    assert e.value.status == 400 and e.value.param == "file"
    return e.value


# --- upload validation ----------------------------------------------------------------------------

def test_a_valid_file_records_its_requests_models_and_urls_by_first_line() -> None:
    data = (b"\xef\xbb\xbf" + request("a") + b"\n   \n" + request("b", "other") + request("c", url="/v1/completions")
            + request("d"))
    r = scan(data)
    assert r.requests == 4  # blank lines are not requests
    assert r.models == {"m": 1, "other": 4} and r.urls == {"/v1/chat/completions": 1, "/v1/completions": 5}


def test_bad_lines_are_named_by_their_line_numbers_and_why() -> None:
    lines = [request("a"), b"not json\n", request("b"), b'["a list"]\n', b'{"custom_id": "c\xff"}\n',
             json.dumps({"custom_id": "d", "method": "GET", "url": "/v1/chat/completions", "body": {}}).encode() + b"\n",
             json.dumps({"custom_id": 7, "method": "POST", "url": "/v1/completions", "body": {}}).encode() + b"\n",
             json.dumps({"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {}}).encode() + b"\n",
             json.dumps({"custom_id": "f", "method": "POST", "url": "/v1/completions",
                         "body": {"model": "m", "prompt": ["list"]}}).encode() + b"\n"]
    e = refusal(b"".join(lines))
    assert e.code == "invalid_file"
    assert "line 2: not valid JSON" in e.message and "line 4: not a JSON object" in e.message
    assert "line 5: not valid UTF-8 (byte 0xff" in e.message
    assert "(and 4 more bad lines)" in e.message  # lines 6, 7, 8 and 9, past the three shown
    assert "line 1:" not in e.message and "line 3:" not in e.message


@pytest.mark.parametrize(("line", "why"), [
    ({"custom_id": "", "method": "POST", "url": "/v1/completions", "body": {}}, "`custom_id` must be a non-empty"),
    ({"custom_id": "a", "method": "GET", "url": "/v1/completions", "body": {}}, "`method` must be POST"),
    ({"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}, "'/v1/embeddings' is not supported"),
    ({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": "x"}, "`body` must be an object"),
    ({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}, "`body.model`"),
    ({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}},
     "non-empty `messages`"),
    ({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": "m"}}, "a string `prompt`"),
    ({"custom_id": "a", "url": "/v1/completions", "body": {"model": "m", "prompt": "x"}}, "missing method"),
])
def test_each_malformed_request_is_refused_with_its_reason(line: dict[str, Any], why: str) -> None:
    e = refusal(json.dumps(line).encode() + b"\n")
    assert "line 1: " in e.message and why in e.message.replace("`method` must be POST (got None)", "missing method")


def test_duplicate_custom_ids_name_both_lines_and_how_many_repeat() -> None:
    data = b"".join([request("a"), request("b"), request("c"), request("b"), request("d"), request("a")])
    e = refusal(data)
    assert e.code == "duplicate_custom_id"
    assert "'b' is on line 2 and again on line 4 (2 custom_ids repeat)" in e.message


def test_an_empty_or_blank_file_is_refused() -> None:
    for data in (b"", b"\n \n"):
        assert "no requests" in refusal(data).message


# --- batch creation -------------------------------------------------------------------------------

GOOD = {"input_file_id": "file-1", "endpoint": "/v1/chat/completions", "completion_window": "24h"}


@pytest.mark.parametrize(("change", "param", "code"), [
    ({"input_file_id": None}, "input_file_id", "missing_required_parameter"),
    ({"endpoint": 3}, "endpoint", "missing_required_parameter"),
    ({"completion_window": ""}, "completion_window", "missing_required_parameter"),
    ({"endpoint": "/v1/embeddings"}, "endpoint", "invalid_value"),
    ({"endpoint": "/v1/responses"}, "endpoint", "invalid_value"),
    ({"completion_window": "48"}, "completion_window", "invalid_value"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value"),
    ({"metadata": {"k" * 65: "v"}}, "metadata", "invalid_value"),
    ({"metadata": {"k": "v" * 513}}, "metadata", "invalid_value"),
    ({"metadata": {"k": 1}}, "metadata", "invalid_value"),
    ({"temperature": 1}, "temperature", "unknown_parameter"),
])
def test_a_bad_create_request_names_its_field(change: dict[str, Any], param: str, code: str) -> None:
    body = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(OpenAIError) as e:
        checked_create(body)
    assert (e.value.status, e.value.param, e.value.code) == (400, param, code)


def test_a_good_create_request_and_its_limits() -> None:
    metadata = {f"k{i}": "v" * 512 for i in range(16)}
    assert checked_create({**GOOD, "metadata": metadata}) == ("file-1", "/v1/chat/completions", "24h", metadata)


@pytest.mark.parametrize(("window", "seconds"), [("24h", 86400), ("30m", 1800), ("1s", 1), ("7d", 604800)])
def test_completion_windows(window: str, seconds: int) -> None:
    assert window_seconds(window) == seconds


@pytest.mark.parametrize("window", ["0h", "8d", "24", "1.5h", "-1h", "24H", " 24h", 24, None])
def test_completion_windows_refused(window: Any) -> None:
    with pytest.raises(OpenAIError):
        window_seconds(window)


def test_a_file_that_does_not_fit_the_batch_fails_it_with_the_lines_at_fault() -> None:
    served = {"m": ServedModel(model=ModelSpec(path="/models/m")), "n": ServedModel(model=ModelSpec(path="/n"))}
    f = record()
    f.models, f.urls = {"m": 1, "gpt-9": 5}, {"/v1/chat/completions": 1, "/v1/completions": 3}
    found = {(p.code, p.line, p.param) for p in file_problems(f, "/v1/chat/completions", served)}
    assert found == {("mismatched_endpoint", 3, "url"), ("model_not_found", 5, "body.model")}
    f.models, f.urls = {"n": 4, "m": 2}, {"/v1/chat/completions": 2}
    [mixed] = file_problems(f, "/v1/chat/completions", served)
    assert (mixed.code, mixed.line) == ("mismatched_model", 4) and "line 2 asks for 'm'" in mixed.message
    f.models = {"m": 1}
    assert file_problems(f, "/v1/chat/completions", served) == []
    [none] = file_problems(f, "/v1/chat/completions", {})
    assert "--model NAME=PATH_OR_ID" in none.message


def test_pages_walk_every_item_once_in_order() -> None:
    items = [SimpleNamespace(id=f"i{n:02d}", model_dump=lambda n=n: {"id": f"i{n:02d}"}) for n in range(25)]
    seen, after, pages = [], None, 0
    while True:
        p = page(items, after, 10)
        seen += [d["id"] for d in p["data"]]
        pages += 1
        if not p["has_more"]:
            break
        after = p["last_id"]
    assert seen == [i.id for i in items] and pages == 3
    assert page(items, "i24", 10) == {"object": "list", "data": [], "first_id": None, "last_id": None,
                                      "has_more": False}
    with pytest.raises(OpenAIError) as e:
        page(items, "nope", 10)
    assert e.value.param == "after"


# --- served models --------------------------------------------------------------------------------

def test_model_options_are_local_folders_or_hub_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    name, served = model_option("tiny=models/tiny")
    assert name == "tiny" and served.model.path == str(tmp_path / "models" / "tiny") and served.model.id is None
    name, served = model_option("llama=meta-llama/Llama-3.1-8B-Instruct")
    assert name == "llama" and served.model.id == "meta-llama/Llama-3.1-8B-Instruct" and served.model.path is None
    for bad in ("tiny", "tiny=", "=models/tiny", " tiny=models/tiny"):
        with pytest.raises(SpecError):
            model_option(bad)


def test_a_models_file_resolves_paths_and_names_each_problem(tmp_path: Path) -> None:
    good = tmp_path / "models.yaml"
    good.write_text("tiny:\n  model: {path: weights/tiny, max_model_len: 256}\n"
                    "  resources: {workers: 2, gpus_per_worker: 0}\n  sampling: {max_tokens: 64}\n")
    served = models_file(good)
    assert served["tiny"].model.path == str(tmp_path / "weights" / "tiny")
    assert served["tiny"].resources is not None and served["tiny"].resources.workers == 2
    assert served["tiny"].sampling.max_tokens == 64
    bad = tmp_path / "bad.yaml"
    bad.write_text("a:\n  model: {path: x}\n  resources: {workers: 0}\nb:\n  model: {path: y}\n  colour: red\n")
    with pytest.raises(SpecError) as e:
        models_file(bad)
    assert [p.path.split(": ", 1)[1] for p in e.value.problems] == ["a.resources.workers", "b.colour"]
    with pytest.raises(SpecError) as e:
        served_models(["tiny=/somewhere"], str(good))
    assert "given twice" in str(e.value)


def test_serve_refuses_a_bad_model_option_before_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "0", "--model", "no-equals-sign"]) == 2
    assert "--model: 'no-equals-sign': give NAME=PATH_OR_ID" in capsys.readouterr().err


# --- the HTTP layer -------------------------------------------------------------------------------

@pytest.fixture()
def http() -> tuple[TestClient, MemoryStore]:
    """The routes on an in-memory state store (no coordinator: files only), a 1,000-byte file limit."""
    store = MemoryStore()
    service = BatchService(SimpleNamespace(records=SimpleNamespace(store=store)), {})  # type: ignore[arg-type]
    app = FastAPI()
    app.add_exception_handler(OpenAIError, lambda _, e: e.response())  # type: ignore[arg-type, attr-defined]
    app.include_router(openai_router(service, openai_authorized("tok", bearer_matches), 1000))
    return TestClient(app, headers={"Authorization": "Bearer tok"}), store


def test_uploads_over_the_limit_get_413_and_nothing_is_stored(http: tuple[TestClient, MemoryStore]) -> None:
    client, store = http
    big = b"".join(request(f"id-{i}") for i in range(20))
    assert len(big) > 1000
    r = client.post("/v1/files", files={"file": ("big.jsonl", big)}, data={"purpose": "batch"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}

    def chunks() -> Any:  # a chunked body: no Content-Length to refuse it by
        yield b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.jsonl\"\r\n\r\n"
        for _ in range(2000):
            yield big
        yield b"\r\n--b--\r\n"

    r = client.post("/v1/files", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    assert list(store.list()) == []
    small = request("one")
    r = client.post("/v1/files", files={"file": ("ok.jsonl", small)}, data={"purpose": "batch"})
    assert r.status_code == 200 and r.json()["bytes"] == len(small)
    file_id = r.json()["id"]
    assert client.get(f"/v1/files/{file_id}/content").content == small
    assert sorted(store.list()) == [f"files/{file_id}.json", f"files/{file_id}.jsonl"]
    assert client.delete(f"/v1/files/{file_id}").json() == {"id": file_id, "object": "file", "deleted": True}
    assert list(store.list()) == [] and client.get(f"/v1/files/{file_id}").status_code == 404


def test_a_form_without_a_file_and_a_missing_token_get_openai_errors(http: tuple[TestClient, MemoryStore]) -> None:
    client, _ = http
    r = client.post("/v1/files", data={"purpose": "batch"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = client.post("/v1/files", json={"purpose": "batch"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = client.get("/v1/files", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = client.get("/v1/batches/batch_nope")
    assert r.status_code == 404 and r.json()["error"]["param"] == "batch_id"
