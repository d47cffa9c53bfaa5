"""The commands that talk to a server (submit, status, cancel, jobs) and `serve`'s refusals: one clear
line and an exit code, never a traceback; help and defaults on every option; `--version`."""

from __future__ import annotations

import argparse
import importlib.metadata
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, main, parser
from tests.unit.apiserver import refused_port, running_api

TOKEN = "cli-test-token"


@pytest.fixture(autouse=True)
def _no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SYNTHFLEET_API_TOKEN", "SYNTHFLEET_API_TOKEN_FILE", "SYNTHFLEET_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("SYNTHFLEET_API_TOKEN", TOKEN)
    with running_api(tmp_path / "state", token=TOKEN) as u:
        yield u


def _spec_file(tmp_path: Path) -> Path:
    spec = {"name": "remote", "model": {"path": "fake", "engine": "fake"},
            "prompts": {"template": {"text": "row {{ i }}", "seeds": {"i": [1, 2]}}},
            "output": {"uri": str(tmp_path / "out")}, "resources": {"gpus_per_worker": 0}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


# --- an unreachable server ------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["jobs"], ["status", "some-job"], ["cancel", "some-job"], ["submit", "SPEC"]])
def test_an_unreachable_server_is_one_line_and_exit_1(command: list[str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(_spec_file(tmp_path)) if a == "SPEC" else a for a in command]
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}"
        assert main([*argv, "--url", url]) == EXIT_FAILED
    assert _one_line(capsys) == (f"cannot reach synthfleet at {url} — is synthfleet serve running? "
                                 "(--url, $SYNTHFLEET_URL)")


def test_synthfleet_url_from_the_environment_is_the_one_reported(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with refused_port() as port:
        monkeypatch.setenv("SYNTHFLEET_URL", f"http://127.0.0.1:{port}")
        assert main(["jobs"]) == EXIT_FAILED
    assert f"at http://127.0.0.1:{port} " in _one_line(capsys)


# --- token files ----------------------------------------------------------------------------------

def test_serve_with_a_missing_token_file_is_one_message_and_exit_2(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nonexistent"
    assert main(["serve", "--token-file", str(missing)]) == EXIT_BAD_INPUT
    assert _one_line(capsys) == f"error: cannot read the API token file {missing}: No such file or directory"


def test_serve_with_an_empty_token_file_is_refused_not_run_without_auth(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert main(["serve", "--token-file", str(empty)]) == EXIT_BAD_INPUT
    assert _one_line(capsys) == f"error: the API token file {empty} is empty"


def test_a_token_file_from_the_environment_is_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SYNTHFLEET_API_TOKEN_FILE", str(tmp_path / "gone"))
    assert main(["jobs"]) == EXIT_BAD_INPUT
    assert "cannot read the API token file" in _one_line(capsys)


def test_serve_on_a_port_in_use_is_one_message_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--state", str(tmp_path / "state")]) == EXIT_FAILED
    assert _one_line(capsys) == f"cannot listen on 127.0.0.1:{port}: Address already in use"


# --- against a server -----------------------------------------------------------------------------

def test_jobs_on_an_empty_server_says_no_jobs(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "--url", url]) == EXIT_OK
    assert capsys.readouterr().out == "no jobs\n"
    assert main(["jobs", "--url", url, "--state", "completed"]) == EXIT_OK
    assert capsys.readouterr().out == "no jobs in state completed\n"


def test_a_job_the_server_does_not_know_is_one_line_and_exit_1(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "no-such-job", "--url", url]) == EXIT_FAILED
    assert _one_line(capsys) == "NotFoundError: no job 'no-such-job'"


def test_a_wrong_token_is_one_line_and_exit_1(url: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SYNTHFLEET_API_TOKEN", "wrong")
    assert main(["jobs", "--url", url]) == EXIT_FAILED
    line = _one_line(capsys)
    assert line.startswith("AuthError:") and "wrong" not in line and TOKEN not in line


# --- help and version -----------------------------------------------------------------------------

def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_version_is_the_installed_distribution_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"synthfleet {importlib.metadata.version('synthfleet')}\n"


def _help_problem(cmd: argparse.ArgumentParser, action: argparse.Action) -> str | None:
    """What is missing from one argument's help: the help itself, or the default it does not show."""
    if not action.help:
        return "no help"
    if not action.option_strings or action.required or isinstance(action.default, bool):
        return None  # positionals, required options and flags have no default to show
    if action.default is None:  # unset: the help must say what happens then
        return None if "(default: " in action.help else "does not say what happens when unset"
    shown = f"(default: {action.default})" in " ".join(cmd.format_help().split())
    return None if shown else f"default {action.default!r} not shown"


def test_every_argument_of_every_subcommand_has_help_that_shows_its_default() -> None:
    problems = [f"{name} {(a.option_strings or [a.dest])[-1]}: {problem}"
                for name, cmd in _subcommands().items() for a in cmd._actions
                if not isinstance(a, argparse._HelpAction) and (problem := _help_problem(cmd, a))]
    assert problems == []


def test_priority_help_says_higher_runs_first() -> None:
    assert "higher runs first" in " ".join(_subcommands()["submit"].format_help().split())


def test_serve_offers_max_body_mb_with_the_named_default() -> None:
    from orchestrator import defaults

    args = parser().parse_args(["serve"])
    assert args.max_body_mb == defaults.MAX_BODY_MB
    assert parser().parse_args(["serve", "--max-body-mb", "0.5"]).max_body_mb == 0.5
    with pytest.raises(SystemExit):
        parser().parse_args(["serve", "--max-body-mb", "0"])
