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
