"""Targets jobs on real Ray: further rounds fill the strata the gates thin out until each has exactly its
target of kept rows, checked against the truth planted in the prompts (the fake engine echoes them, so
which rows a deny filter drops is known row by row); a run killed in round 2 resumes without generating a
committed row again; a stratum the gates always reject ends at max_rounds, flagged. One job runs the
weighted + seed-file + targets path on real vLLM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml
from prometheus_client import generate_latest

from orchestrator.commit import layout
from orchestrator.plan.planner import make_plan
from orchestrator.plan.rounds import Strata, next_round
from orchestrator.results import open_job, read_manifest
from orchestrator.run.driver import run_job
from orchestrator.service.metrics import Metrics
from orchestrator.spec.load import parse_spec
from tests.integration.conftest import MODEL_ARGS, RESOURCES

SYNTHFLEET = [sys.executable, "-m", "orchestrator.cli"]
DENY = r"^c [0-5] "  # the fake engine echoes "{topic} {coin}": 6 of coin's 10 values, 60% of stratum c
TARGET = 60


def targets_spec(out: Path, *, deny: str = DENY, kept_rows: int = TARGET, max_rounds: int = 6,
                 engine: dict[str, Any] | None = None, rows_per_shard: int = 25, workers: int = 2) -> dict[str, Any]:
    return {
        "name": "targets",
        "model": {"path": "fake", "engine": "fake",
                  "engine_args": {"tokens_per_s": 2000, "echo": True, **(engine or {})}},
        "prompts": {"template": {"text": "{{ topic }} {{ coin }}", "seeds": {
            "topic": {"weighted": {"a": 1, "b": 1, "c": 1}}, "coin": {"uniform_int": [0, 9]}}}},
        "sampling": {"max_tokens": 2},
        "filters": {"deny": [deny]},
        "targets": {"by": ["topic"], "kept_rows": kept_rows, "max_rounds": max_rounds},
        "output": {"uri": str(out), "rows_per_shard": rows_per_shard},
        "resources": {"workers": workers, "gpus_per_worker": 0, "cpus_per_worker": 0},
    }


def folder(job: Path, name: str) -> pa.Table:
    return ds.dataset(job / name, format="parquet").to_table() if (job / name).exists() else pa.table({})


def index(row_id: str) -> int:
    return int(row_id.rsplit("-", 1)[1])


def truth(rows: list[dict[str, Any]], deny: str, target: int) -> tuple[set[str], set[str], set[str]]:
    """From every generated row: the rows data/ must hold (per stratum, the first `target` the filter
    passes, by row index), the rows over target, and the rows the filter denies."""
    passing: dict[str, list[dict[str, Any]]] = {}
    denied = set()
    for r in rows:
        if re.search(deny, r["completion"]):
            denied.add(r["row_id"])
        else:
            passing.setdefault(r["topic"], []).append(r)
    kept, over = set(), set()
    for group in passing.values():
        ordered = sorted(group, key=lambda r: index(r["row_id"]))
        kept |= {r["row_id"] for r in ordered[:target]}
        over |= {r["row_id"] for r in ordered[target:]}
    return kept, over, denied


def manifest(job: Path) -> dict[str, Any]:
    return json.loads((job / layout.MANIFEST).read_text())


def assert_balanced_as_planted(job: Path, deny: str = DENY, target: int = TARGET) -> None:
    """data/ holds exactly `target` rows per stratum, and exactly the rows the planted truth names."""
    data, rejected = folder(job, "data"), folder(job, "rejected")
    everything = data.select(["row_id", "topic", "completion"]).to_pylist() + \
        rejected.select(["row_id", "topic", "completion"]).to_pylist()
    ids = [r["row_id"] for r in everything]
    assert len(ids) == len(set(ids)) == manifest(job)["input_rows"]  # each generated row in one place
    kept, over, denied = truth(everything, deny, target)
    assert Counter(data.column("topic").to_pylist()) == {"a": target, "b": target, "c": target}
    assert set(data.column("row_id").to_pylist()) == kept
    reasons = {r["row_id"]: r["reject_reason"] for r in rejected.select(["row_id", "reject_reason"]).to_pylist()}
    assert {i for i, why in reasons.items() if why == "over_target"} == over
    assert {i for i, why in reasons.items() if why != "over_target"} == denied


def test_a_stratum_the_filter_rejects_60_percent_of_ends_with_exactly_its_target(ray_runtime: None,
                                                                                tmp_path: Path) -> None:
    result = run_job(parse_spec(targets_spec(tmp_path)))
    job = Path(result.uri)
    assert_balanced_as_planted(job)
    t = manifest(job)["quality"]["targets"]
    strata = {s["stratum"]: s for s in t["strata"]}
    assert t["rounds"] >= 2 and not t["flagged"] and t["unmet"] == []
    assert strata["a"]["rounds"] == strata["b"]["rounds"] == 1 and strata["c"]["rounds"] >= 2
    assert strata["a"]["generated"] == strata["b"]["generated"] == TARGET  # round 1: the targets, as if all kept
    assert 0.25 < strata["c"]["acceptance"] < 0.55 and strata["c"]["kept"] == TARGET
    assert t["rows_generated"] == sum(s["generated"] for s in t["strata"])
    html = (job / "quality_report.html").read_text()
    assert "<h2>Targets</h2>" in html and "Target not met" not in html


def _committed(job: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (job / layout.GENERATED_DIR).glob("*.parquet")}


def _requested(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def _run(spec_file: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*SYNTHFLEET, "run", str(spec_file), "--quiet"], env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            cwd=spec_file.parent)


def test_a_run_killed_in_round_2_resumes_without_generating_a_committed_row_again(ray_runtime: None,
                                                                                 tmp_path: Path) -> None:
    """SIGKILL to the whole process group once a shard of round 2 has committed: the same command plans
    the same rounds from the committed shards, requests none of their rows, keeps their bytes, and ends
    with the rows an uninterrupted run writes."""
    log = tmp_path / "requests.log"
    data = targets_spec(tmp_path / "out", rows_per_shard=10, workers=1,
                        engine={"tokens_per_s": 4, "request_log": str(log)})
    data["resources"]["shards_in_flight"] = 1
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    spec = parse_spec(data)
    round_1 = next_round(spec, make_plan(spec), Strata.of(spec), None)
    assert round_1 is not None
    job = tmp_path / "out" / spec.job_id

    proc = _run(spec_file)
    deadline = time.monotonic() + 240
    while len(_committed(job)) <= round_1.num_shards:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1)  # a commit under way when the group died has landed or never will
    before = _committed(job)
    assert len(before) > round_1.num_shards and not (job / layout.MANIFEST).exists()
    committed_rows = {index(r) for name in before for r in
                      pq.read_table(job / layout.GENERATED_DIR / name, columns=["row_id"]).column(0).to_pylist()}
    asked_before = len(_requested(log))

    again = _run(spec_file)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    resumed = _requested(log)[asked_before:]
    assert resumed and not set(resumed) & committed_rows  # nothing committed was generated again
    assert {n: b for n, b in _committed(job).items() if n in before} == before  # nor rewritten
    assert_balanced_as_planted(job)
    assert "targets: 3 of 3 strata met" in stdout

    whole = run_job(parse_spec(targets_spec(tmp_path / "whole", rows_per_shard=10, workers=1)))
    rows = {index(r) for r in folder(Path(whole.uri), "data").column("row_id").to_pylist()}
    assert rows == {index(r) for r in folder(job, "data").column("row_id").to_pylist()}


def test_a_stratum_the_gates_always_reject_stops_at_max_rounds_flagged(tmp_path: Path) -> None:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(targets_spec(tmp_path / "out", deny="^c ", kept_rows=20, max_rounds=3)))
    proc = _run(spec_file)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    job = next((tmp_path / "out").iterdir())
    t = manifest(job)["quality"]["targets"]
    strata = {s["stratum"]: s for s in t["strata"]}
    assert t["rounds"] == 3 and t["flagged"] and t["unmet"] == ["c"] and t["cost_ratio"] is None
    assert strata["c"]["kept"] == 0 and strata["c"]["rounds"] == 3 and not strata["c"]["met"]
    assert "reject it almost always" in strata["c"]["why_not"]
    assert strata["a"]["met"] and strata["b"]["met"]
    assert Counter(folder(job, "data").column("topic").to_pylist()) == {"a": 20, "b": 20}
    assert "targets: 2 of 3 strata met in 3 round(s)" in stdout
    assert "stratum c short of its target: 0 of 20 kept rows" in stderr
    assert "Target not met:</b> c" in (job / "quality_report.html").read_text()
    metrics = Metrics()
    metrics.quality(job.name, read_manifest(open_job(str(job))).quality)
    assert f'synthfleet_targets_strata_unmet{{job="{job.name}"}} 1.0' in generate_latest(metrics.registry).decode()


def test_a_weighted_seed_file_targets_job_runs_on_real_vllm(pool: Any, tiny_model: Path, tmp_path: Path) -> None:
    """Real vLLM: topics by weight, a persona per row from a Parquet seed file without replacement, and
    a filter that thins the random model's text unevenly; every topic ends with exactly its target."""
    personas = tmp_path / "personas.parquet"
    pq.write_table(pa.table({"name": [f"p{i}" for i in range(500)], "age": [20 + i % 40 for i in range(500)]}),
                   personas, row_group_size=50)
    spec = parse_spec({
        "name": "targets-vllm",
        "model": {"path": str(tiny_model), **MODEL_ARGS},
        "prompts": {"template": {"text": "{{ persona.name }}, {{ persona.age }}, writes about {{ topic }}.", "seeds": {
            "topic": {"weighted": {"math": 3, "art": 1}},
            "persona": {"from_file": {"uri": str(personas), "columns": ["name", "age"]}}}}},
        "sampling": {"max_tokens": 8, "temperature": 1.0, "seed": 3},
        "filters": {"deny": ["[aeiou]{2}"]},
        "targets": {"by": ["topic"], "kept_rows": 6, "max_rounds": 6},
        "output": {"uri": str(tmp_path), "rows_per_shard": 8},
        "resources": RESOURCES,
    })
    job = Path(run_job(spec, pool=pool).uri)
    data, rejected = folder(job, "data").to_pylist(), folder(job, "rejected").to_pylist()
    assert Counter(r["topic"] for r in data) == {"math": 6, "art": 6}
    assert not any(re.search("[aeiou]{2}", r["completion"]) for r in data)
    for r in rejected:
        assert (r["reject_reason"] == "over_target") != bool(re.search("[aeiou]{2}", r["completion"]))
    drawn = [json.loads(r["persona"]) for r in data + rejected]
    assert len({p["name"] for p in drawn}) == len(drawn)  # without replacement, over every round
    assert all(p["age"] == 20 + int(p["name"][1:]) % 40 for p in drawn)
    t = manifest(job)["quality"]["targets"]
    assert t["unmet"] == [] and t["kept"] == 12 and t["rounds"] >= 2  # the filter thinned round 1
