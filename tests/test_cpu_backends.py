"""The CPU runtimes chosen per model at import time (OpenVINO, ONNX Runtime): conversion, scores against torch fp32,
serving, and OpenVINO's compiled-model cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from rerank_server.backends.onnx_backend import OnnxBackend, onnx_file
from rerank_server.backends.openvino_backend import CACHE_DIR, OpenVinoBackend, model_file
from rerank_server.engine.passes import score_directly
from rerank_server.importer.commit import ImportOptions
from rerank_server.importer.sources import import_from_folder
from rerank_server.models.registry import ModelRegistry
from rerank_server.models.store import find_reranker
from rerank_server.settings import Settings
from tests.conftest import FIXTURE_MODEL_ID, REPO_ROOT, routes_client, scoring_engine
from tests.test_scorer import QUERY, mixed_documents

RUNTIMES = {
    "onnx": OnnxBackend,
    "onnx-int8": OnnxBackend,
    "openvino": OpenVinoBackend,
    "openvino-int8": OpenVinoBackend,
}


def runtime_file(path: Path, backend: str) -> Path:
    return onnx_file(path, backend) if backend.startswith("onnx") else model_file(path, backend).with_suffix(".bin")


@pytest.fixture(scope="module")
def converted(stored_fixture, fixture_model_dir: Path) -> dict[str, str]:
    """The fixture model imported once for each CPU runtime (each import runs its load check, as users' imports do;
    the fidelity gate is tested in tests/test_cpu_classes.py, and would refuse onnx-int8 here)."""
    ids = {backend: f"test-org/mini-{backend}" for backend in RUNTIMES}
    for backend, model_id in ids.items():
        import_from_folder(model_id, fixture_model_dir, ImportOptions(backend=backend, min_spearman=0))
    return ids


@pytest.fixture(scope="module")
def documents() -> list[str]:
    return mixed_documents(48, seed=11)


def scores_of(model_id: str, documents: list[str], backend: str) -> np.ndarray:
    scorer = ModelRegistry(Settings(default_model=model_id)).get(model_id)
    assert isinstance(scorer.backend, RUNTIMES[backend])
    return np.array(score_directly(scorer, [QUERY] * len(documents), documents).scores)


def test_the_store_records_the_backend_and_keeps_only_the_served_files(converted) -> None:
    for backend, model_id in converted.items():
        stored = find_reranker(model_id)
        assert stored is not None and stored.backend == backend
        assert runtime_file(stored.path, backend).is_file()
    assert not onnx_file(find_reranker(converted["onnx-int8"]).path, "onnx").exists()
    assert not list((model_file(find_reranker(converted["openvino"]).path, "openvino").parent).glob("*.onnx"))
    fp32 = runtime_file(find_reranker(converted["onnx"]).path, "onnx").stat().st_size
    # int8 weights: about a quarter of fp32 (OpenVINO keeps the head and the FFN input projections in fp32)
    assert runtime_file(find_reranker(converted["onnx-int8"]).path, "onnx-int8").stat().st_size < fp32 / 2.5
    assert runtime_file(find_reranker(converted["openvino-int8"]).path, "openvino-int8").stat().st_size < fp32 / 1.8


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_fp32_runtimes_score_as_torch(converted, reference_encoder, documents, backend: str) -> None:
    reference = reference_encoder.predict([(QUERY, d) for d in documents])
    np.testing.assert_allclose(scores_of(converted[backend], documents, backend), reference, atol=1e-5)


def test_openvino_int8_keeps_the_ranking(converted, reference_encoder, documents) -> None:
    """The recommended CPU backend: weight-only int8 must keep every ranking of the harsh MiniLM fixture (its random
    head magnifies weight error); docs/benchmarks.md measures more queries and the bge-base shape."""
    scores = scores_of(converted["openvino-int8"], documents, "openvino-int8")
    reference = reference_encoder.predict([(QUERY, d) for d in documents])
    assert spearmanr(scores, reference).statistic >= 0.99
    assert set(np.argsort(-scores)[:10]) == set(np.argsort(-reference)[:10])
    assert np.max(np.abs(scores - reference)) < 0.05


def test_onnx_int8_ranks_like_torch(converted, reference_encoder, documents) -> None:
    scores = scores_of(converted["onnx-int8"], documents, "onnx-int8")
    reference = reference_encoder.predict([(QUERY, d) for d in documents])
    # Activations are quantized too, so it drifts more than OpenVINO's weight-only int8; the ranking still holds.
    assert spearmanr(scores, reference).statistic >= 0.95
    assert np.max(np.abs(scores - reference)) < 0.25


@pytest.mark.parametrize("backend", ["onnx", "openvino-int8"])
def test_a_converted_model_is_served_by_the_http_routes(converted, reference_encoder, backend: str) -> None:
    documents = ["a panda", "a bear", "python"]
    with scoring_engine(default_model=converted[backend]) as engine, routes_client(engine) as client:
        body = client.post("/v1/rerank", json={"query": QUERY, "documents": documents}).json()
    assert body["model"] == converted[backend]
    reference = reference_encoder.predict([(QUERY, d) for d in documents])
    tolerance = 1e-5 if backend == "onnx" else 0.05
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(float(reference[result["index"]]), abs=tolerance)
    assert [r["index"] for r in body["results"]] == list(np.argsort(-reference))


def test_openvino_compiles_at_import_and_loads_from_its_cache(converted) -> None:
    cache = model_file(find_reranker(converted["openvino-int8"]).path, "openvino-int8").parent / CACHE_DIR
    blobs = {p: p.stat().st_mtime_ns for p in cache.iterdir() if p.is_file()}
    assert blobs, "the import's check run compiled the model into the stored model's cache"
    ModelRegistry(Settings(default_model=converted["openvino-int8"])).get(converted["openvino-int8"])
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir() if p.is_file()} == blobs, "loaded without compiling"


def test_openvino_serves_from_a_read_only_store(converted, monkeypatch, tmp_path: Path) -> None:
    """A store baked into a container image may be read-only: the model compiles into a scratch cache instead."""
    from rerank_server.backends import openvino_backend

    real_mkdir = Path.mkdir

    def read_only(self: Path, *args, **kwargs) -> None:
        if self.name == CACHE_DIR and openvino_backend.OPENVINO_DIR in self.parts:
            raise PermissionError(13, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    scorer = ModelRegistry(Settings(default_model=converted["openvino"])).get(converted["openvino"])
    assert len(score_directly(scorer, [QUERY], ["a panda"]).scores) == 1


@pytest.mark.parametrize(("backend", "runtime"), [("onnx-int8", "ONNX Runtime"), ("openvino-int8", "OpenVINO")])
def test_the_command_line_imports_and_verifies_with_a_backend(
    fixture_model_dir: Path, backend: str, runtime: str
) -> None:
    model_id = f"test-org/cli-{backend}"
    command = [sys.executable, "import_models.py", model_id, "--from-dir", str(fixture_model_dir)]
    # onnx-int8 reorders this fixture's rankings (docs/benchmarks.md): stored only when the user accepts that.
    accept = ["--min-spearman", "0"] if backend == "onnx-int8" else []
    run = subprocess.run(
        [*command, "--backend", backend, *accept], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    verify = subprocess.run(
        [sys.executable, "import_models.py", "--verify", model_id],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert verify.returncode == 0 and "OK, score" in verify.stdout and runtime in verify.stdout


@pytest.mark.parametrize("backend", ["tensorrt", "onnx"])  # onnx (fp32) never won: no longer offered
def test_an_unknown_backend_is_refused(fixture_model_dir: Path, backend: str) -> None:
    command = [sys.executable, "import_models.py", "test-org/x", "--from-dir", str(fixture_model_dir)]
    refused = subprocess.run([*command, "--backend", backend], cwd=REPO_ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "invalid choice" in refused.stderr


@pytest.mark.parametrize("backend", ["onnx-int8", "openvino-int8"])
def test_a_converted_model_keeps_only_what_its_runtime_loads_and_is_budgeted_by_it(converted, backend: str) -> None:
    stored = find_reranker(converted[backend])
    weights = runtime_file(stored.path, backend).stat().st_size
    assert not list(stored.path.glob("*.safetensors")) and not list(stored.path.glob("pytorch_model*.bin"))
    assert stored.size_bytes < weights * 1.2, "the stored size is the runtime's weights plus tokenizer files"
    registry = ModelRegistry(Settings(default_model=converted[backend]))
    assert registry._expected_bytes(stored) < weights * 1.2, "the memory budget counts what loads"


def test_torch_bfloat16_on_the_cpu_keeps_the_ranking(stored_fixture, reference_encoder, documents) -> None:
    """RERANK_DTYPE=bfloat16 on a CPU (the fast path where AMX units exist, docs/benchmarks.md): rankings hold."""
    registry = ModelRegistry(Settings(default_model=FIXTURE_MODEL_ID, device="cpu", dtype="bfloat16"))
    scores = np.array(score_directly(registry.get(FIXTURE_MODEL_ID), [QUERY] * len(documents), documents).scores)
    reference = reference_encoder.predict([(QUERY, d) for d in documents])
    assert spearmanr(scores, reference).statistic >= 0.99
    assert len(set(np.argsort(-scores)[:10]) & set(np.argsort(-reference)[:10])) >= 9
    assert np.max(np.abs(scores - reference)) < 0.05


def test_the_cpu_quota_bounds_the_threads(tmp_path: Path) -> None:
    from rerank_server.cpu import quota

    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert quota(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert quota(tmp_path) == 1.5
