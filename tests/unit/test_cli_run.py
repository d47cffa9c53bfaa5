"""`synthfleet run` refuses bad input with one clear message and exit 2, before Ray or any write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main


def _spec(tmp_path: Path, output: str, **prompts: object) -> Path:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    spec = {"name": "bad", "model": {"path": str(model)},
            "prompts": prompts or {"template": {"text": "about {{ topic }}", "seeds": {"topic": ["a"]}}},
            "output": {"uri": output}, "resources": {"gpus_per_worker": 0}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _assert_refused(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> None:
    import ray

    assert code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err
    assert not ray.is_initialized(), "Ray was started for a spec that was refused"


@pytest.fixture(autouse=True)
def _no_ray_yet() -> None:
    import ray

    if ray.is_initialized():
        pytest.skip("Ray is already up in this process (integration tests ran first); run tests/unit alone")


def test_missing_bucket_is_refused_before_ray_starts(tmp_path: Path, s3_endpoint: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(_spec(tmp_path, "s3://no-such-bucket/out"))])
    _assert_refused(capsys, code, "output.uri", "no-such-bucket", "does not exist")


def test_output_prefix_with_dotdot_is_refused_and_nothing_is_written(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["run", str(_spec(tmp_path, f"{out}/../elsewhere"))])
    _assert_refused(capsys, code, "output.uri", "'..'")
    assert not out.exists() and not (tmp_path / "elsewhere").exists()


def test_unreadable_input_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["run", str(_spec(tmp_path, str(out), file={"uri": str(tmp_path / "missing.jsonl")}))])
    _assert_refused(capsys, code, "prompts.file.uri", "missing.jsonl", "does not exist")
    assert not out.exists()


def test_template_variable_not_among_seeds_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(_spec(tmp_path, str(tmp_path / "out"),
                                  template={"text": "{{ topic }} for {{ reader }}", "seeds": {"topic": ["a"]}}))])
    _assert_refused(capsys, code, "prompts.template.text", "'reader'")


def test_missing_credentials_are_refused(tmp_path: Path, s3_endpoint: str, bucket: str,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.storage import s3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3._client.cache_clear()
    try:
        code = main(["run", str(_spec(tmp_path, f"s3://{bucket}/out"))])
    finally:
        s3._client.cache_clear()
    _assert_refused(capsys, code, "output.uri", "no AWS credentials")
    assert "testing" not in capsys.readouterr().err


def test_unknown_field_is_refused_with_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _spec(tmp_path, str(tmp_path / "out"))
    spec = yaml.safe_load(path.read_text())
    spec["sampling"] = {"temprature": 0.5}
    path.write_text(yaml.safe_dump(spec))
    _assert_refused(capsys, main(["run", str(path)]), "sampling.temprature", "unknown field")


# --- issue 11: bad input found by validation, refused by `run` before Ray with one message ------

def _refused_by_both(capsys: pytest.CaptureFixture[str], spec: Path, *needles: str) -> None:
    """`validate` and `run` both exit 2 naming the same problem, and `run` starts no Ray."""
    assert main(["validate", str(spec)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert all(n in err for n in needles) and "Traceback" not in err, err
    _assert_refused(capsys, main(["run", str(spec)]), *needles)


@pytest.mark.parametrize("text,needle", [("{{ ''.__class__ }}", "SecurityError"),
                                         ("{{ topic.missing }}", "UndefinedError"),
                                         ("{{ 9**(9**9) }}", "MAX_TEMPLATE_INT_BITS"),
                                         ("{{ 'a' * 1000000000 }}", "MAX_PROMPT_CHARS")])
def test_a_template_failing_on_every_row_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    text: str, needle: str) -> None:
    spec = _spec(tmp_path, str(tmp_path / "out"), template={"text": text, "seeds": {"topic": ["a", "b"]}})
    _refused_by_both(capsys, spec, "prompts.template.text", needle)
    assert not (tmp_path / "out").exists()


def test_a_repeated_custom_id_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = {"method": "POST", "url": "/v1/completions", "body": {"prompt": "hi"}}
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps({"custom_id": i, **body}) + "\n" for i in ["a", "b", "a"]))
    spec = _spec(tmp_path, str(tmp_path / "out"), openai_batch={"uri": str(batch)})
    _refused_by_both(capsys, spec, "prompts.openai_batch.uri", "custom_id 'a' is on line 1 and again on line 3")


def test_an_output_folder_the_os_refuses_is_one_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused_by_both(capsys, _spec(tmp_path, "/proc/nope"), "output.uri", "/proc/nope is not writable")


@pytest.mark.parametrize("output", ["out\nput", "out\x00", "~/out", "out/%2e%2e/x"])
def test_an_unusable_output_uri_is_refused_and_nothing_is_created(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], output: str) -> None:
    spec = _spec(tmp_path, output)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    _refused_by_both(capsys, spec, "output.uri")
    assert list(work.iterdir()) == []


def test_a_spec_file_that_is_not_utf8_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes("name: bad\n".encode("utf-16"))
    _refused_by_both(capsys, path, "UTF-16", "save it as UTF-8")


def test_a_duplicate_key_in_the_spec_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _spec(tmp_path, str(tmp_path / "out"))
    path.write_text(path.read_text() + "name: renamed\n")
    _refused_by_both(capsys, path, "duplicate key 'name'", "lines")
