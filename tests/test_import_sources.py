"""import_models.py beyond the Hub: ModelScope (offline, through its cache layout), the terminal menu, --verify."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import import_models
from rerank_server.catalog import KNOWN_MODELS
from rerank_server.importer.sources import import_from_folder
from rerank_server.models.store import find_reranker
from tests.conftest import FIXTURE_MODEL_ID, REPO_ROOT

MS_MODEL = "ms-org/ms-reranker"


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "import_models.py", *args],
        cwd=REPO_ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_modelscope_cache_is_imported_without_network(fixture_model_dir: Path, tmp_path: Path) -> None:
    """ModelScope's cache layout (`models/<org>--<name>/snapshots/<revision>`), as its SDK leaves a download."""
    cache = tmp_path / "modelscope-cache"
    shutil.copytree(fixture_model_dir, cache / "models" / MS_MODEL.replace("/", "--") / "snapshots" / "master")
    env = {"MODELSCOPE_CACHE": str(cache), "MODELSCOPE_ENDPOINT": "http://127.0.0.1:9"}  # any network use fails
    run = _run([MS_MODEL, "--source", "modelscope", "--models-dir", str(tmp_path)], env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"{MS_MODEL}: imported as ms-org--ms-reranker:")
    stored = find_reranker(MS_MODEL)
    assert stored is not None and stored.source == "modelscope" and stored.revision == "master"
    assert (stored.path / "model.safetensors").is_file()


def test_an_unreachable_modelscope_gives_one_clear_line(tmp_path: Path) -> None:
    env = {"MODELSCOPE_CACHE": str(tmp_path / "empty-cache"), "MODELSCOPE_ENDPOINT": "http://127.0.0.1:9"}
    run = _run(["BAAI/bge-reranker-large", "--source", "modelscope", "--models-dir", str(tmp_path)], env)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot download BAAI/bge-reranker-large from ModelScope")
    assert "--from-dir" in lines[-1]


def test_the_menu_offers_the_known_models_and_all_bge(monkeypatch, capsys) -> None:
    all_bge = len(KNOWN_MODELS) + 1  # the last choice, after every catalogue model: every BGE cross-encoder
    answers = iter([str(all_bge + 1), "", "3"])
    assert import_models.choose_from_menu(lambda _: next(answers)) == ["BAAI/bge-reranker-base"]
    assert import_models.choose_from_menu(lambda _: next(answers)) == ["BAAI/bge-reranker-v2-m3"]
    assert import_models.choose_from_menu(lambda _: "5") == ["Qwen/Qwen3-Reranker-0.6B"]
    assert import_models.choose_from_menu(lambda _: str(all_bge)) == [
        "BAAI/bge-reranker-base", "BAAI/bge-reranker-large", "BAAI/bge-reranker-v2-m3",
    ]  # fmt: skip
    shown = capsys.readouterr().out
    assert "~2.2 GB" in shown and "multilingual, long documents" in shown and "(default)" in shown
    assert "Qwen/Qwen3-VL-Reranker-2B" in shown and "multimodal" in shown
    assert f"Please answer a number from 1 to {all_bge}." in shown


def test_on_a_terminal_no_arguments_opens_the_menu(fixture_model_dir: Path, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    shutil.copytree(fixture_model_dir, models_dir / "bge-reranker-large")  # a local copy: no download needed
    home = tmp_path / "bentoml-home"
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "import_models.py", "--models-dir", str(models_dir)],
        cwd=REPO_ROOT, env={**os.environ, "BENTOML_HOME": str(home)},
        stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True,
    )  # fmt: skip
    os.close(terminal)
    output = _read_until(controller, b"[1]: ")
    os.write(controller, b"2\n")
    output += _read_until(controller, b"imported as")
    assert process.wait(timeout=120) == 0, output.decode(errors="replace")
    os.close(controller)
    text = output.decode(errors="replace")
    assert "Which reranker should be imported?" in text and "BAAI/bge-reranker-large: imported as" in text


def test_the_menus_default_is_not_downloaded_again_when_stored(fixture_model_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "bentoml-home"
    env = {"BENTOML_HOME": str(home), "HF_ENDPOINT": "http://127.0.0.1:9"}  # any download attempt fails
    stored = _run(["BAAI/bge-reranker-base", "--from-dir", str(fixture_model_dir)], env)
    assert stored.returncode == 0, stored.stderr
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "import_models.py", "--models-dir", str(tmp_path / "no-models")],
        cwd=REPO_ROOT, env={**os.environ, **env}, stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True,
    )  # fmt: skip
    os.close(terminal)
    output = _read_until(controller, b"[1]: ")
    os.write(controller, b"\n")  # the default
    output += _read_until(controller, b"in the store as")
    assert process.wait(timeout=120) == 0, output.decode(errors="replace")
    os.close(controller)
    assert b"[stored]" in output and b"BAAI/bge-reranker-base: in the store as baai--bge-reranker-base:" in output


def _read_until(controller: int, marker: bytes, timeout: float = 120) -> bytes:
    output = b""
    deadline = time.monotonic() + timeout
    while marker not in output and time.monotonic() < deadline:
        if select.select([controller], [], [], 0.5)[0]:
            try:
                output += os.read(controller, 4096)
            except OSError:
                break
    return output


def test_make_serve_takes_a_port() -> None:
    dry_run = subprocess.run(
        ["make", "-n", "serve", "PORT=8001"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert "bentoml serve service:Reranker --port 8001" in dry_run.stdout, dry_run.stdout + dry_run.stderr


def test_without_a_terminal_no_arguments_imports_the_default(tmp_path: Path, fixture_model_dir: Path) -> None:
    models_dir = tmp_path / "models"
    shutil.copytree(fixture_model_dir, models_dir / "bge-reranker-base")
    run = _run(["--models-dir", str(models_dir)], {"BENTOML_HOME": str(tmp_path / "home")})
    assert run.returncode == 0, run.stderr
    assert "Which reranker" not in run.stdout and run.stdout.startswith("BAAI/bge-reranker-base: imported as")


def test_verify_loads_and_scores_and_catches_a_broken_download(stored_fixture, fixture_model_dir, tmp_path) -> None:
    folder = tmp_path / "truncated"
    shutil.copytree(fixture_model_dir, folder)
    broken = import_from_folder("test-org/truncated-download", folder).stored
    weights = broken.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a download cut off half way
    good = _run(["--verify", FIXTURE_MODEL_ID])
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith(f"{FIXTURE_MODEL_ID}: OK, score 0.")
    bad = _run(["--verify", FIXTURE_MODEL_ID, "test-org/truncated-download", "test-org/never-imported"])
    assert bad.returncode == 1
    assert "test-org/truncated-download: FAILED" in bad.stderr
    assert "test-org/never-imported: FAILED, not in the store" in bad.stderr
    assert f"{FIXTURE_MODEL_ID}: OK" in bad.stdout


@pytest.mark.parametrize("argv", [["--verify"], ["--list"]])
def test_verify_and_list_with_an_empty_store(tmp_path: Path, argv: list[str]) -> None:
    run = _run(argv, {"BENTOML_HOME": str(tmp_path / "empty-home")})
    assert run.returncode == 0 and "No rerankers in the store yet" in run.stdout
