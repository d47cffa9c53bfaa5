"""Prompt rendering: sandboxed templates, prompt files and OpenAI Batch lines, row failures not exceptions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import RowErrorCode
from orchestrator.plan.planner import make_plan
from orchestrator.spec.job import JobSpec
from tests.unit.specs import file_spec, make_spec, template_spec
from workers.prompts import PromptRow, shard_rows, template_hash


def rows_of(spec: JobSpec) -> list[PromptRow]:
    plan = make_plan(spec)
    return [row for shard in plan.shards() for row in shard_rows(spec, plan, shard)]


def only_row(spec: JobSpec) -> PromptRow:
    rows = rows_of(spec)
    assert len(rows) == 1
    return rows[0]


def chat_spec(messages: list[dict[str, str]], seeds: dict[str, list[Any]]) -> JobSpec:
    return make_spec(prompts={"template": {"messages": messages, "seeds": seeds}})


def write_lines(tmp_path: Path, lines: list[Any], name: str = "in.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


def batch_rows(tmp_path: Path, *lines: Any, **sampling: Any) -> list[PromptRow]:
    uri = write_lines(tmp_path, list(lines))
    return rows_of(file_spec(uri, kind="openai_batch", rows_per_shard=3, sampling={"max_tokens": 8, **sampling}))


def chat_request(custom_id: str | None = "r1", **body: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"method": "POST", "url": "/v1/chat/completions",
                            "body": {"model": "any", "messages": [{"role": "user", "content": "hi"}], **body}}
    if custom_id is not None:
        line["custom_id"] = custom_id
    return line


def assert_invalid_request(row: PromptRow) -> None:
    assert row.failure is not None and row.failure.code == RowErrorCode.INVALID_REQUEST
    assert row.prompt is None and row.messages is None


# --- templates --------------------------------------------------------------------------------

def test_text_template_renders_the_seed_values() -> None:
    rows = rows_of(template_spec({"word": ["a", "b"], "n": [1]}, text="{{ word }}x{{ n }}"))
    assert [r.prompt for r in rows] == ["ax1", "bx1"]
    assert [r.variables for r in rows] == [{"n": 1, "word": "a"}, {"n": 1, "word": "b"}]


def test_chat_template_renders_every_message_keeping_roles() -> None:
    spec = chat_spec([{"role": "system", "content": "Be {{ tone }}."}, {"role": "user", "content": "Hi"}],
                     {"tone": ["kind"]})
    row = only_row(spec)
    assert row.messages == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert row.prompt is None


def test_a_seed_value_with_jinja_syntax_is_inserted_literally() -> None:
    row = only_row(template_spec({"word": ["{{ 7*7 }} {% if true %}yes{% endif %}"]}, text="<{{ word }}>"))
    assert row.prompt == "<{{ 7*7 }} {% if true %}yes{% endif %}>"


def test_a_seed_value_with_jinja_syntax_is_literal_in_chat_messages() -> None:
    row = only_row(chat_spec([{"role": "user", "content": "{{ q }}"}], {"q": ["{{ 7*7 }}"]}))
    assert row.messages == [{"role": "user", "content": "{{ 7*7 }}"}]


def test_template_output_is_not_html_escaped() -> None:
    assert only_row(template_spec({"s": ["<a & b>"]}, text="{{ s }}")).prompt == "<a & b>"


@pytest.mark.parametrize("text", [
    "{{ ''.__class__.__mro__ }}",
    "{{ word.__class__.__base__.__subclasses__() }}",
    "{{ word.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
])
def test_a_template_reaching_for_python_internals_fails_its_row(text: str) -> None:
    row = only_row(template_spec({"word": ["w"]}, text=text))
    assert row.failure is not None and row.failure.code == RowErrorCode.TEMPLATE_ERROR
    assert row.prompt is None


def test_a_template_mutating_a_seed_value_fails_its_row() -> None:
    row = only_row(template_spec({"items": [[1, 2]]}, text="{{ items.append(3) }}{{ items }}"))
    assert row.failure is not None and row.failure.code == RowErrorCode.TEMPLATE_ERROR
    assert "SecurityError" in row.failure.message


def test_a_template_failing_for_some_values_fails_only_those_rows() -> None:
    rows = rows_of(template_spec({"n": [0, 1, 2]}, text="{{ 10 // n }}"))
    assert [r.failure.code if r.failure else r.prompt for r in rows] == [RowErrorCode.TEMPLATE_ERROR, "10", "5"]
    assert rows[0].failure is not None and "ZeroDivisionError" in rows[0].failure.message


def test_an_oversized_range_in_a_template_fails_its_row() -> None:
    row = only_row(template_spec({"w": ["x"]}, text="{% for i in range(10**9) %}{{ w }}{% endfor %}"))
    assert row.failure is not None and row.failure.code == RowErrorCode.TEMPLATE_ERROR


def test_an_undefined_attribute_fails_the_row_instead_of_rendering_empty() -> None:
    row = only_row(template_spec({"word": ["w"]}, text="[{{ word.missing }}]"))
    assert row.failure is not None and row.failure.code == RowErrorCode.TEMPLATE_ERROR


def test_a_failed_template_row_keeps_its_identity() -> None:
    ok, failed = rows_of(template_spec({"n": [1, 0]}, text="{{ 1 // n }}"))
    assert failed.failure is not None
    assert (failed.index, failed.variables) == (1, {"n": 0})
    assert failed.row_id != ok.row_id and failed.seed != ok.seed
    assert failed.template_hash == ok.template_hash is not None


def test_template_hash_changes_with_the_template() -> None:
    a = template_spec({"w": [1]}, text="{{ w }}").prompts.template
    b = template_spec({"w": [1]}, text="{{ w }}!").prompts.template
    assert a is not None and b is not None
    assert template_hash(a) != template_hash(b)


def test_template_hash_distinguishes_roles() -> None:
    user = chat_spec([{"role": "user", "content": "x"}], {}).prompts.template
    system = chat_spec([{"role": "system", "content": "x"}], {}).prompts.template
    assert user is not None and system is not None
    assert template_hash(user) != template_hash(system)


# --- prompt files -----------------------------------------------------------------------------

def test_file_rows_take_prompt_or_messages(tmp_path: Path) -> None:
    uri = write_lines(tmp_path, [{"prompt": "p"}, {"messages": [{"role": "user", "content": "m"}]}])
    first, second = rows_of(file_spec(uri))
    assert (first.prompt, first.messages) == ("p", None)
    assert (second.prompt, second.messages) == (None, [{"role": "user", "content": "m"}])


def test_file_row_custom_id_is_carried_as_text(tmp_path: Path) -> None:
    assert only_row(file_spec(write_lines(tmp_path, [{"prompt": "p", "custom_id": 7}]))).custom_id == "7"


@pytest.mark.parametrize("line", [
    {"text": "no prompt column"},
    {"prompt": 3},
    {"messages": [{"role": "user"}]},
    {"messages": "not a list"},
    "[1, 2, 3]",
    '{"prompt": "unterminated',
], ids=["no-prompt", "prompt-not-text", "message-without-content", "messages-not-list", "not-object", "bad-json"])
def test_an_unusable_file_line_is_an_invalid_request_row(tmp_path: Path, line: Any) -> None:
    rows = rows_of(file_spec(write_lines(tmp_path, [{"prompt": "ok"}, line, {"prompt": "ok2"}])))
    assert [r.prompt for r in rows] == ["ok", None, "ok2"]
    assert_invalid_request(rows[1])
    assert [r.index for r in rows] == [0, 1, 2]


# --- OpenAI Batch lines -----------------------------------------------------------------------

def test_a_chat_completions_line_gives_messages_and_its_custom_id(tmp_path: Path) -> None:
    (row,) = batch_rows(tmp_path, chat_request("req-1"))
    assert row.failure is None
    assert row.messages == [{"role": "user", "content": "hi"}]
    assert row.custom_id == "req-1"


def test_a_completions_line_gives_its_prompt(tmp_path: Path) -> None:
    line = {"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {"prompt": "Once"}}
    (row,) = batch_rows(tmp_path, line)
    assert (row.prompt, row.messages, row.custom_id) == ("Once", None, "c")


def test_batch_body_overrides_the_job_sampling(tmp_path: Path) -> None:
    (row,) = batch_rows(tmp_path, chat_request(max_tokens=33, temperature=0.2, n=3, stop="END"), top_p=0.5)
    s = row.sampling
    assert (s.max_tokens, s.temperature, s.n, s.stop) == (33, 0.2, 3, ["END"])
    assert s.top_p == 0.5  # not in the body: the job's value


def test_batch_body_stop_list_is_kept(tmp_path: Path) -> None:
    (row,) = batch_rows(tmp_path, chat_request(stop=["a", "b"]))
    assert row.sampling.stop == ["a", "b"]


def test_max_completion_tokens_wins_over_max_tokens(tmp_path: Path) -> None:
    (row,) = batch_rows(tmp_path, chat_request(max_tokens=10, max_completion_tokens=20))
    assert row.sampling.max_tokens == 20


def test_a_line_without_sampling_keeps_the_job_sampling(tmp_path: Path) -> None:
    (row,) = batch_rows(tmp_path, chat_request(), temperature=0.3)
    assert (row.sampling.max_tokens, row.sampling.temperature) == (8, 0.3)


def test_response_format_json_schema_becomes_the_row_schema(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    (row,) = batch_rows(tmp_path, chat_request(response_format=fmt))
    assert row.sampling.json_schema == schema


def test_a_body_seed_becomes_the_row_seed(tmp_path: Path) -> None:
    seeded, unseeded = batch_rows(tmp_path, chat_request("a", seed=42), chat_request("b"))
    assert seeded.seed == 42
    assert unseeded.seed != 42


def test_a_malformed_json_line_is_an_invalid_request_row(tmp_path: Path) -> None:
    rows = batch_rows(tmp_path, chat_request("a"), '{"custom_id": "b", "url": ', chat_request("c"))
    assert [r.custom_id for r in rows] == ["a", None, "c"]
    assert_invalid_request(rows[1])
    assert "not valid JSON" in rows[1].failure.message  # type: ignore[union-attr]


def test_an_unsupported_url_is_an_invalid_request_carrying_the_custom_id(tmp_path: Path) -> None:
    line = {**chat_request("emb-1"), "url": "/v1/embeddings"}
    (row,) = batch_rows(tmp_path, line)
    assert_invalid_request(row)
    assert row.custom_id == "emb-1"
    assert "/v1/embeddings" in row.failure.message  # type: ignore[union-attr]


def test_a_non_post_method_is_an_invalid_request(tmp_path: Path) -> None:
    (row,) = batch_rows(tmp_path, {**chat_request("g"), "method": "GET"})
    assert_invalid_request(row)
    assert row.custom_id == "g"


def test_a_line_without_custom_id_is_an_invalid_request(tmp_path: Path) -> None:
    (row,) = batch_rows(tmp_path, chat_request(None))
    assert_invalid_request(row)
    assert row.custom_id is None
    assert "custom_id" in row.failure.message  # type: ignore[union-attr]


def test_an_out_of_range_body_value_is_an_invalid_request_carrying_the_custom_id(tmp_path: Path) -> None:
    (row,) = batch_rows(tmp_path, chat_request("t", temperature=-1))
    assert_invalid_request(row)
    assert row.custom_id == "t"


def test_a_completions_line_without_a_text_prompt_is_an_invalid_request(tmp_path: Path) -> None:
    line = {"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {"prompt": ["a", "b"]}}
    (row,) = batch_rows(tmp_path, line)
    assert_invalid_request(row)


@pytest.mark.parametrize("fmt", ["json", {"type": "json_schema", "json_schema": "not an object"}])
def test_a_malformed_response_format_is_an_invalid_request(tmp_path: Path, fmt: Any) -> None:
    (row,) = batch_rows(tmp_path, chat_request("rf", response_format=fmt))
    assert_invalid_request(row)
    assert row.custom_id == "rf"


def test_every_batch_line_becomes_exactly_one_row_in_order(tmp_path: Path) -> None:
    lines = [chat_request(f"r{i}") if i % 3 else "{bad" for i in range(8)]
    rows = batch_rows(tmp_path, *lines)
    assert [r.index for r in rows] == list(range(8))
    assert [r.failure is not None for r in rows] == [i % 3 == 0 for i in range(8)]


def test_json_object_response_format_constrains_to_any_json_object() -> None:
    from orchestrator.spec.job import Sampling
    from workers.prompts import batch_sampling

    sampling = batch_sampling(Sampling(), {"response_format": {"type": "json_object"}})
    assert sampling.json_schema == {"type": "object"}


def test_unknown_response_format_type_is_an_invalid_request() -> None:
    from orchestrator.spec.job import Sampling
    from workers.prompts import batch_sampling

    with pytest.raises(ValueError, match="unsupported response_format"):
        batch_sampling(Sampling(), {"response_format": {"type": "yaml"}})


# --- errors name the file line ----------------------------------------------------------------

INVALID_UTF8 = [b'{"prompt": "caf\xe9"}', b"\xff\xfe{}", b'{"prompt": "cut \xe2\x82"}']


@pytest.mark.parametrize("kind", ["file", "openai_batch"])
@pytest.mark.parametrize("bad", INVALID_UTF8, ids=["latin-1", "utf-16-bom", "truncated-sequence"])
def test_a_line_of_invalid_utf8_is_one_invalid_request_row_naming_its_line(tmp_path: Path, kind: str,
                                                                          bad: bytes) -> None:
    good = (json.dumps({"prompt": "ok"}) if kind == "file" else json.dumps(chat_request("ok"))).encode()
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([good, b"", bad, good]) + b"\n")
    rows = rows_of(file_spec(str(path), kind=kind, rows_per_shard=10))
    assert [r.failure is None for r in rows] == [True, False, True]
    assert_invalid_request(rows[1])
    assert rows[1].failure.message.startswith("line 3: not valid UTF-8 (")  # type: ignore[union-attr]


def test_a_utf8_bom_before_the_first_line_is_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "first"}\n{"prompt": "second"}\n')
    assert [r.prompt for r in rows_of(file_spec(str(path)))] == ["first", "second"]


@pytest.mark.parametrize("line, reason", [
    ({"text": "no prompt column"}, "row has neither a string `prompt`"),
    ({"messages": "not a list"}, "messages must be a list"),
    ("[1, 2, 3]", "not a JSON object"),
    ('{"prompt": "unterminated', "not valid JSON (Unterminated string starting at column 12)"),
], ids=["no-prompt", "messages-not-list", "not-object", "bad-json"])
def test_a_file_row_error_names_the_file_line_not_a_position_in_the_line(tmp_path: Path, line: Any,
                                                                        reason: str) -> None:
    uri = write_lines(tmp_path, [{"prompt": "ok"}] * 3 + ["", "  "] + [line], name="in.jsonl")
    (bad,) = [r for r in rows_of(file_spec(uri, rows_per_shard=2)) if r.failure is not None]
    assert bad.failure is not None and bad.failure.message.startswith(f"line 6: {reason}")
    assert "char" not in bad.failure.message


@pytest.mark.parametrize("line, reason", [
    ('{"custom_id": "b", "url": ', "not valid JSON"),
    ({**chat_request("emb-1"), "url": "/v1/embeddings"}, "unsupported endpoint"),
    (chat_request(None), "request has no custom_id"),
    (chat_request("t", temperature=-1), "1 validation error"),
], ids=["bad-json", "bad-url", "no-custom-id", "bad-body-value"])
def test_a_batch_request_error_names_its_file_line(tmp_path: Path, line: Any, reason: str) -> None:
    rows = batch_rows(tmp_path, chat_request("a"), chat_request("b"), "", chat_request("c"), line)
    assert [r.failure is None for r in rows] == [True, True, True, False]
    assert rows[3].failure.message.startswith(f"line 5: {reason}")  # type: ignore[union-attr]


def test_a_parquet_row_error_names_no_file_line(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["no prompt column"]}), tmp_path / "p.parquet")
    row = only_row(file_spec(str(tmp_path / "p.parquet")))
    assert_invalid_request(row)
    assert row.failure.message.startswith("row has neither")  # type: ignore[union-attr]
