"""Start-up as operators see it: a default model that cannot be served stops `bentoml serve` at once with one clear
line and a non-zero exit (no restart loop); a preloaded model that cannot load is skipped; settings take the same
names as requests (short names included)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rerank_server.importer.commit import ImportOptions
from rerank_server.importer.sources import import_from_folder
from tests.conftest import FIXTURE_MODEL_ID, REPO_ROOT, free_port, running_server

BROKEN = "test-org/broken-at-start"


@pytest.fixture(scope="module")
def broken_model(stored_fixture, fixture_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A stored model whose weights were damaged after import (a disk error, a partial copy)."""
    folder = shutil.copytree(fixture_model_dir, tmp_path_factory.mktemp("broken") / "model")
    stored = import_from_folder(BROKEN, folder, ImportOptions(check=False)).stored
    (stored.path / "model.safetensors").write_bytes(b"\0" * 1024)
    return BROKEN


def serve_until_exit(env: dict[str, str], tmp_path: Path, timeout: float = 90) -> tuple[int, str, float]:
    """`bentoml serve` with `env`, expected to stop by itself: its exit status, its output, the seconds it took."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(Path(os.environ["BENTOML_HOME"]) / "models", target_is_directory=True)
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", "service:Reranker", "--port", str(free_port())],
        cwd=REPO_ROOT, env={**os.environ, "BENTOML_HOME": str(home), **env}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    return run.returncode, run.stdout + run.stderr, time.monotonic() - started


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_a_default_model_missing_from_the_store_stops_the_server_at_once(stored_fixture, tmp_path) -> None:
    status, output, seconds = serve_until_exit({"RERANK_DEFAULT_MODEL": "my-org/never-imported"}, tmp_path)
    assert status != 0 and seconds < 60
    assert error_lines(output) == [
        "error: RERANK_DEFAULT_MODEL='my-org/never-imported' is not in the model store; import it first (python "
        "import_models.py NAME, or --from-dir DIR) or set RERANK_DEFAULT_MODEL to a stored model (python "
        "import_models.py --list)"
    ], output[-3000:]
    assert "Traceback" not in output


def test_a_default_model_that_cannot_load_stops_the_server_instead_of_restarting_it(broken_model, tmp_path) -> None:
    status, output, seconds = serve_until_exit({"RERANK_DEFAULT_MODEL": broken_model}, tmp_path)
    assert status != 0 and seconds < 60, output[-3000:]
    (line,) = error_lines(output)
    assert line.startswith(f"error: RERANK_DEFAULT_MODEL='{broken_model}' cannot be served: The model `{broken_model}`")
    assert "SafetensorError" in line
    assert output.count("could not be loaded") <= 4, "the worker must not be restarted again and again"


def test_settings_take_short_names_and_a_broken_preload_is_served_around(broken_model, tmp_path) -> None:
    env = {"RERANK_DEFAULT_MODEL": "mini-reranker", "RERANK_PRELOAD": f"{broken_model},my-org/not-imported"}
    with running_server(tmp_path / "serve.log", env) as server:
        ok = httpx.post(f"{server.url}/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=60)
        assert ok.status_code == 200 and ok.json()["model"] == FIXTURE_MODEL_ID
        broken = httpx.post(
            f"{server.url}/v1/rerank", json={"query": "q", "documents": ["a"], "model": broken_model}, timeout=60
        )
        retry = broken.headers["retry-after"]  # the real wait of its load back-off, as the message says
        assert broken.status_code == 503 and f"next try is in {retry} s" in broken.json()["error"]["message"]
        assert f"The model `{broken_model}` could not be loaded" in broken.json()["error"]["message"]
        status = httpx.get(f"{server.url}/", timeout=10).json()
        assert status["default_model"] == FIXTURE_MODEL_ID and status["loaded_models"] == [FIXTURE_MODEL_ID]
    log = (tmp_path / "serve.log").read_text()
    assert f"RERANK_PRELOAD: The model `{broken_model}` could not be loaded" in log
    assert "RERANK_PRELOAD: The model `my-org/not-imported` does not exist" in log
