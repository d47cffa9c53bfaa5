"""The Grafana dashboard and the alert rules against a real Prometheus that scraped real jobs.

A job on the warm vLLM pool with every quality gate (judge, filters, dedup, a reference for
diversity; one over-long prompt for a row error), a fake-engine job with injected faults (an
attempt failure and an engine death: retries, a replaced worker, an engine load) and a targets job
with a stratum its filter always rejects run on one coordinator. Prometheus runs deploy/prometheus/prometheus.yml as shipped (honor_labels, the rule file
written from the PrometheusRule) with a 1 s scrape interval. Then every panel's query, with its
variables substituted as Grafana would for the time range of the run, and every alert's expression
with its threshold comparisons removed (so it yields what it compares, not whether the alert fires)
must return data: a misspelt metric or label returns nothing and fails here.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from orchestrator.client import Client
from tests.deploy.sources import (
    PROMETHEUS_CONFIG,
    dashboard,
    dashboard_targets,
    grafana_interval,
    rule_groups,
    rules,
    substitute,
    without_comparisons,
)
from tests.integration.conftest import make_spec
from tests.integration.test_monitoring import prometheus, query, wait_for  # noqa: F401 - prometheus: fixture
from tests.integration.test_service import fake_job
from tests.integration.test_targets import targets_spec

SCRAPE_S = 1.0
ALL = ".*"  # Grafana's allValue for the dashboard's multi-value variables, "All" selected
TOPICS = ["rain", "stars", "bees", "salt", "wind", "moss", "iron", "clay", "tides", "owls", "glass", "ferns"]
SUBJECTS = ["The river", "A small fox", "My neighbour", "The old train", "Every cloud"]
ACTIONS = ["carried", "painted", "forgot", "measured", "followed", "described", "repaired", "counted", "hid", "sold"]
OBJECTS = ["seven lanterns", "a quiet song", "the broken map", "three blue eggs", "a letter from Lima"]


def write_reference(path: Path) -> Path:
    """Fifty varied human-like lines, the `text` of a JSONL file."""
    lines = [f"{s} {a} {o} before {TOPICS[(i * 7) % len(TOPICS)]} season {i}."
             for i, (s, a, o) in enumerate((s, a, o) for s in SUBJECTS for a in ACTIONS for o in OBJECTS)]
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines[::5]))
    return path


def quality_job(model: Path, out: str, reference: Path) -> Any:
    """Short prompts and answers so the judgement fits the tiny model's 256-token context; one
    over-long prompt goes to errors/ (prompt_too_long)."""
    prompts = {"template": {"text": "A fact about {{ topic }}:",
                            "seeds": {"topic": TOPICS + [" ".join(["word"] * 300)], "take": [1, 2]}}}
    return make_spec(model, out, prompts, rows_per_shard=8, sampling={"max_tokens": 16, "temperature": 0.9, "seed": 3},
                     judge={"model": "self", "min_score": 3, "reason_max_chars": 40}, filters={"min_chars": 1},
                     dedup={"exact": True, "near_threshold": 0.8}, quality={"reference": str(reference)})


def start_deploy_prometheus(url: str, config: Path, target: str) -> subprocess.Popen[bytes]:
    """Like test_monitoring.start_prometheus, but with the shipped scrape config and rules."""
    data = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (scrape,) = [s for s in data["scrape_configs"] if s["job_name"] == "synthfleet"]
    scrape["static_configs"] = [{"targets": [target]}]
    data.update({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": [scrape]})
    for rule_file in data["rule_files"]:
        (config.parent / rule_file).write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
    config.write_text(yaml.safe_dump(data))
    return subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={config.parent / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{url.rsplit(':', 1)[1]}"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)


def query_range(url: str, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/query_range", params={"query": promql, "start": start, "end": end, "step": step},
                  timeout=10)
    r.raise_for_status()
    return [s for s in r.json()["data"]["result"] if s["values"]]


def empty_panel_queries(url: str, start: float, end: float) -> list[str]:
    """Each target as Grafana runs it: a range query over the dashboard's time range at $__interval
    steps, or an instant query at its end."""
    range_s = end - start
    step = grafana_interval(range_s, SCRAPE_S)
    empty = []
    for title, target in dashboard_targets(dashboard()):
        expr = substitute(target["expr"], range_s=range_s, scrape_s=SCRAPE_S, variables={"job": ALL, "model": ALL})
        found = (httpx.get(f"{url}/api/v1/query", params={"query": expr, "time": end}, timeout=10).json()["data"]
                 ["result"] if target.get("instant") else query_range(url, expr, start, end, step))
        if not found:
            empty.append(f"{title}: {expr}")
    return empty


def empty_variables(url: str, start: float, end: float) -> list[str]:
    """label_values(metric, label) as Grafana asks for it: the label's values on the metric's series."""
    empty = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        metric, label = variable["query"]["query"].removeprefix("label_values(").rstrip(")").split(", ")
        r = httpx.get(f"{url}/api/v1/label/{label}/values", params={"match[]": metric, "start": start, "end": end})
        if not r.json()["data"]:
            empty.append(variable["query"]["query"])
    return empty


def test_every_panel_variable_and_alert_expression_returns_data_from_real_jobs(
        pool: Any, tiny_model: Path, tmp_path: Path, bucket: str, prometheus: tuple[str, Path]) -> None:  # noqa: F811
    url, config = prometheus
    (tmp_path / "once").mkdir()
    with Client.local(str(tmp_path / "state"), pools=[pool]) as client:
        proc = start_deploy_prometheus(url, config, client.url.removeprefix("http://"))
        try:
            wait_for(lambda: query(url, 'up{job="synthfleet"} == 1'), 30, "the first scrape")
            start = time.time()
            jobs = [client.submit(quality_job(tiny_model, f"s3://{bucket}/out", write_reference(tmp_path / "ref.jsonl"))),
                    client.submit(fake_job(tmp_path / "fake", "flaky", rows=12, tokens_per_s=200, fail_rows=[3],
                                           die_rows=[6], once_dir=str(tmp_path / "once"))),
                    client.submit(targets_spec(tmp_path / "targets", deny="^c ", kept_rows=4, max_rounds=2))]
            for job in jobs:
                job.wait(timeout=600)
            done = time.time()
            wait_for(lambda: query(url, f'timestamp(up{{job="synthfleet"}}) > {done + 1}'), 20, "a scrape after the jobs")
            end = time.time()
            assert empty_variables(url, start, end) == []
            assert empty_panel_queries(url, start, end) == []
            stripped = {r["alert"]: without_comparisons(r["expr"]) for r in rules()}
            assert [a for a, expr in stripped.items() if not query(url, expr)] == []
            loaded = httpx.get(f"{url}/api/v1/rules").json()["data"]["groups"]
            assert {r["name"]: r["health"] for g in loaded for r in g["rules"]} == {a: "ok" for a in stripped}
        finally:
            proc.terminate()
            proc.wait(timeout=10)
