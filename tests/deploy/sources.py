"""The deployment files as the tests read them: built manifests, CRD schemas, the dashboard's and the
rules' PromQL, and Grafana's variable substitution."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY, K8S = REPO / "deploy", REPO / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "synthfleet.json"
RULES = DEPLOY / "prometheus" / "synthfleet-rules.yaml"
RULES_TEST = DEPLOY / "prometheus" / "synthfleet-rules.test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DOCKERFILE, DOCKERIGNORE, MAKEFILE = DEPLOY / "Dockerfile", REPO / ".dockerignore", REPO / "Makefile"
OVERLAYS = ("gpu", "cpu-dev", "gpu-model-cache", "gpu-model-cache-hostpath")
EXAMPLES = ("rayjob", "ingress-tls", "model-prefill")
KUSTOMIZATIONS = tuple(K8S / "overlays" / o for o in OVERLAYS) + tuple(K8S / "examples" / e for e in EXAMPLES)
# Kustomizations without a Ray cluster (nor any custom resource): the Ray and CRD checks pass them over.
WITHOUT_RAY = (K8S / "examples" / "model-prefill",)
RAY_KUSTOMIZATIONS = tuple(k for k in KUSTOMIZATIONS if k not in WITHOUT_RAY)
SCHEMAS_ENV = "SYNTHFLEET_CRD_SCHEMAS"
COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*(bool\s+)?-?\d+(\.\d+)?([eE][-+]?\d+)?")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def load_yaml_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(text, Loader=yaml.CSafeLoader) if d]


@cache
def build(kustomization: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of one folder, as a list of resources."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it ships on this project's machines); cannot run kustomize")
    out = subprocess.run([kubectl, "kustomize", str(kustomization)], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, f"kubectl kustomize {kustomization.relative_to(REPO)} failed:\n{out.stderr}"
    return load_yaml_docs(out.stdout)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def schemas_dir() -> Path:
    """CRDs (data only) beside the repository: ../shared/schemas, or $SYNTHFLEET_CRD_SCHEMAS."""
    path = Path(os.environ.get(SCHEMAS_ENV) or REPO.parent / "shared" / "schemas")
    if not path.is_dir():
        pytest.skip(f"no CRD schemas at {path} (set {SCHEMAS_ENV} to a folder of KubeRay and "
                    "prometheus-operator CRDs); custom resources not validated")
    return path


@cache
def crd_schemas(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the served version's openAPIV3Schema, for every CRD in the folder."""
    found = {}
    for path in sorted(folder.rglob("*.yaml")):
        for crd in load_yaml_docs(path.read_text()):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    found[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return found


def strict(schema: Any) -> Any:
    """Reject unknown fields the way `kubectl apply --validate=strict` does (CRDs would prune them)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for p in board["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_targets(board: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in panels(board) for t in p.get("targets", [])]


def rule_groups() -> dict[str, Any]:
    """The plain Prometheus rule file: the PrometheusRule's spec (deploy/prometheus/rules_file.py)."""
    return dict(yaml.safe_load(RULES.read_text())["spec"])


def rules() -> list[dict[str, Any]]:
    return [r for g in rule_groups()["groups"] for r in g["rules"]]


def without_comparisons(expr: str) -> str:
    """The expression with every comparison against a number removed: what it compares, not whether.
    Fails when a comparison with something else is left, which this check could not see through."""
    stripped = COMPARISON.sub("", expr)
    assert not re.search(r"==|!=|>=|<=|>|<", QUOTED.sub('""', stripped)), f"comparison left in {stripped!r}"
    return stripped


# Grafana's kbn.roundInterval: (below this many ms, use this many ms).
GRAFANA_ROUNDING_MS = ((15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
                       (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000),
                       (45000, 30000), (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000),
                       (1050000, 900000), (1500000, 1200000), (2700000, 1800000), (5400000, 3600000),
                       (9000000, 7200000), (16200000, 10800000), (32400000, 21600000), (86400000, 43200000))


def grafana_interval(range_s: float, min_interval_s: float, max_data_points: int = 1000) -> float:
    """$__interval: the range over the panel's points, rounded as Grafana rounds it, never below the
    datasource's scrape interval (its `timeInterval`)."""
    raw_ms = range_s * 1000 / max_data_points
    nice_ms = next((ms for below, ms in GRAFANA_ROUNDING_MS if raw_ms < below), 86400000)
    return max(nice_ms / 1000, min_interval_s)


def substitute(expr: str, *, range_s: float, scrape_s: float, variables: dict[str, str]) -> str:
    """Grafana's substitution of the built-in and the dashboard's variables in a PromQL expression.
    $__rate_interval = max($__interval + scrape interval, 4 x scrape interval)."""
    interval = grafana_interval(range_s, scrape_s)
    builtins = {"__rate_interval": max(interval + scrape_s, 4 * scrape_s), "__interval": interval,
                "__range": range_s}
    for name, seconds in builtins.items():
        text = f"{int(seconds * 1000)}ms"
        expr = expr.replace(f"${{{name}}}", text).replace(f"${name}", text)
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr
