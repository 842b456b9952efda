"""`make serve` on a host that was set up once: it serves with the venv it has, offline, even after a `git pull` that
changed the requirements, and says the venv is out of date (make itself, with stand-ins for the venv's programs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _stand_in(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    """The Makefile and requirements beside a venv whose pip fails (no package index) and whose python and bentoml
    only say what they were asked."""
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    _stand_in(bin_dir / "pip", 'echo "pip: no index (offline)" >&2; exit 1')
    _stand_in(bin_dir / "python", 'echo "python $*"')
    _stand_in(bin_dir / "bentoml", 'echo "bentoml $*"')
    (tmp_path / ".venv" / ".installed").touch()
    return tmp_path


def test_make_serve_serves_with_an_out_of_date_venv_and_says_so(checkout: Path) -> None:
    later = time.time() + 5
    os.utime(checkout / "requirements.txt", (later, later))  # a pull changed it after the setup
    done = subprocess.run(["make", "serve", "PYTHON=false"], cwd=checkout, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pip: no index" not in done.stderr  # no install attempted
    assert "requirements.txt changed since .venv was set up" in done.stdout and "make setup" in done.stdout
    assert "bentoml serve service:Reranker --port 8000" in done.stdout
    # On a CPU host, the fastest path of this CPU that keeps rankings (a GPU host stores torch).
    assert "import_models.py --if-missing --backend auto BAAI/bge-reranker-base" in done.stdout


def test_make_serve_sets_up_a_venv_that_was_never_set_up(checkout: Path) -> None:
    (checkout / ".venv" / ".installed").unlink()
    done = subprocess.run(["make", "serve", "PYTHON=false"], cwd=checkout, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "bentoml serve" not in done.stdout  # setup ran (and failed here: no python)
