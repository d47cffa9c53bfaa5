"""Interrupts and orphans, with real processes: `synthfleet run` and `serve` as subprocesses, real
signals, the process table polled afterwards.

Ctrl-C and SIGTERM print one line and exit 130 / 143 with committed shards kept, and the same
command resumes; a driver killed with SIGKILL (alone or with its process group) takes its local Ray
cluster and every vLLM engine process with it within seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from orchestrator.client import Client
from tests.integration.conftest import make_spec

SYNTHFLEET = [sys.executable, "-m", "orchestrator.cli"]
GONE_WITHIN_S = 20.0


def _env() -> dict[str, str]:
    """A clean environment for the child: it must start its own local Ray, not join the tests' one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def fake_spec(out: Path, rows: int = 48, tokens_per_s: float = 64) -> dict[str, Any]:
    return {
        "name": "hygiene",
        "model": {"path": "fake", "engine": "fake", "engine_args": {"tokens_per_s": tokens_per_s}},
        "prompts": {"template": {"text": "row {{ i }}", "seeds": {"i": list(range(rows))}}},
        "sampling": {"max_tokens": 16},
        "output": {"uri": str(out), "rows_per_shard": 2},
        "resources": {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 0, "shards_in_flight": 1},
    }


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def _committed(out: Path) -> list[Path]:
    return sorted(out.glob("*/data/*.parquet"))


def _descendants(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True) if "reaper.py" not in " ".join(p.cmdline())]


def _assert_all_gone(procs: list[psutil.Process]) -> None:
    def gone() -> bool:
        return not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    _wait(gone, GONE_WITHIN_S, "the driver's processes to exit: " + ", ".join(
        f"{p.pid} {p.name()}" for p in procs if p.is_running()))


@pytest.fixture()
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(fake_spec(tmp_path / "out")))
    return path


def _run(spec_file: Path, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([*SYNTHFLEET, "run", str(spec_file), "--quiet"], env=env or _env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            cwd=spec_file.parent, **kw)


def _as_a_background_job() -> None:
    """What a shell does to a command it starts with `&` from a script: SIGINT ignored (inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_prints_one_line_keeps_its_commits_and_resumes(spec_file: Path, sig: int,
                                                                          code: int) -> None:
    out = spec_file.parent / "out"
    proc = _run(spec_file, preexec_fn=_as_a_background_job)  # Ctrl-C works however the run was started
    _wait(lambda: len(_committed(out)) >= 2, 120, "two committed shards")
    children = _descendants(proc.pid)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == code, stderr
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and lines[0].endswith(
        "shards committed are kept; run the same command again to resume"), stderr
    kept = {p.name: p.read_bytes() for p in _committed(out)}
    assert 2 <= int(lines[0].split()[1]) <= len(kept)  # read from storage as it stopped; none lost since
    _assert_all_gone(children)

    again = _run(spec_file)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    manifest = json.loads(next(out.glob("*/_manifest.json")).read_text())
    assert manifest["rows_ok"] == 48
    assert all((p.read_bytes() == kept[p.name]) for p in _committed(out) if p.name in kept)  # never rewritten


def test_a_run_killed_with_its_process_group_leaves_no_process(spec_file: Path) -> None:
    # On a machine where a `ray start` cluster died and left its address in Ray's temp folder, Ray's
    # own default would try to join it: the run starts a local cluster of its own (its raylet below).
    ray_tmp = Path(tempfile.mkdtemp(prefix="sf-"))  # short: Ray's socket paths must fit 107 bytes
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
    try:
        proc = _run(spec_file, env={**_env(), "TMPDIR": str(ray_tmp)})
        _wait(lambda: len(_committed(spec_file.parent / "out")) >= 1, 120, "a committed shard")
        children = _descendants(proc.pid)
        assert any("raylet" in p.name() for p in children)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _assert_all_gone(children)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = _free_port()
    proc = subprocess.Popen([*SYNTHFLEET, "serve", "--port", str(port), "--state", str(tmp_path / "state")],
                            env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    first = proc.stdout.readline() if proc.stdout else ""
    assert f"serving on {url}" in first, (first, proc.poll())
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_killed_with_sigkill_takes_its_vllm_engines_with_it(server: tuple[subprocess.Popen[str], str],
                                                                  tiny_model: Path, tmp_path: Path) -> None:
    proc, url = server
    spec = make_spec(tiny_model, str(tmp_path / "out"), {"template": {"text": "row {{ i }}",
                     "seeds": {"i": list(range(512))}}}, rows_per_shard=4,
                     resources={"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 1})
    with Client(url) as client:
        job = client.submit(spec)
        _wait(lambda: job.status().request_counts.completed > 0, 600, "the engine to generate")
    children = _descendants(proc.pid)
    assert {"VLLM::EngineCore", "VLLM::Worker"} <= {p.name() for p in children} | {
        " ".join(p.cmdline()) for p in children}
    proc.kill()
    proc.wait(timeout=10)
    _assert_all_gone(children)


def test_serve_ends_on_sigterm_with_one_line(server: tuple[subprocess.Popen[str], str], tmp_path: Path) -> None:
    proc, url = server
    with Client(url) as client:
        job = client.submit(fake_spec(tmp_path / "out", rows=400))
        _wait(lambda: job.status().request_counts.completed > 0, 120, "the job to run")
    children = _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=90)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 143, stderr
    assert lines == ["interrupted: the service stopped; unfinished jobs resume when it starts again"], stderr
    _assert_all_gone(children)
