"""deploy/prometheus: promtool accepts the scrape config and the rules, and the rules' unit tests
(every alert firing and not firing) pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.sources import PROMETHEUS_CONFIG, RULES_TEST, rule_groups, rules

RULE_FILE = "synthfleet.rules.yml"


@pytest.fixture()
def prometheus_dir(tmp_path: Path) -> Path:
    """The scrape config and the unit tests beside the rule file written from the PrometheusRule."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) is not installed; .ci/run installs it")
    (tmp_path / RULE_FILE).write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
    for source in (PROMETHEUS_CONFIG, RULES_TEST):
        shutil.copy(source, tmp_path / source.name)
    return tmp_path


def promtool(folder: Path, *args: str) -> str:
    out = subprocess.run(["promtool", *args], cwd=folder, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_promtool_accepts_the_scrape_config(prometheus_dir: Path) -> None:
    assert "SUCCESS" in promtool(prometheus_dir, "check", "config", PROMETHEUS_CONFIG.name)


def test_promtool_accepts_the_rules(prometheus_dir: Path) -> None:
    assert f"SUCCESS: {len(rules())} rules found" in promtool(prometheus_dir, "check", "rules", RULE_FILE)


def test_promtool_unit_tests_of_the_alerts_pass(prometheus_dir: Path) -> None:
    assert "SUCCESS" in promtool(prometheus_dir, "test", "rules", RULES_TEST.name)


def test_every_alert_has_a_firing_and_a_not_firing_unit_test() -> None:
    cases = [c for t in yaml.safe_load(RULES_TEST.read_text())["tests"] for c in t["alert_rule_test"]]
    alerts = {r["alert"] for r in rules()}
    assert {c["alertname"] for c in cases if c["exp_alerts"]} == alerts
    assert {c["alertname"] for c in cases if not c["exp_alerts"]} == alerts


def test_the_required_alerts_exist_and_carry_a_severity_and_a_summary() -> None:
    required = {"SynthfleetJobStalled", "SynthfleetHighRowFailureRate", "SynthfleetWorkerLost",
                "SynthfleetThroughputDropped", "SynthfleetDiversityBelowReference"}
    assert required <= {r["alert"] for r in rules()}
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info") and rule["annotations"]["summary"]


def test_the_scrape_config_keeps_synthfleets_job_label() -> None:
    """synthfleet's series carry `job` (the job id): without honor_labels it would become exported_job
    and every `job=~"$job"` in the dashboard and the rules would match nothing."""
    (scrape,) = [s for s in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
                 if s["job_name"] == "synthfleet"]
    assert scrape["honor_labels"] is True
