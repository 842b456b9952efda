"""Shared fixtures: an isolated BentoML home, an offline fixture cross-encoder, and a real `bentoml serve`."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

# Settings the user may have exported (HF_HUB_OFFLINE on an air-gapped host, an API key, a default model, a mirror)
# must not change what the tests see: every test that needs one sets it itself.
_USER_SETTINGS = (
    "HF_",
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "SENTENCE_TRANSFORMERS_",
    "MODELSCOPE_",
    "RERANK_",
    "BENTOML_",
)
for _name in [name for name in os.environ if name.startswith(_USER_SETTINGS)]:
    del os.environ[_name]
# BentoML reads BENTOML_HOME once, at import: point it at a scratch store before anything imports bentoml.
_SCRATCH = Path(tempfile.mkdtemp(prefix="rerank-tests-"))
# Gone when the run ends: its stores hold gigabytes of copied fixture weights, and runs add up.
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["BENTOML_HOME"] = str(_SCRATCH / "bentoml")
os.environ["HF_HOME"] = str(_SCRATCH / "hf-home")  # never the user's Hub cache
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.fixture_models import build_bge_gemma_reranker, build_minilm_cross_encoder, build_qwen3_reranker  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MODEL_ID = "test-org/mini-reranker"
# The LLM fixtures are stored under the catalogue ids of the models whose shape and tokenizer they copy.
QWEN3_ID = "Qwen/Qwen3-Reranker-0.6B"
BGE_GEMMA_ID = "BAAI/bge-reranker-v2-gemma"
QWEN3_VL_ID = "Qwen/Qwen3-VL-Reranker-2B"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """schemathesis names each operation's test apart (`test[POST /v1/rerank]`) but gives them all one node id, and
    pytest-xdist schedules by node id: without its operation in the id, only one operation would be fuzzed."""
    for item in items:
        label = getattr(item, "operation_label", None)
        if label and item._id.params is None:  # pytest 9's structured id: what a parametrize would have given it
            item._id = item._id.with_params(label)


@pytest.fixture(scope="session")
def fixture_model_dir() -> Path:
    """A MiniLM-L6 cross-encoder folder in Hugging Face format, built once per test session."""
    return build_minilm_cross_encoder(_SCRATCH / "mini-reranker")


@pytest.fixture(scope="session")
def stored_fixture(fixture_model_dir: Path):
    """The fixture model imported into the scratch BentoML store under FIXTURE_MODEL_ID."""
    from rerank_server.importer.sources import import_from_folder

    return import_from_folder(FIXTURE_MODEL_ID, fixture_model_dir).stored


@pytest.fixture(scope="session")
def qwen3_dir() -> Path:
    """A tiny random Qwen3 causal LM with a Qwen2 byte-level BPE tokenizer (see fixture_models)."""
    return build_qwen3_reranker(_SCRATCH / "qwen3-reranker")


@pytest.fixture(scope="session")
def bge_gemma_dir() -> Path:
    """A tiny random Gemma causal LM with a Gemma tokenizer (see fixture_models)."""
    return build_bge_gemma_reranker(_SCRATCH / "bge-gemma-reranker")


@pytest.fixture(scope="session")
def stored_llms(stored_fixture, qwen3_dir: Path, bge_gemma_dir: Path) -> tuple[str, str]:
    """Both LLM fixtures in the test store (under their catalogue ids: their recipes come from the catalogue)."""
    from rerank_server.importer.sources import import_from_folder

    return import_from_folder(QWEN3_ID, qwen3_dir).stored.model_id, import_from_folder(
        BGE_GEMMA_ID, bge_gemma_dir
    ).stored.model_id


@pytest.fixture(scope="session")
def qwen3_vl_dir() -> Path:
    """A tiny random Qwen3-VL with Qwen's tokenizer layout, image processor and chat template (see fixture_models)."""
    from tests.fixture_models import build_qwen3_vl_reranker

    return build_qwen3_vl_reranker(_SCRATCH / "qwen3-vl-reranker")


@pytest.fixture(scope="session")
def stored_vl(stored_fixture, qwen3_vl_dir: Path) -> str:
    """The Qwen3-VL fixture in the test store under QWEN3_VL_ID (its recipe comes from the catalogue)."""
    from rerank_server.importer.sources import import_from_folder

    return import_from_folder(QWEN3_VL_ID, qwen3_vl_dir).stored.model_id


@contextmanager
def routes_client(engine, raise_server_exceptions: bool = True) -> Iterator[TestClient]:
    """A TestClient on the HTTP routes, served by `engine` instead of the BentoML service's."""
    from rerank_server.api.app import app
    from rerank_server.api.dependencies import current_engine, current_health
    from rerank_server.api.tracking import RequestTracking

    # An outer client's engine (a test module's) is served again once an inner one (a single test's) closes.
    outer = dict(app.dependency_overrides)
    app.dependency_overrides[current_engine] = lambda: engine
    app.dependency_overrides[current_health] = lambda: lambda: engine.liveness.problem() is None
    try:
        with TestClient(RequestTracking(app), raise_server_exceptions=raise_server_exceptions) as client:
            yield client
    finally:
        app.dependency_overrides.clear()
        app.dependency_overrides.update(outer)


@contextmanager
def scoring_engine(**settings) -> Iterator:
    """A real RerankEngine (registry, continuous batcher, cache) on the test store; its thread stops afterwards."""
    from rerank_server.engine.engine import RerankEngine
    from rerank_server.settings import Settings

    engine = RerankEngine(Settings(**{"default_model": FIXTURE_MODEL_ID, **settings}))
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="session")
def engine(stored_fixture) -> Iterator:
    with scoring_engine() as session_engine:
        yield session_engine


@pytest.fixture()
def client(engine) -> Iterator[TestClient]:
    with routes_client(engine) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def reference_encoder(fixture_model_dir: Path):
    """sentence-transformers' own CrossEncoder on the same weights: the reference for every score."""
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(fixture_model_dir), device="cpu")


def scores_by_index(results: list[dict], key: str = "relevance_score") -> list[float]:
    """A rerank answer's scores in the order the documents were sent."""
    return [score for _, score in sorted((r["index"], r[key]) for r in results)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    """A `bentoml serve` subprocess on a free loopback port."""

    def __init__(self, target: str, env: dict[str, str], cwd: Path, log: Path) -> None:
        if "BENTOML_HOME" not in env:
            # BentoML keeps its Prometheus files under BENTOML_HOME and a starting server wipes them: each server gets
            # a home of its own that shares the test model store.
            home = log.parent / "bentoml-home"
            home.mkdir(exist_ok=True)
            (home / "models").symlink_to(Path(os.environ["BENTOML_HOME"]) / "models", target_is_directory=True)
            env = {**env, "BENTOML_HOME": str(home)}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"server not ready in {timeout} s:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self._log_file.close()


@contextmanager
def running_server(log: Path, env: dict[str, str], target: str = "service:Reranker", cwd: Path = REPO_ROOT):
    """`bentoml serve target` with `env` added, ready on a free port until the block ends."""
    running = RunningServer(target, env, cwd, log)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def server(stored_fixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """`bentoml serve service:Reranker` from the repository root, serving the fixture model (one per session)."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with running_server(log, {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID}) as running:
        yield running
