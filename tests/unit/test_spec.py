"""The job spec: parsing (field-level problems) and preflight validation (inputs, model, output)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.errors import Problem, SpecError
from orchestrator.spec import load_spec, parse_spec
from orchestrator.validate import check_spec, spec_problems
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
