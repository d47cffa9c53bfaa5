"""The job spec: parsing (field-level problems) and preflight validation (inputs, model, output)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.errors import Problem, SpecError
from orchestrator.run.preflight import check_spec, spec_problems
from orchestrator.spec.load import load_spec, parse_spec
from tests.unit.specs import make_spec, spec_data


def problems_of(data: Any) -> list[Problem]:
    with pytest.raises(SpecError) as e:
        parse_spec(data)
    return e.value.problems


def paths(problems: list[Problem]) -> list[str]:
    return [p.path for p in problems]


def one_problem(problems: list[Problem], path: str) -> Problem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, problems
    return found[0]


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A folder validation accepts as a local model: it holds a config.json."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def local_spec_data(tmp_path: Path, model_dir: Path, **sections: Any) -> dict[str, Any]:
    return spec_data(tmp_path / "out", model={"path": str(model_dir)}, **sections)


def write_spec(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


# --- parsing: field-level problems ------------------------------------------------------------

def test_a_minimal_spec_parses_with_defaults() -> None:
    spec = make_spec()
    assert spec.sampling.temperature == 1.0
    assert spec.resources.workers == 1


def test_unknown_field_is_reported_with_its_path() -> None:
    problems = problems_of(spec_data(sampling={"temprature": 0.5}))
    assert paths(problems) == ["sampling.temprature"]
    assert "unknown field" in problems[0].message


def test_unknown_top_level_field_is_reported_with_its_name() -> None:
    assert paths(problems_of({**spec_data(), "outptu": {}})) == ["outptu"]


def test_a_spec_that_is_not_a_mapping_is_rejected() -> None:
    assert "mapping" in problems_of(["not", "a", "mapping"])[0].message


def test_two_prompt_sources_are_rejected_naming_both() -> None:
    data = spec_data(prompts={"template": {"text": "x"}, "file": {"uri": "p.jsonl"}})
    problem = one_problem(problems_of(data), "prompts")
    assert "exactly one prompt source" in problem.message
    assert "template, file" in problem.message


def test_no_prompt_source_is_rejected() -> None:
    problem = one_problem(problems_of(spec_data(prompts={})), "prompts")
    assert "exactly one prompt source" in problem.message


@pytest.mark.parametrize("model", [{"path": "/m", "id": "org/m"}, {"revision": "main"}], ids=["both", "neither"])
def test_model_needs_exactly_one_of_path_and_id(model: dict[str, str]) -> None:
    problem = one_problem(problems_of(spec_data(model=model)), "model")
    assert "exactly one of model.path" in problem.message


@pytest.mark.parametrize("template", [{"text": "x", "messages": [{"role": "user", "content": "x"}]}, {"seeds": {}}],
                         ids=["both", "neither"])
def test_template_needs_exactly_one_of_text_and_messages(template: dict[str, Any]) -> None:
    problem = one_problem(problems_of(spec_data(prompts={"template": template})), "prompts.template")
    assert "exactly one of text or messages" in problem.message


def test_seed_variable_without_values_is_rejected() -> None:
    problem = one_problem(problems_of(spec_data(prompts={"template": {"text": "x", "seeds": {"v": []}}})),
                          "prompts.template.seeds")
    assert "'v' has no values" in problem.message


def test_seed_variable_name_must_be_an_identifier() -> None:
    problem = one_problem(problems_of(spec_data(prompts={"template": {"text": "x", "seeds": {"a-b": [1]}}})),
                          "prompts.template.seeds")
    assert "not a valid identifier" in problem.message


@pytest.mark.parametrize("uri", ["out/../elsewhere", "file:///data/../etc", "s3://bucket/a/../b"])
def test_output_prefix_with_dotdot_is_rejected(uri: str) -> None:
    problem = one_problem(problems_of(spec_data(output={"uri": uri})), "output.uri")
    assert "'..'" in problem.message


def test_input_uri_with_dotdot_is_rejected() -> None:
    one_problem(problems_of(spec_data(prompts={"file": {"uri": "s3://bucket/../x.jsonl"}})), "prompts.file.uri")


def test_output_uri_with_unsupported_scheme_is_rejected() -> None:
    problem = one_problem(problems_of(spec_data(output={"uri": "gs://bucket/x"})), "output.uri")
    assert "unsupported scheme" in problem.message


def test_invalid_json_schema_is_rejected() -> None:
    problem = one_problem(problems_of(spec_data(sampling={"json_schema": {"type": "nope"}})), "sampling.json_schema")
    assert "not a valid JSON schema" in problem.message


def test_job_name_must_be_path_safe() -> None:
    one_problem(problems_of({**spec_data(), "name": "../escape"}), "name")


def test_several_field_problems_are_reported_at_once() -> None:
    data = spec_data(model={"path": "/m", "id": "org/m"}, sampling={"temperature": -1, "bogus": 1},
                     output={"uri": "a/../b"})
    assert set(paths(problems_of(data))) == {"model", "sampling.temperature", "sampling.bogus", "output.uri"}


# --- identity ---------------------------------------------------------------------------------

def test_job_id_is_the_name_and_a_prefix_of_the_content_hash() -> None:
    spec = make_spec()
    assert spec.job_id == f"unit-{spec.content_hash()[:10]}"


def test_content_hash_ignores_where_and_how_fast() -> None:
    a = make_spec("out-a")
    b = make_spec("s3://bucket/elsewhere", resources={"workers": 8, "gpus_per_worker": 0})
    assert a.content_hash() == b.content_hash()
    assert a.job_id == b.job_id


def test_content_hash_ignores_rows_per_shard() -> None:
    assert make_spec(output={"uri": "o", "rows_per_shard": 1}).job_id == make_spec(
        output={"uri": "o", "rows_per_shard": 99}).job_id


def test_moving_the_output_keeps_the_job_id() -> None:
    spec = make_spec()
    moved = spec.with_output("s3://bucket/other")
    assert moved.output.uri == "s3://bucket/other"
    assert moved.job_id == spec.job_id


@pytest.mark.parametrize("sampling", [{"max_tokens": 8, "seed": 2}, {"max_tokens": 9, "seed": 1},
                                      {"max_tokens": 8, "seed": 1, "temperature": 0.5}])
def test_sampling_changes_the_job_id(sampling: dict[str, Any]) -> None:
    assert make_spec(sampling=sampling).job_id != make_spec().job_id


def test_prompts_change_the_job_id() -> None:
    other = make_spec(prompts={"template": {"text": "Say {{ word }}!", "seeds": {"word": ["a", "b", "c"]}}})
    assert other.job_id != make_spec().job_id


# --- loading files ----------------------------------------------------------------------------

def test_load_spec_reads_yaml(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert load_spec(write_spec(tmp_path, spec_data(out))) == make_spec(out)


def test_load_spec_reads_json(tmp_path: Path) -> None:
    path, out = tmp_path / "spec.json", tmp_path / "out"
    path.write_text(json.dumps(spec_data(out)))
    assert load_spec(path) == make_spec(out)


def test_load_spec_of_a_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "absent.yaml")


def test_load_spec_of_broken_yaml_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


# --- preflight --------------------------------------------------------------------------------

def test_a_good_spec_has_no_problems(tmp_path: Path, model_dir: Path) -> None:
    spec = parse_spec(local_spec_data(tmp_path, model_dir))
    assert spec_problems(spec) == []
    check_spec(spec)


def test_template_variable_not_among_seeds_names_it_and_the_field() -> None:
    spec = make_spec(prompts={"template": {"text": "{{ word }} {{ colour }}", "seeds": {"word": ["a"]}}})
    problem = one_problem(spec_problems(spec, check_output=False), "prompts.template.text")
    assert "'colour'" in problem.message
    assert "not among the seeds" in problem.message


def test_chat_template_variable_not_among_seeds_names_its_message() -> None:
    messages = [{"role": "system", "content": "Be {{ tone }}."}, {"role": "user", "content": "{{ topic }}"}]
    spec = make_spec(prompts={"template": {"messages": messages, "seeds": {"tone": ["kind"]}}})
    problem = one_problem(spec_problems(spec, check_output=False), "prompts.template.messages.1.content")
    assert "'topic'" in problem.message


def test_template_locals_and_builtins_are_not_missing_variables() -> None:
    text = "{% set n = 2 %}{% for i in range(n) %}{{ loop.index }}{{ word }}{% endfor %}"
    spec = make_spec(prompts={"template": {"text": text, "seeds": {"word": ["a"]}}})
    assert spec_problems(spec, check_output=False) == []


def test_template_syntax_error_is_reported_on_its_field() -> None:
    spec = make_spec(prompts={"template": {"text": "{{ word ", "seeds": {"word": ["a"]}}})
    problem = one_problem(spec_problems(spec, check_output=False), "prompts.template.text")
    assert "template syntax error" in problem.message


@pytest.mark.parametrize("name", ["prompt", "completion", "lineage", "row_id"])
def test_reserved_seed_name_is_rejected(name: str) -> None:
    spec = make_spec(prompts={"template": {"text": "{{ %s }}" % name, "seeds": {name: ["a"]}}})
    problem = one_problem(spec_problems(spec, check_output=False), f"prompts.template.seeds.{name}")
    assert "reserved" in problem.message


def test_sample_larger_than_the_product_is_rejected() -> None:
    data = spec_data(prompts={"template": {"text": "{{ word }}", "seeds": {"word": ["a", "b", "c"]},
                                           "sample": {"n": 10}}})
    problem = one_problem(problems_of(data), "prompts.template")
    assert "sample.n=10 exceeds the 3" in problem.message


def test_sample_of_the_whole_product_is_accepted() -> None:
    assert make_spec(prompts={"template": {"text": "{{ word }}", "seeds": {"word": ["a", "b", "c"]},
                                           "sample": {"n": 3}}}).prompts.template is not None


def test_missing_model_folder_is_reported_on_model_path(tmp_path: Path) -> None:
    spec = make_spec(model={"path": str(tmp_path / "absent")})
    problem = one_problem(spec_problems(spec, check_output=False), "model.path")
    assert "is not a folder" in problem.message


def test_model_folder_without_config_json_is_reported(tmp_path: Path) -> None:
    spec = make_spec(model={"path": str(tmp_path)})
    assert "no config.json" in one_problem(spec_problems(spec, check_output=False), "model.path").message


def test_hub_model_is_not_checked_locally() -> None:
    assert spec_problems(make_spec(model={"id": "no/such-model"}), check_output=False) == []


def test_missing_input_file_is_reported_on_its_uri(tmp_path: Path) -> None:
    uri = str(tmp_path / "absent.jsonl")
    spec = make_spec(prompts={"file": {"uri": uri}})
    problem = one_problem(spec_problems(spec, check_output=False), "prompts.file.uri")
    assert "does not exist" in problem.message and uri in problem.message


def test_missing_batch_file_is_reported_on_its_uri(tmp_path: Path) -> None:
    spec = make_spec(prompts={"openai_batch": {"uri": str(tmp_path / "absent.jsonl")}})
    one_problem(spec_problems(spec, check_output=False), "prompts.openai_batch.uri")


def test_input_file_must_be_jsonl_or_parquet(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("prompt\nx\n")
    spec = make_spec(prompts={"file": {"uri": str(tmp_path / "p.csv")}})
    assert "expected a .jsonl or .parquet" in one_problem(spec_problems(spec, check_output=False),
                                                          "prompts.file.uri").message


def test_openai_batch_input_must_be_jsonl(tmp_path: Path) -> None:
    (tmp_path / "b.parquet").write_bytes(b"PAR1")
    spec = make_spec(prompts={"openai_batch": {"uri": str(tmp_path / "b.parquet")}})
    one_problem(spec_problems(spec, check_output=False), "prompts.openai_batch.uri")


def test_missing_input_file_on_s3_is_reported(bucket: str) -> None:
    spec = make_spec(prompts={"file": {"uri": f"s3://{bucket}/absent.jsonl"}})
    assert "does not exist" in one_problem(spec_problems(spec, check_output=False), "prompts.file.uri").message


def test_output_to_a_missing_bucket_names_the_bucket(s3_endpoint: str) -> None:
    spec = make_spec("s3://no-such-bucket-here/jobs")
    problem = one_problem(spec_problems(spec), "output.uri")
    assert "'no-such-bucket-here'" in problem.message


def test_output_to_an_existing_bucket_passes(bucket: str) -> None:
    assert spec_problems(make_spec(f"s3://{bucket}/jobs")) == []


def test_fewer_gpus_than_tensor_parallel_size_is_reported() -> None:
    spec = make_spec(model={"id": "org/m", "tensor_parallel_size": 4}, resources={"gpus_per_worker": 2})
    assert "tensor_parallel_size=4" in one_problem(spec_problems(spec, check_output=False),
                                                   "resources.gpus_per_worker").message


def test_several_preflight_problems_are_all_reported_at_once(tmp_path: Path, s3_endpoint: str) -> None:
    spec = make_spec("s3://no-such-bucket-here/x", model={"path": str(tmp_path / "absent")},
                     prompts={"template": {"text": "{{ a }}", "seeds": {"prompt": [1]}}})
    assert set(paths(spec_problems(spec))) == {
        "prompts.template.text", "prompts.template.seeds.prompt", "model.path", "output.uri"}


def test_check_spec_raises_every_problem(tmp_path: Path) -> None:
    spec = make_spec(model={"path": str(tmp_path / "absent")},
                     prompts={"template": {"text": "{{ a }}", "seeds": {}}})
    with pytest.raises(SpecError) as e:
        check_spec(spec, check_output=False)
    assert set(paths(e.value.problems)) == {"model.path", "prompts.template.text"}


# --- the `validate` command -------------------------------------------------------------------

def test_validate_prints_the_job_id_and_exits_0_for_a_good_spec(
        tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = local_spec_data(tmp_path, model_dir)
    assert main(["validate", str(write_spec(tmp_path, data))]) == 0
    out = flat(capsys.readouterr().out)
    assert parse_spec(data).job_id in out
    assert "3 rows in 2 shards" in out


def test_validate_exits_2_and_lists_field_problems_on_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec(tmp_path, spec_data(sampling={"temprature": 0.5}))
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert "sampling.temprature: unknown field" in flat(captured.err)
    assert captured.out == ""


def test_validate_exits_2_and_lists_every_preflight_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = spec_data(tmp_path / "out", model={"path": str(tmp_path / "absent")},
                     prompts={"template": {"text": "{{ colour }}", "seeds": {"word": ["a"]}}})
    assert main(["validate", str(write_spec(tmp_path, data))]) == 2
    err = flat(capsys.readouterr().err)
    assert "2 problem(s)" in err
    assert "prompts.template.text: variable 'colour'" in err
    assert "model.path:" in err


def test_validate_output_override_is_checked(
        tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec(tmp_path, local_spec_data(tmp_path, model_dir))
    assert main(["validate", str(path), "--output", "out/../up"]) == 2
    assert "output.uri" in flat(capsys.readouterr().err)


def test_validate_of_a_missing_spec_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read spec file" in flat(capsys.readouterr().err)


# --- issue 11, item 13: the spec file itself ----------------------------------------------------

@pytest.mark.parametrize("raw,what", [
    ("name: unit\n".encode("utf-16"), "is UTF-16 text"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff", "is not UTF-8 text (byte 0x89 at offset 0)"),
], ids=["utf16", "binary"])
def test_a_spec_file_that_is_not_utf8_is_a_message_and_exit_2(
        tmp_path: Path, raw: bytes, what: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(raw)
    assert main(["validate", str(path)]) == 2
    err = flat(capsys.readouterr().err)
    assert what in err and "save it as UTF-8" in err and "Traceback" not in err


def test_a_spec_file_with_a_utf8_bom_loads(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(spec_data("s3://b/out")).encode())
    assert load_spec(path).name == "unit"


# --- item 15: field names, duplicate keys, strict numbers ---------------------------------------

@pytest.mark.parametrize("section,typo,meant", [("sampling", "temprature", "temperature"),
                                                ("resources", "worker", "workers"),
                                                ("output", "rows_per_shrad", "rows_per_shard")])
def test_an_unknown_field_suggests_the_closest_one(section: str, typo: str, meant: str) -> None:
    data = spec_data()
    data[section] = {**data.get(section, {}), typo: 1}
    problem = one_problem(problems_of(data), f"{section}.{typo}")
    assert f"did you mean `{meant}`?" in problem.message


def test_an_unknown_field_inside_a_judge_model_suggests_its_field() -> None:
    problems = problems_of(spec_data(judge={"model": {"path": "/m", "pth": "x"}}))
    assert [(p.path, p.message) for p in problems] == [("judge.model.pth", "unknown field; did you mean `path`?")]


def test_an_unknown_field_with_no_close_match_lists_the_fields_there() -> None:
    problem = one_problem(problems_of(spec_data(resources={"zzz": 1})), "resources.zzz")
    assert "fields here: workers, gpus_per_worker" in problem.message


def test_a_duplicate_yaml_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: first\nmodel: {id: org/m}\nprompts: {template: {text: x}}\n"
                    "output: {uri: out}\nname: second\n")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert [str(p) for p in e.value.problems] == [
        "name: duplicate key 'name' on lines 1 and 5 of spec.yaml; YAML would keep only the last: remove one"]


def test_a_duplicate_nested_key_is_named_by_its_path(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: a\nsampling:\n  temperature: 0.2\n  temperature: 0.9\n")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert paths(e.value.problems) == ["sampling.temperature"]
    assert "lines 3 and 4" in e.value.problems[0].message


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: unit\nmodel: {id: org/m}\nprompts: {template: {text: x}}\noutput: {uri: 's3://b/out'}\n"
                    "resources:\n  <<: {workers: 2, cpus_per_worker: 4}\n  workers: 3\n")
    resources = load_spec(path).resources
    assert (resources.workers, resources.cpus_per_worker) == (3, 4)


@pytest.mark.parametrize("section,field,value,expected", [
    ("resources", "workers", True, "expected a whole number, got true"),
    ("resources", "workers", "2", 'expected a whole number, got "2"'),
    ("resources", "gpus_per_worker", True, "expected a number, got true"),
    ("sampling", "max_tokens", 8.5, "expected a whole number, got 8.5"),
    ("sampling", "temperature", "0.7", 'expected a number, got "0.7"'),
    ("sampling", "ignore_eos", "yes", 'expected true or false, got "yes"'),
    ("output", "rows_per_shard", False, "expected a whole number, got false"),
    ("model", "max_model_len", "512", 'expected a whole number, got "512"'),
    ("dedup", "near_threshold", True, "expected a number, got true"),
])
def test_a_bool_or_string_is_not_a_number(section: str, field: str, value: Any, expected: str) -> None:
    data = spec_data()
    data[section] = {**data.get(section, {}), field: value}
    assert one_problem(problems_of(data), f"{section}.{field}").message == expected


def test_a_whole_number_is_accepted_for_a_float_field(tmp_path: Path) -> None:
    data = spec_data("s3://b/out", sampling={"temperature": 1, "top_p": 1}, resources={"gpus_per_worker": 0})
    spec = load_spec(write_spec(tmp_path, data))
    assert spec.sampling.temperature == 1.0 and spec.resources.gpus_per_worker == 0.0


# --- item 14: dtype -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["auto", "half", "float16", "bfloat16", "float", "float32"])
def test_vllms_dtypes_are_accepted(dtype: str) -> None:
    assert make_spec(model={"id": "org/m", "dtype": dtype}).model.dtype == dtype


def test_another_dtype_is_refused_listing_vllms() -> None:
    problem = one_problem(problems_of(spec_data(model={"id": "org/m", "dtype": "fp8"})), "model.dtype")
    assert "'auto'" in problem.message and "'bfloat16'" in problem.message


# --- item 16: URIs --------------------------------------------------------------------------------

CONTROL = ["out\nput", "out\x00", "out\tx", "out/\x1b[31m", "out\x7f"]
WHERE = {"output.uri": ("output", "uri", ""), "prompts.file.uri": ("prompts", "file", ".jsonl"),
         "quality.reference": ("quality", "reference", ".jsonl")}


@pytest.mark.parametrize("uri", CONTROL + ["s3://b/a\nb"])
@pytest.mark.parametrize("field", ["output.uri", "prompts.file.uri", "quality.reference"])
def test_a_uri_with_a_control_character_is_refused(uri: str, field: str) -> None:
    section, key, ending = WHERE[field]
    value: Any = {key: uri + ending} if section != "prompts" else {key: {"uri": uri + ending}}
    assert "control character" in one_problem(problems_of(spec_data(**{section: value})), field).message


@pytest.mark.parametrize("path", CONTROL)
def test_a_model_path_with_a_control_character_is_refused(path: str) -> None:
    assert "control character" in one_problem(problems_of(spec_data(model={"path": path})), "model.path").message


@pytest.mark.parametrize("uri", ["~/out", "~", "~someone/data"])
def test_a_leading_tilde_is_refused_not_made_a_folder_named_tilde(uri: str) -> None:
    problem = one_problem(problems_of(spec_data(output={"uri": uri})), "output.uri")
    assert "'~' is not expanded" in problem.message


@pytest.mark.parametrize("uri", ["out/%2e%2e/x", "out/%2E./x", "out/.%2e", "s3://bucket/%2e%2e/x", "file:///a/%2E%2E/b"])
def test_a_percent_encoded_dotdot_is_refused(uri: str) -> None:
    problem = one_problem(problems_of(spec_data(output={"uri": uri})), "output.uri")
    assert "percent-encoded '..'" in problem.message


def test_a_percent_sign_in_an_ordinary_name_is_kept() -> None:
    assert make_spec("out/100%25/x").output.uri == "out/100%25/x"


# --- item 17: relative paths resolve against the spec's folder ------------------------------------

def relative_spec(folder: Path) -> Path:
    """A spec in `folder` naming its model, prompt file and reference by paths relative to it."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text("{}")
    (folder / "data").mkdir()
    (folder / "data" / "in.jsonl").write_text('{"prompt": "hi"}\n')
    (folder / "data" / "real.jsonl").write_text('{"text": "hello"}\n')
    data = spec_data("out", model={"path": "model"}, prompts={"file": {"uri": "data/in.jsonl"}},
                     quality={"reference": "./data/real.jsonl"})
    return write_spec(folder, data)


def test_relative_inputs_resolve_against_the_spec_folder_from_any_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = relative_spec(tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    spec = load_spec("project/spec.yaml")
    assert spec.model.path == str(tmp_path / "project" / "model")
    assert spec.prompts.file.uri == str(tmp_path / "project" / "data" / "in.jsonl")  # type: ignore[union-attr]
    assert spec.quality.reference == str(tmp_path / "project" / "data" / "real.jsonl")
    check_spec(spec)
    assert load_spec(path) == spec


def test_output_uri_stays_relative_to_the_working_directory(tmp_path: Path) -> None:
    assert load_spec(relative_spec(tmp_path / "project")).output.uri == "out"


def test_resolving_keeps_the_job_id_of_the_spec_as_written(tmp_path: Path) -> None:
    path = relative_spec(tmp_path / "project")
    assert load_spec(path).job_id == parse_spec(yaml.safe_load(path.read_text())).job_id


def test_the_same_spec_checked_out_elsewhere_keeps_its_job_id(tmp_path: Path) -> None:
    first, second = relative_spec(tmp_path / "a"), relative_spec(tmp_path / "deeper" / "b")
    assert load_spec(first).model.path != load_spec(second).model.path
    assert load_spec(first).job_id == load_spec(second).job_id


def test_a_resolved_spec_keeps_its_job_id_where_it_is_sent(tmp_path: Path) -> None:
    spec = load_spec(relative_spec(tmp_path / "project"))
    sent = parse_spec(json.loads(spec.model_dump_json()))  # what a server receives from Client.submit
    assert sent == spec and sent.job_id == spec.job_id


def test_absolute_paths_hash_as_before(tmp_path: Path, model_dir: Path) -> None:
    data = local_spec_data(tmp_path, model_dir)
    spec = load_spec(write_spec(tmp_path, data))
    assert spec.relative_to is None and spec.job_id == parse_spec(data).job_id


def test_a_relative_to_that_does_not_match_its_path_is_refused(tmp_path: Path) -> None:
    data = json.loads(load_spec(relative_spec(tmp_path / "project")).model_dump_json())
    data["model"]["path"] = "/elsewhere/model"
    assert "does not match model.path" in problems_of(data)[0].message


def test_the_fake_engines_model_name_is_not_resolved(tmp_path: Path) -> None:
    path = write_spec(tmp_path, spec_data("s3://b/out", model={"path": "fake", "engine": "fake"}))
    assert load_spec(path).model.path == "fake"


def test_a_spec_json_of_a_job_loads_with_its_job_id(tmp_path: Path) -> None:
    spec = load_spec(relative_spec(tmp_path / "project"))
    copy = tmp_path / "elsewhere" / "spec.json"
    copy.parent.mkdir()
    copy.write_text(spec.model_dump_json(indent=1))
    assert load_spec(copy) == spec


def copied_examples(tmp_path: Path) -> Path:
    """The repository's examples/ beside a models/tiny folder validation accepts."""
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(Path(__file__).parents[2] / "examples", root / "examples")
    (root / "models" / "tiny").mkdir(parents=True)
    (root / "models" / "tiny" / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    return root


@pytest.mark.parametrize("example", ["quickstart.yaml", "openai-batch.yaml", "seed-samplers.yaml",
                                     "balanced-targets.yaml"])
@pytest.mark.parametrize("cwd", ["repo", "elsewhere"])
def test_the_examples_validate_from_the_repository_root_and_from_elsewhere(
        tmp_path: Path, example: str, cwd: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = copied_examples(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(root if cwd == "repo" else tmp_path / "elsewhere")
    assert main(["validate", str(root / "examples" / example)]) == 0, capsys.readouterr().err
    assert f"relative input paths resolved against {root / 'examples'}" in flat(capsys.readouterr().err)


def test_the_quickstart_writes_to_outputs_in_the_working_directory(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = copied_examples(tmp_path)
    monkeypatch.chdir(root)
    spec = load_spec("examples/quickstart.yaml")
    assert spec.output.uri == "outputs" and spec.model.path == str(root / "models" / "tiny")


def test_validate_prints_warnings_and_still_exits_0(
        tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = local_spec_data(tmp_path, model_dir, prompts={"template": {"text": "{{ a }}", "seeds": {"a": [1],
                                                                                                  "b": [1, 2]}}})
    assert main(["validate", str(write_spec(tmp_path, data))]) == 0
    assert "warning: prompts.template.seeds.b: seed variable 'b' is never used" in flat(capsys.readouterr().err)
