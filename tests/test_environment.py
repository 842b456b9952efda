"""The suite does not depend on what the user exported: settings in the environment never reach the tests."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

# What an air-gapped host or a configured deployment often exports, each able to break a test that inherits it.
USER_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "TRANSFORMERS_OFFLINE": "1",
    "RERANK_MAX_DOCUMENTS": "1",
    "RERANK_API_KEY": "exported-key",
    "RERANK_DEFAULT_MODEL": "my-org/not-imported",
}


def test_exported_settings_do_not_reach_the_tests() -> None:
    tests = [
        "tests/test_import_models.py::test_download_through_an_hf_endpoint_mirror",
        "tests/test_http_api.py::test_top_n",
        "tests/test_registry.py::test_settings_from_the_environment",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=REPO_ROOT, env={**os.environ, **USER_ENVIRONMENT}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
