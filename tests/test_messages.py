"""Messages that point at the cause: no warning that cries wolf where the server truncates itself, a warning when a
folder imported under a catalogue id is far from that model, and scripts run outside the venv saying how to run them."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rerank_server.models.loaded import load_tokenizer
from tests.conftest import REPO_ROOT


@pytest.fixture()
def transformers_warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """transformers' log records, which its own logger does not pass to the root logger by default."""
    import transformers

    transformers.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            yield caplog
    finally:
        transformers.logging.disable_propagation()


def test_a_long_document_does_not_log_transformers_indexing_warning(
    fixture_model_dir: Path, transformers_warnings: pytest.LogCaptureFixture
) -> None:
    tokenizer = load_tokenizer(fixture_model_dir)
    long_text = "word " * (tokenizer.model_max_length + 100)
    # What the recipes do with a long document before cutting it into windows: count and locate its tokens.
    assert len(tokenizer(long_text, add_special_tokens=False)["input_ids"]) > tokenizer.model_max_length
    tokenizer(long_text, add_special_tokens=False, return_offsets_mapping=True)
    assert "Token indices sequence length" not in transformers_warnings.text


def test_a_folder_far_from_its_catalogue_id_is_warned_about(fixture_model_dir: Path) -> None:
    from rerank_server.importer.folder import catalogue_mismatch, inspect_folder

    # The case: a small 6-layer BERT (MiniLM) stored as BAAI/bge-reranker-base (~1.1 GB XLM-RoBERTa).
    architecture = inspect_folder(fixture_model_dir, "BAAI/bge-reranker-base").architecture
    warning = catalogue_mismatch(fixture_model_dir, "BAAI/bge-reranker-base", architecture)
    assert warning is not None and "\n" not in warning
    assert "does not look like BAAI/bge-reranker-base" in warning
    assert "a BertForSequenceClassification, where BAAI/bge-reranker-base is a XLMRobertaForSequenceClassification" in (
        warning
    )
    assert "MB of weights, where BAAI/bge-reranker-base has ~1.1 GB" in warning and "Is it the right folder?" in warning
    # Under its own id, or a catalogue id whose family and size it matches, nothing is said.
    assert catalogue_mismatch(fixture_model_dir, "my-org/mini-reranker", architecture) is None
    assert catalogue_mismatch(fixture_model_dir, "cross-encoder/ettin-reranker-32m-v1", architecture) is None


def test_the_import_logs_the_mismatch(fixture_model_dir: Path, monkeypatch, caplog) -> None:
    from rerank_server.importer import commit

    class Stop(Exception):
        pass

    def stop(*args: object, **kwargs: object) -> None:
        raise Stop  # what comes after the check (remote code, storing) is not this test's

    monkeypatch.setattr(commit, "list_rerankers", stop)
    with caplog.at_level(logging.WARNING, logger="bentoml"), pytest.raises(Stop):
        commit.store_folder(
            "BAAI/bge-reranker-base", fixture_model_dir, source="folder", revision=None, fingerprint="f"
        )
    assert "does not look like BAAI/bge-reranker-base" in caplog.text


@pytest.mark.parametrize("script", ["evaluate.py", "import_models.py"])
def test_a_script_run_without_the_venvs_packages_says_how_to_run_it(script: str, tmp_path: Path) -> None:
    # -S: no site-packages, the Python a bare `python` outside the venv is (no numpy, no httpx, no bentoml).
    done = subprocess.run([sys.executable, "-S", str(REPO_ROOT / script), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {script} needs the project's packages") and f".venv/bin/python {script}" in line


def test_the_quick_starts_run_the_scripts_with_the_venvs_python() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    bare = re.findall(r"^python (?:import_models|evaluate)\.py.*$", readme, re.M)
    assert bare == [], bare
    assert ".venv/bin/python evaluate.py docs/eval-sample.jsonl --report out.html" in readme.split("## 中文快速开始")[1]
