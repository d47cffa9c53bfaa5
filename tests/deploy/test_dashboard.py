"""deploy/grafana: the dashboard's structure, the panels the issue asks for, and the provisioning files."""

from __future__ import annotations

import re

import yaml

from tests.deploy.sources import DEPLOY, dashboard, dashboard_targets, panels

REQUIRED_METRICS = {
    "synthfleet_generated_tokens_total", "synthfleet_rows_total", "synthfleet_job_progress_ratio",
    "synthfleet_job_eta_seconds", "synthfleet_queue_depth", "synthfleet_workers",
    "synthfleet_shard_duration_seconds_bucket", "synthfleet_shard_retries_total", "synthfleet_row_errors_total",
    "synthfleet_rows_rejected_total", "synthfleet_judge_score_bucket", "synthfleet_diversity",
    "synthfleet_diversity_reference_ratio", "synthfleet_bias_drift_flagged_values",
    "synthfleet_bias_drift_max_shift_ratio", "synthfleet_storage_written_bytes_total",
    "synthfleet_storage_retries_total", "synthfleet_storage_operations_total", "synthfleet_targets_strata_unmet",
}


def test_the_dashboard_has_a_uid_a_title_and_unique_panel_ids() -> None:
    board = dashboard()
    assert re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"]) and board["title"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)


def test_every_target_has_a_prometheus_datasource_and_a_unique_ref_id() -> None:
    board = dashboard()
    for title, target in dashboard_targets(board):
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert target["expr"].strip(), title
    for panel in panels(board):
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]


def test_the_datasource_and_the_query_variables_are_defined_and_used() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    exprs = " ".join(t["expr"] for _, t in dashboard_targets(board))
    for name in ("job", "model"):
        assert variables[name]["query"]["query"].startswith("label_values(")
        assert f'=~"${name}"' in exprs


def test_the_panels_cover_throughput_progress_workers_failures_quality_and_storage() -> None:
    used = set(re.findall(r"synthfleet_[a-z0-9_]+", " ".join(t["expr"] for _, t in dashboard_targets(dashboard()))))
    assert REQUIRED_METRICS <= used
    exprs = [t["expr"] for _, t in dashboard_targets(dashboard())]
    assert any(e.startswith("histogram_quantile(0.5,") for e in exprs)
    assert any(e.startswith("histogram_quantile(0.95,") for e in exprs)


def test_grafana_provisioning_points_at_the_dashboards_folder_and_a_prometheus_datasource() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "synthfleet.yaml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["jsonData"]["timeInterval"]
