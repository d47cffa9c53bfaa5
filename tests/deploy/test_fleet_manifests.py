"""k8s/ for a real fleet, on the built manifests: the worker group autoscales (and only the autoscaler
sidecar can reach the Kubernetes API), model weights come from one shared read-only volume that the
prefill Job fills (or a node-local cache), TLS is in front of the API, and every resource lands in
the synthfleet namespace."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator import cli
from tests.deploy.sources import K8S, KUSTOMIZATIONS, OVERLAYS, build, find

ids = [str(k.relative_to(K8S)) for k in KUSTOMIZATIONS]
MODEL_CACHE = K8S / "overlays" / "gpu-model-cache"
NODE_CACHE = K8S / "overlays" / "gpu-model-cache-hostpath"
PREFILL = K8S / "examples" / "model-prefill"
INGRESS = K8S / "examples" / "ingress-tls"
API_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _cluster(kustomization: Path) -> dict[str, Any]:
    (cluster,) = find(build(kustomization), "RayCluster", "synthfleet")
    return dict(cluster["spec"])


def _head(kustomization: Path) -> dict[str, Any]:
    return dict(_cluster(kustomization)["headGroupSpec"]["template"]["spec"])


def _workers(kustomization: Path) -> dict[str, Any]:
    (group,) = _cluster(kustomization)["workerGroupSpecs"]
    return dict(group["template"]["spec"])


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod.get("volumes", [])}


def _mount(container: dict[str, Any], path: str) -> dict[str, Any]:
    (mount,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == path]
    return dict(mount)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_worker_group_autoscales_from_zero_up_to_its_cap(overlay: str) -> None:
    """In-tree autoscaling (v2) with a bounded idle timeout; replicas left to the autoscaler, which a
    `kubectl apply` of a fixed count would fight; scale-down also needs the coordinator's pool
    release (SYNTHFLEET_IDLE_RELEASE_S), which the serve command reads."""
    kustomization = K8S / "overlays" / overlay
    cluster = _cluster(kustomization)
    assert cluster["enableInTreeAutoscaling"] is True
    options = cluster["autoscalerOptions"]
    assert options["version"] == "v2" and options["upscalingMode"] in ("Default", "Aggressive", "Conservative")
    assert 0 < options["idleTimeoutSeconds"] <= 3600
    assert options["resources"]["requests"] == options["resources"]["limits"]
    (group,) = cluster["workerGroupSpecs"]
    assert "replicas" not in group
    assert group["minReplicas"] == 0 < group["maxReplicas"]
    (settings,) = find(build(kustomization), "ConfigMap", "synthfleet-config")
    assert int(settings["data"]["SYNTHFLEET_IDLE_RELEASE_S"]) > 0
    (command,) = _head(kustomization)["containers"][0]["command"]
    assert '--idle-release-s "$SYNTHFLEET_IDLE_RELEASE_S"' in command


def test_the_gpu_overlay_caps_the_fleet_at_eight_gpus() -> None:
    (group,) = _cluster(K8S / "overlays" / "gpu")["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert group["maxReplicas"] * limits["nvidia.com/gpu"] == 8


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_autoscaler_sidecar_gets_a_kubernetes_api_token(overlay: str) -> None:
    """KubeRay binds its Role to the head's ServiceAccount, which must exist; no pod automounts a
    token, and the projected token is mounted in the autoscaler's container alone."""
    kustomization = K8S / "overlays" / overlay
    docs = build(kustomization)
    head, workers = _head(kustomization), _workers(kustomization)
    (account,) = find(docs, "ServiceAccount", head["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert head["automountServiceAccountToken"] is False and workers["automountServiceAccountToken"] is False
    token_volumes = {name for name, v in _volumes(head).items()
                     if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))}
    (token_volume,) = token_volumes
    sidecar_mounts = _cluster(kustomization)["autoscalerOptions"]["volumeMounts"]
    assert {"name": token_volume, "mountPath": API_TOKEN_DIR, "readOnly": True} in sidecar_mounts
    assert all(m["name"] != token_volume for c in head["containers"] for m in c.get("volumeMounts", []))
    assert not any("projected" in v for v in _volumes(workers).values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_shares_rays_log_directory_with_the_head_in_a_bounded_empty_dir(overlay: str) -> None:
    """Both mount one sized emptyDir at /tmp/ray, so KubeRay does not add an unbounded one."""
    kustomization = K8S / "overlays" / overlay
    head = _head(kustomization)
    ray_logs = _mount(head["containers"][0], "/tmp/ray")["name"]
    (sidecar_logs,) = [m["name"] for m in _cluster(kustomization)["autoscalerOptions"]["volumeMounts"]
                       if m["mountPath"] == "/tmp/ray"]
    assert sidecar_logs == ray_logs
    assert _volumes(head)[ray_logs]["emptyDir"]["sizeLimit"]


def test_the_model_cache_mounts_one_read_only_many_claim_at_models_with_hf_home_on_it() -> None:
    docs = build(MODEL_CACHE)
    (claim,) = find(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    for pod in (_head(MODEL_CACHE), _workers(MODEL_CACHE)):
        ray = pod["containers"][0]
        mount = _mount(ray, "/models")
        assert mount["readOnly"] is True
        volume = _volumes(pod)[mount["name"]]["persistentVolumeClaim"]
        assert volume == {"claimName": claim["metadata"]["name"], "readOnly": True}
        env = _env(ray)
        assert env["HF_HOME"].startswith("/models/") and env["HF_HUB_OFFLINE"] == "1"
    (settings,) = find(docs, "ConfigMap", "synthfleet-config")
    assert "HF_HOME" not in settings["data"]  # the RayJob example shares it and has no /models


def test_with_the_model_cache_the_workers_home_no_longer_holds_weights() -> None:
    def home_gib(kustomization: Path) -> int:
        home = _volumes(_workers(kustomization))[_mount(_workers(kustomization)["containers"][0],
                                                         "/home/synthfleet")["name"]]
        return int(re.fullmatch(r"(\d+)Gi", home["emptyDir"]["sizeLimit"]).group(1))  # type: ignore[union-attr]

    assert home_gib(MODEL_CACHE) <= 20 < home_gib(K8S / "overlays" / "gpu")
    assert home_gib(NODE_CACHE) <= 20


def test_the_prefill_job_downloads_into_the_claim_and_hf_home_the_ray_pods_read() -> None:
    docs = build(PREFILL)
    (job,) = find(docs, "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount = _mount(container, "/models")
    assert not mount.get("readOnly")
    (claim,) = find(build(MODEL_CACHE), "PersistentVolumeClaim")
    assert _volumes(pod)[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert _env(container)["HF_HOME"] == _env(_workers(MODEL_CACHE)["containers"][0])["HF_HOME"]
    assert not _env(container)["HF_XET_CACHE"].startswith("/models")
    (script,) = container["args"]
    assert re.search(r'\bhf download "\$MODEL_ID" --revision "\$MODEL_REVISION"', script)
    (source,) = container["envFrom"]
    (settings,) = find(docs, "ConfigMap", source["configMapRef"]["name"])
    assert settings["data"]["MODEL_ID"] and settings["data"]["MODEL_REVISION"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] > 0


def test_the_node_local_cache_is_a_writable_host_path_under_hf_home_on_the_workers_only() -> None:
    workers = _workers(NODE_CACHE)
    ray = workers["containers"][0]
    mount = _mount(ray, "/models")
    assert not mount.get("readOnly")  # the first worker on a node downloads into it
    assert _volumes(workers)[mount["name"]]["hostPath"]["type"] == "Directory"
    assert _env(ray)["HF_HOME"].startswith("/models/") and "HF_HUB_OFFLINE" not in _env(ray)
    assert not any("hostPath" in v for v in _volumes(_head(NODE_CACHE)).values())


def test_the_ingress_serves_the_api_service_over_tls() -> None:
    docs = build(INGRESS)
    (ingress,) = find(docs, "Ingress")
    spec, annotations = ingress["spec"], ingress["metadata"]["annotations"]
    assert spec["ingressClassName"] == "nginx" and annotations["cert-manager.io/cluster-issuer"]
    (tls,) = spec["tls"]
    assert tls["secretName"] == "synthfleet-api-tls"
    assert tls["hosts"] == [rule["host"] for rule in spec["rules"]]
    backends = [p["backend"]["service"] for rule in spec["rules"] for p in rule["http"]["paths"]]
    assert backends
    for backend in backends:
        (service,) = find(docs, "Service", backend["name"])
        (port,) = [p for p in service["spec"]["ports"]
                   if backend["port"] in ({"name": p.get("name")}, {"number": p["port"]})]
        assert port["targetPort"] == "api" and port["port"] == cli.parser().parse_args(["serve"]).port


def test_the_ingress_admits_a_whole_batch_upload_and_streams_it() -> None:
    """ingress-nginx's body limit is serve's --max-file-mb plus the 1 MiB the API allows the form."""
    (ingress,) = find(build(INGRESS), "Ingress")
    annotations = ingress["metadata"]["annotations"]
    max_file_mb = cli.parser().parse_args(["serve"]).max_file_mb
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == f"{int(max_file_mb) + 1}m"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 300


def _api_rule_sources(kustomization: Path) -> list[dict[str, Any]]:
    docs = build(kustomization)
    (policy,) = find(docs, "NetworkPolicy", "synthfleet-ray")
    (rule,) = [r for r in policy["spec"]["ingress"] if [p["port"] for p in r.get("ports", [])] == [8000]]
    return list(rule["from"])


def test_with_tls_the_api_port_admits_only_the_ingress_controller_and_prometheus() -> None:
    assert _api_rule_sources(K8S / "overlays" / "gpu") == [{"namespaceSelector": {}}]
    sources = _api_rule_sources(INGRESS)
    assert all(set(s) == {"namespaceSelector"} for s in sources)
    namespaces = {s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for s in sources}
    assert namespaces == {"ingress-nginx", "monitoring"}
    # Prometheus, in the namespace the Ray metrics port is open to, still scrapes the API's /metrics.
    (policy,) = find(build(INGRESS), "NetworkPolicy", "synthfleet-ray")
    (metrics_rule,) = [r for r in policy["spec"]["ingress"] if [p["port"] for p in r.get("ports", [])] == [8080]]
    assert metrics_rule["from"][0] in sources


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids)
def test_every_namespaced_resource_lands_in_the_synthfleet_namespace(kustomization: Path) -> None:
    """Components add resources outside the base's namespace transformer: they must carry it."""
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    docs = build(kustomization)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] not in cluster_scoped} == {"synthfleet"}
