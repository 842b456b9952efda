"""The ONNX Runtime CPU backend, chosen per model at import time: export, scores against torch fp32, serving."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from rerank_server.backends.onnx_backend import OnnxBackend, onnx_file
from rerank_server.model_store import ImportOptions, find_reranker, import_from_folder
from rerank_server.registry import ModelRegistry
from rerank_server.settings import Settings
from tests.conftest import REPO_ROOT, routes_client, scoring_engine
from tests.test_scorer import QUERY, mixed_documents


@pytest.fixture(scope="module")
def onnx_models(stored_fixture, fixture_model_dir: Path) -> dict[str, str]:
    ids = {"onnx": "test-org/mini-onnx", "onnx-int8": "test-org/mini-onnx-int8"}
    for backend, model_id in ids.items():
        import_from_folder(model_id, fixture_model_dir, ImportOptions(backend=backend))
    return ids


@pytest.fixture(scope="module")
def documents() -> list[str]:
    return mixed_documents(48, seed=11)


def test_the_store_records_the_backend_and_keeps_only_the_served_export(onnx_models) -> None:
    fp32, int8 = find_reranker(onnx_models["onnx"]), find_reranker(onnx_models["onnx-int8"])
    assert (fp32.backend, int8.backend) == ("onnx", "onnx-int8")
    assert onnx_file(fp32.path, "onnx").is_file() and onnx_file(int8.path, "onnx-int8").is_file()
    assert not onnx_file(int8.path, "onnx").exists()
    # int8 weights: about a quarter of the fp32 export
    assert onnx_file(int8.path, "onnx-int8").stat().st_size < onnx_file(fp32.path, "onnx").stat().st_size / 2.5


def test_onnx_fp32_scores_equal_torch(onnx_models, reference_encoder, documents) -> None:
    registry = ModelRegistry(Settings(default_model=onnx_models["onnx"]))
    scorer = registry.get(onnx_models["onnx"])
    assert isinstance(scorer.backend, OnnxBackend)
    scored = scorer.score([QUERY] * len(documents), documents)
    reference = reference_encoder.predict([(QUERY, d) for d in documents])
    np.testing.assert_allclose(scored.scores, reference, atol=1e-5)


def test_onnx_int8_ranks_like_torch(onnx_models, reference_encoder, documents) -> None:
    scorer = ModelRegistry(Settings(default_model=onnx_models["onnx-int8"])).get(onnx_models["onnx-int8"])
    scores = scorer.score([QUERY] * len(documents), documents).scores
    reference = reference_encoder.predict([(QUERY, d) for d in documents])
    # The fixture's classifier head is random with a large spread, which magnifies quantization error; real BGE
    # models fare better (docs/benchmarks.md). Still, the ranking must hold.
    assert spearmanr(scores, reference).statistic >= 0.95
    assert np.max(np.abs(np.array(scores) - reference)) < 0.25


def test_an_onnx_model_is_served_by_the_http_routes(onnx_models, reference_encoder) -> None:
    with scoring_engine(default_model=onnx_models["onnx"]) as engine, routes_client(engine) as client:
        body = client.post("/v1/rerank", json={"query": QUERY, "documents": ["a panda", "a bear", "python"]}).json()
    assert body["model"] == onnx_models["onnx"]
    reference = reference_encoder.predict([(QUERY, d) for d in ["a panda", "a bear", "python"]])
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(float(reference[result["index"]]), abs=1e-5)


def test_the_command_line_imports_and_verifies_with_a_backend(fixture_model_dir: Path) -> None:
    command = [sys.executable, "import_models.py", "test-org/cli-int8", "--from-dir", str(fixture_model_dir)]
    run = subprocess.run(
        [*command, "--backend", "onnx-int8"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    verify = subprocess.run(
        [sys.executable, "import_models.py", "--verify", "test-org/cli-int8"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert verify.returncode == 0 and "OK, score" in verify.stdout and "ONNX Runtime" in verify.stdout
    refused = subprocess.run([*command, "--backend", "tensorrt"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "invalid choice" in refused.stderr


def test_a_converted_model_keeps_only_what_its_runtime_loads_and_is_budgeted_by_it(onnx_models) -> None:
    int8 = find_reranker(onnx_models["onnx-int8"])
    runtime_file = onnx_file(int8.path, "onnx-int8").stat().st_size
    assert not list(int8.path.glob("*.safetensors")) and not list(int8.path.glob("pytorch_model*.bin"))
    assert int8.size_bytes < runtime_file * 1.2, "the stored copy is the int8 graph plus tokenizer files"
    registry = ModelRegistry(Settings(default_model=onnx_models["onnx-int8"]))
    assert registry._expected_bytes(int8) < runtime_file * 1.2, "the memory budget counts what loads"
