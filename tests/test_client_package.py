"""The Python client as a package: built from clients/ alone, installed into a fresh virtual environment, and the
README's snippets run from another directory against a real `bentoml serve`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import FIXTURE_MODEL_ID, REPO_ROOT


def _readme_client_snippets() -> list[str]:
    section = REPO_ROOT.joinpath("README.md").read_text(encoding="utf-8").split("## Python clients", 1)[1]
    section = section.split("\n## ", 1)[0]
    return [code for code in re.findall(r"```python\n(.*?)```", section, re.S) if "rerank_client" in code]


def test_the_readme_installs_the_client_by_its_own_pyproject() -> None:
    readme = REPO_ROOT.joinpath("README.md").read_text(encoding="utf-8")
    assert "pip install ./clients" in readme
    assert all("from rerank_client import" in code for code in _readme_client_snippets())


def test_the_client_installs_into_a_fresh_venv_and_the_readme_snippets_run_elsewhere(server, tmp_path: Path) -> None:
    # A copy: building writes build/ and *.egg-info next to the sources.
    source = tmp_path / "clients"
    shutil.copytree(REPO_ROOT / "clients", source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    wheels = tmp_path / "wheels"
    # Offline: this environment's setuptools builds it (no build isolation, no index).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(wheels), str(source)], check=True, timeout=300)  # fmt: skip
    (wheel,) = wheels.glob("rerank_client-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)], check=True,
                   timeout=300)  # fmt: skip
    # httpx (its only dependency) from this environment, behind the fresh venv's own packages: there is no index here.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(purelib, "zz-httpx-from-the-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"RERANK_BASE_URL": server.url}
    check = "import importlib.metadata as m, rerank_client; print(rerank_client.__file__, m.requires('rerank-client'))"
    found = subprocess.run([str(python), "-c", check], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith(purelib) and "['httpx>=0.27']" in found.stdout  # installed, httpx its only need

    snippets = _readme_client_snippets()
    assert len(snippets) == 2
    for code in snippets:
        code = code.replace("http://localhost:8000", server.url).replace("BAAI/bge-reranker-base", FIXTURE_MODEL_ID)
        done = subprocess.run([str(python), "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip(), code
