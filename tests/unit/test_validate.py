"""Preflight of a spec against its inputs: templates rendered on the first rows, input columns,
unique custom_ids, model lengths and the output folder. Each problem names its field and what to do."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import defaults
from orchestrator.errors import Problem, SpecError
from orchestrator.run.preflight import check_spec, spec_problems, spec_warnings
from orchestrator.spec.job import JobSpec
from tests.unit.specs import file_spec, make_spec

BATCH = {"method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "hi"}]}}


def problems(spec: JobSpec) -> list[Problem]:
    return spec_problems(spec, check_output=False)


def only(found: list[Problem], path: str) -> Problem:
    assert [p.path for p in found] == [path], found
    return found[0]


def template(text: str | None = None, *, messages: list[dict[str, str]] | None = None,
             **seeds: list[Any]) -> JobSpec:
    source: dict[str, Any] = {"seeds": seeds or {"w": ["a", "b"]}}
    source.update({"text": text} if messages is None else {"messages": messages})
    return make_spec(prompts={"template": source})


def write_jsonl(path: Path, lines: list[Any]) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def batch_file(tmp_path: Path, ids: list[Any]) -> str:
    return write_jsonl(tmp_path / "batch.jsonl", [{"custom_id": i, **BATCH} for i in ids])


# --- item 10: a template failing on every row is a spec error ---------------------------------

def test_a_template_failing_on_every_row_is_refused_on_its_field() -> None:
    problem = only(problems(template("{{ ''.__class__ }}")), "prompts.template.text")
    assert "SecurityError" in problem.message and "each of the first 2 rows" in problem.message


def test_an_undefined_attribute_names_the_failing_message() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "{{ w.missing }}"}]
    problem = only(problems(template(messages=messages)), "prompts.template.messages.1.content")
    assert "UndefinedError" in problem.message and "'missing'" in problem.message


def test_a_template_failing_on_some_rows_only_warns() -> None:
    spec = template("{{ 10 // n }}", n=[0, 1, 2])
    assert problems(spec) == []
    warning = only(spec_warnings(spec), "prompts.template.text")
    assert "row 0" in warning.message and "ZeroDivisionError" in warning.message


@pytest.mark.parametrize("text,bound", [("{{ 9**(9**9) }}", "MAX_TEMPLATE_INT_BITS"),
                                        ("{{ 'a' * 1000000000 }}", "MAX_PROMPT_CHARS"),
                                        ("{{ 'a'.center(10**9) }}", "MAX_PROMPT_CHARS")])
def test_a_template_bomb_is_refused_quickly_naming_the_field_and_bound(text: str, bound: str) -> None:
    started = time.perf_counter()
    problem = only(problems(template(text)), "prompts.template.text")
    assert bound in problem.message and time.perf_counter() - started < 5


def test_a_template_too_slow_to_render_is_refused_by_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "TEMPLATE_CHECK_S", 0.02)  # each row below runs its whole step budget
    slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ w }}"
    started = time.perf_counter()
    problem = only(problems(template(slow)), "prompts.template.text")
    assert "took longer than 0.02 s" in problem.message and time.perf_counter() - started < 2


def test_a_good_template_passes_its_render_check() -> None:
    assert problems(template("Say {{ w }}")) == []


# --- item 15: warnings ------------------------------------------------------------------------

def test_a_seed_variable_the_template_never_uses_is_a_warning() -> None:
    spec = template("Say {{ w }}", w=["a", "b"], unused=[1, 2, 3])
    assert problems(spec) == []
    warning = only(spec_warnings(spec), "prompts.template.seeds.unused")
    assert "never used" in warning.message and "3" in warning.message


def test_a_template_using_every_seed_has_no_warning() -> None:
    assert spec_warnings(template("{{ w }} {{ v }}", w=["a"], v=["b"])) == []


# --- item 8: duplicate custom_ids -------------------------------------------------------------

def test_a_repeated_custom_id_is_refused_naming_both_file_lines_and_the_id(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    lines = [{"custom_id": f"r{i}", **BATCH} for i in range(5)]
    lines.insert(3, "")  # a blank line still counts in the file's numbering
    lines.append({"custom_id": "r1", **BATCH})
    problem = only(problems(file_spec(write_jsonl(path, lines), kind="openai_batch")), "prompts.openai_batch.uri")
    assert "'r1'" in problem.message and "line 2 and again on line 7" in problem.message


def test_unique_custom_ids_pass(tmp_path: Path) -> None:
    assert problems(file_spec(batch_file(tmp_path, ["a", "b", "c"]), kind="openai_batch")) == []


def test_custom_ids_are_compared_as_the_output_rows_carry_them(tmp_path: Path) -> None:
    problem = only(problems(file_spec(batch_file(tmp_path, [1, "1"]), kind="openai_batch")),
                   "prompts.openai_batch.uri")
    assert "'1'" in problem.message


def test_every_repeated_id_is_counted(tmp_path: Path) -> None:
    problem = only(problems(file_spec(batch_file(tmp_path, ["a", "b", "a", "b", "c"]), kind="openai_batch")),
                   "prompts.openai_batch.uri")
    assert "'a'" in problem.message and "line 1 and again on line 3" in problem.message
    assert "2 custom_ids repeat" in problem.message


def test_a_repeat_far_into_a_large_file_is_found(tmp_path: Path) -> None:
    ids = [f"request-{i}" for i in range(20_000)] + ["request-7"]
    problem = only(problems(file_spec(batch_file(tmp_path, ids), kind="openai_batch")), "prompts.openai_batch.uri")
    assert "line 8 and again on line 20001" in problem.message


def test_a_repeated_custom_id_on_s3_is_found(bucket: str) -> None:
    import boto3

    body = "".join(json.dumps({"custom_id": i, **BATCH}) + "\n" for i in ["x", "y", "x"])
    boto3.client("s3").put_object(Bucket=bucket, Key="in/batch.jsonl", Body=body.encode())
    problem = only(problems(file_spec(f"s3://{bucket}/in/batch.jsonl", kind="openai_batch")),
                   "prompts.openai_batch.uri")
    assert "line 1 and again on line 3" in problem.message


# --- item 13: input columns on the first rows -------------------------------------------------

def test_a_prompt_file_without_prompt_or_messages_is_refused_naming_the_line(tmp_path: Path) -> None:
    uri = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, {"text": "b"}])
    problem = only(problems(file_spec(uri)), "prompts.file.uri")
    assert "line 1: no `prompt` or `messages` column (it has: text)" in problem.message


def test_a_prompt_file_that_is_not_json_names_the_file_line(tmp_path: Path) -> None:
    uri = write_jsonl(tmp_path / "in.jsonl", ["", "prompt,text", "a,b"])
    problem = only(problems(file_spec(uri)), "prompts.file.uri")
    assert "line 2: not valid JSON" in problem.message and "line 3: not valid JSON" in problem.message


def test_a_utf16_prompt_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes((json.dumps({"prompt": "hi"}) + "\n").encode("utf-16"))
    assert "not valid UTF-8" in only(problems(file_spec(str(path))), "prompts.file.uri").message


def test_one_bad_line_among_good_ones_is_a_warning_not_an_error(tmp_path: Path) -> None:
    uri = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, "{broken", {"prompt": "c"}])
    spec = file_spec(uri)
    assert problems(spec) == []
    assert "line 2: not valid JSON" in only(spec_warnings(spec), "prompts.file.uri").message


def test_a_batch_line_without_url_and_body_is_refused(tmp_path: Path) -> None:
    uri = write_jsonl(tmp_path / "b.jsonl", [{"custom_id": "a", "method": "POST"}])
    problem = only(problems(file_spec(uri, kind="openai_batch")), "prompts.openai_batch.uri")
    assert "missing url, body" in problem.message


def test_a_parquet_prompt_file_without_the_columns_names_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"question": ["a"], "id": [1]}), path)
    problem = only(problems(file_spec(str(path))), "prompts.file.uri")
    assert "(it has: id, question)" in problem.message


def test_a_parquet_prompt_file_with_a_prompt_column_passes(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["a"]}), path)
    assert problems(file_spec(str(path))) == []


def test_a_file_named_parquet_that_is_not_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    path.write_text('{"prompt": "a"}\n')
    assert "not a readable Parquet file" in only(problems(file_spec(str(path))), "prompts.file.uri").message


def test_a_reference_file_with_a_bad_first_row_is_refused(tmp_path: Path) -> None:
    uri = write_jsonl(tmp_path / "real.jsonl", [{"completion": "a"}, {"answer": "b"}])
    spec = make_spec(quality={"reference": uri})
    assert "line 2: no `completion` or `text` or `response`" in only(problems(spec), "quality.reference").message


# --- item 14: model lengths and the output folder ---------------------------------------------

def model_folder(tmp_path: Path, **config: Any) -> str:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_max_tokens_over_max_model_len_says_which_to_lower() -> None:
    spec = make_spec(model={"id": "org/m", "max_model_len": 512}, sampling={"max_tokens": 1024})
    problem = only(problems(spec), "sampling.max_tokens")
    assert "1024 exceeds model.max_model_len=512: lower sampling.max_tokens" in problem.message


def test_max_tokens_equal_to_max_model_len_passes() -> None:
    assert problems(make_spec(model={"id": "org/m", "max_model_len": 512}, sampling={"max_tokens": 512})) == []


def test_max_model_len_over_the_models_context_is_refused(tmp_path: Path) -> None:
    path = model_folder(tmp_path, max_position_embeddings=2048)
    problem = only(problems(make_spec(model={"path": path, "max_model_len": 4096})), "model.max_model_len")
    assert "max_position_embeddings=2048" in problem.message and "at most 2048" in problem.message


def test_max_tokens_over_the_models_context_is_refused_without_max_model_len(tmp_path: Path) -> None:
    path = model_folder(tmp_path, n_positions=64)
    problem = only(problems(make_spec(model={"path": path}, sampling={"max_tokens": 128})), "sampling.max_tokens")
    assert "n_positions=64" in problem.message


def test_a_model_with_rope_scaling_is_left_to_vllm(tmp_path: Path) -> None:
    path = model_folder(tmp_path, max_position_embeddings=2048, rope_scaling={"type": "linear", "factor": 4})
    assert problems(make_spec(model={"path": path, "max_model_len": 8192})) == []


def test_a_judge_model_over_its_context_is_refused(tmp_path: Path) -> None:
    path = model_folder(tmp_path, max_position_embeddings=256)
    spec = make_spec(judge={"model": {"path": path, "max_model_len": 512}})
    assert only(problems(spec), "judge.model.max_model_len")


def test_an_output_folder_the_os_refuses_fails_validation_with_one_message() -> None:
    spec = make_spec("/proc/nope")
    problem = only(spec_problems(spec), "output.uri")
    assert "/proc/nope is not writable" in problem.message


def test_the_output_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    check_spec(make_spec(tmp_path / "not" / "yet"))
    assert list(tmp_path.iterdir()) == []


def test_check_spec_raises_every_problem_at_once(tmp_path: Path) -> None:
    uri = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    spec = file_spec(uri, model={"id": "org/m", "max_model_len": 16}, sampling={"max_tokens": 32})
    with pytest.raises(SpecError) as e:
        check_spec(spec, check_output=False)
    assert {p.path for p in e.value.problems} == {"prompts.file.uri", "sampling.max_tokens"}


# --- the service: validation never runs on the event loop; Client.submit(path) sends usable paths --

SLOW = "{{ w }}" * 15_000 + "{{ missing }}"  # analysing it takes about a second; `missing` is refused


def test_parsing_a_spec_never_analyses_its_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    import jinja2

    from orchestrator.spec.load import parse_spec
    from tests.unit.specs import spec_data

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("parse_spec parsed a template")

    monkeypatch.setattr(jinja2.Environment, "_parse", refuse)
    for text in ("{{ w ", SLOW, "{{ 9**(9**9) }}"):  # broken, slow, a bomb: all left to check_spec
        parse_spec(spec_data(prompts={"template": {"text": text, "seeds": {"w": ["a"]}}}))


def test_the_server_answers_while_it_validates_a_slow_template(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation is held until /healthz has answered: on the event loop, the health check would hang."""
    import threading

    import httpx

    import orchestrator.service.coordinator
    from tests.unit.apiserver import running_api
    from tests.unit.specs import spec_data

    validating, release = threading.Event(), threading.Event()
    real_check = orchestrator.service.coordinator.check_spec

    def held_check(spec: object, **kwargs: object) -> None:
        validating.set()
        assert release.wait(30), "the test never released the validation"
        real_check(spec, **kwargs)

    monkeypatch.setattr(orchestrator.service.coordinator, "check_spec", held_check)
    data = spec_data(tmp_path / "out", prompts={"template": {"text": SLOW, "seeds": {"w": ["a"]}}})
    with running_api(tmp_path / "state", token=None) as url:
        answer: list[httpx.Response] = []
        submit = threading.Thread(target=lambda: answer.append(httpx.post(f"{url}/v1/jobs", json={"spec": data},
                                                                          timeout=60)))
        submit.start()
        try:
            assert validating.wait(30), "the submit never reached validation"
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
            assert not answer  # the submit is still being validated
        finally:
            release.set()
            submit.join(60)
    assert answer[0].status_code == 422
    assert answer[0].json()["problems"][0]["path"] == "prompts.template.text"


def test_client_submit_of_a_path_sends_paths_the_server_can_use(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from orchestrator.client import Client
    from tests.unit.apiserver import running_api
    from tests.unit.specs import spec_data

    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_data("out", prompts={"file": {"uri": "data/missing.jsonl"}})))
    (tmp_path / "client").mkdir()
    monkeypatch.chdir(tmp_path / "client")
    with running_api(tmp_path / "state", token=None) as url, Client(url) as client:
        with pytest.raises(SpecError) as e:
            client.submit(spec)
    assert [str(p) for p in e.value.problems] == [
        f"prompts.file.uri: input file {tmp_path / 'specs' / 'data' / 'missing.jsonl'} does not exist"]
