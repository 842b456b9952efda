"""Deployment files: Kubernetes manifests against the Kubernetes schemas (offline), docker-compose essentials."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
AUTOSCALERS = {name: K8S / "autoscaling" / f"{name}.yaml" for name in ("hpa-cpu", "hpa-queue", "keda-scaledobject")}
KUBERNETES_VERSION = "1.30.0"
# KEDA's ScaledObject CRD as released (kubernetes-validate knows only core kinds and passes CRDs unchecked).
KEDA_CRD = REPO_ROOT / "tests" / "schemas" / "keda.sh_scaledobjects.yaml"


@pytest.mark.parametrize(
    "manifest", [*MANIFESTS, AUTOSCALERS["hpa-cpu"], AUTOSCALERS["hpa-queue"]], ids=lambda p: p.name
)
def test_manifest_is_valid_kubernetes(manifest: Path) -> None:
    for document in yaml.safe_load_all(manifest.read_text()):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def keda_errors(document: dict) -> list[str]:
    """What the API server would refuse in a ScaledObject: its CRD's schema, with unknown fields refused too (the API
    server would silently drop them, so a misspelt field would never take effect)."""
    import copy

    import jsonschema

    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == document["apiVersion"].split("/")[1]]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])

    def closed(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for child in node.values():
                closed(child)
        elif isinstance(node, list):
            for child in node:
                closed(child)

    closed(schema["properties"]["spec"])
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(document)
    ]


def test_the_keda_scaled_object_is_valid_and_scales_on_the_queue() -> None:
    (scaled,) = yaml.safe_load_all(AUTOSCALERS["keda-scaledobject"].read_text())
    assert keda_errors(scaled) == []
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and "rerank_queue_pairs" in trigger["metadata"]["query"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "rerank"
    # The checker itself: KEDA wants strings in trigger metadata, and knows no `maxReplicas`.
    broken = yaml.safe_load(AUTOSCALERS["keda-scaledobject"].read_text())
    broken["spec"]["triggers"][0]["metadata"]["threshold"] = 2000
    broken["spec"]["maxReplicas"] = broken["spec"].pop("maxReplicaCount")
    assert len(keda_errors(broken)) == 2


def test_the_queue_metric_the_autoscalers_read_is_one_the_server_exports() -> None:
    from rerank_server.metrics import get_metrics

    gauge = get_metrics().queued_pairs
    assert gauge._name == "rerank_queue_pairs" and gauge._multiprocess_mode == "livesum", "summed over workers"
    (hpa,) = yaml.safe_load_all(AUTOSCALERS["hpa-queue"].read_text())
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == gauge._name
    adapter = yaml.safe_load((K8S / "autoscaling" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["seriesQuery"].startswith(gauge._name + "{") and rule["name"]["as"] == gauge._name


def test_the_bentocloud_config_names_the_service_and_valid_overrides() -> None:
    from bentoml._internal.cloud.schemas.schemasv2 import DeploymentConfigSchema
    from bentoml._internal.configuration.v2 import SCHEMA
    from bentoml._internal.utils.cattr import bentoml_cattr

    from service import Reranker

    config = yaml.safe_load((REPO_ROOT / "deploy" / "bentocloud" / "deployment.yaml").read_text())
    parsed = bentoml_cattr.structure(config, DeploymentConfigSchema)
    assert set(parsed.services) == {Reranker.name}
    scaling = parsed.services[Reranker.name].scaling
    assert scaling is not None and 1 <= scaling.min_replicas <= scaling.max_replicas
    # The overrides are service configuration: BentoML's own schema must accept them.
    SCHEMA.validate({"version": 2, "services": {Reranker.name: parsed.services[Reranker.name].config_overrides}})
    with pytest.raises(Exception, match="concurrency"):
        SCHEMA.validate({"version": 2, "services": {Reranker.name: {"traffic": {"concurrency": 0}}}})


def test_manifests_fit_together() -> None:
    docs = {d["kind"]: d for p in MANIFESTS for d in yaml.safe_load_all(p.read_text())}
    assert set(docs) == {"Deployment", "Service", "PodDisruptionBudget", "Secret"}
    pod = docs["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["ports"][0]["containerPort"] == 8000
    assert container["envFrom"][0]["secretRef"]["name"] == docs["Secret"]["metadata"]["name"]
    assert "RERANK_API_KEY" in docs["Secret"]["stringData"]
    assert docs["Service"]["spec"]["selector"] == pod["metadata"]["labels"]
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    assert docs["Deployment"]["spec"]["replicas"] >= 2, "one pod may be evicted while another serves"
    for autoscaler in AUTOSCALERS.values():
        (scaler,) = yaml.safe_load_all(autoscaler.read_text())
        assert scaler["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
        assert scaler["spec"].get("minReplicas", scaler["spec"].get("minReplicaCount")) >= 2


def test_compose_reserves_a_gpu_restarts_and_checks_readiness() -> None:
    service = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["rerank"]
    device = service["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert service["restart"] == "unless-stopped"
    assert service["env_file"] == [".env"]
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert service["ports"] == ["8000:8000"]


def test_the_grafana_dashboard_uses_only_metrics_the_server_exports() -> None:
    import json
    import re

    from rerank_server.metrics import get_metrics

    dashboard = json.loads((REPO_ROOT / "deploy" / "grafana" / "rerank-dashboard.json").read_text())
    exported = {metric._name for metric in vars(get_metrics()).values()}
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for expr in exprs for name in re.findall(r"rerank_\w+", expr)}
    # Counters are exported as `<name>_total`; prometheus_client keeps the bare name in `_name`.
    assert {name.removesuffix("_total") for name in used} <= exported
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for needed in ("throughput", "p50 / p99", "batch size", "queue wait", "cache hit rate", "models loaded"):
        assert needed in titles
