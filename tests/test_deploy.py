"""Deployment files: Kubernetes manifests against the Kubernetes schemas (offline), docker-compose essentials."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO_ROOT

MANIFESTS = sorted((REPO_ROOT / "deploy" / "k8s").glob("*.yaml"))
KUBERNETES_VERSION = "1.30.0"


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(manifest: Path) -> None:
    for document in yaml.safe_load_all(manifest.read_text()):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_manifests_fit_together() -> None:
    docs = {d["kind"]: d for p in MANIFESTS for d in yaml.safe_load_all(p.read_text())}
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler", "Secret"}
    pod = docs["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["ports"][0]["containerPort"] == 8000
    assert container["envFrom"][0]["secretRef"]["name"] == docs["Secret"]["metadata"]["name"]
    assert "RERANK_API_KEY" in docs["Secret"]["stringData"]
    assert docs["Service"]["spec"]["selector"] == pod["metadata"]["labels"]
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]


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
