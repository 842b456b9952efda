"""Every example in the README and docs/ runs as written against a real server: each ```python block, and each curl
command of a ```bash block (set-up commands such as `make serve` are what a reader runs once, not examples).

The server's store holds the fixture models under the ids the examples name, and `http://localhost:8000` becomes its
address. A block preceded by `<!-- not run: why -->` is skipped, with its reason shown.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, RunningServer, running_server

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(?P<marker><!-- not run: (?P<why>[^>]*)-->\s*)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.S)
_SERVER_URLS = ("http://localhost:8000", "http://127.0.0.1:8000")


@dataclass(frozen=True)
class Example:
    source: str
    lang: str
    code: str
    skip: str | None

    def __str__(self) -> str:
        return self.source


def examples() -> list[Example]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code"))
            found.append(Example(f"{path.name}:{line}", match["lang"], match["code"], match["why"]))
    return found


def curl_commands(code: str) -> list[str]:
    """The curl commands of a shell block: continuation lines joined, a quoted body over several lines kept whole."""
    commands, current = [], ""
    for line in re.sub(r"\\\n\s*", " ", code).splitlines():
        if not current and not line.strip().startswith("curl "):
            continue
        current = f"{current}\n{line}" if current else line
        try:
            shlex.split(current, comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        commands.append(current.strip())
        current = ""
    return commands


@pytest.fixture(scope="module")
def docs_server(
    fixture_model_dir: Path, qwen3_dir: Path, qwen3_vl_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server whose store holds the fixtures as BAAI/bge-reranker-base (the default), Qwen/Qwen3-Reranker-0.6B and
    Qwen/Qwen3-VL-Reranker-2B, the models the examples name."""
    work = tmp_path_factory.mktemp("docs-examples")
    env = {**os.environ, "BENTOML_HOME": str(work / "home")}
    models = [("BAAI/bge-reranker-base", fixture_model_dir), ("Qwen/Qwen3-Reranker-0.6B", qwen3_dir)]
    models.append(("Qwen/Qwen3-VL-Reranker-2B", qwen3_vl_dir))  # the README's image example
    for model_id, folder in models:
        subprocess.run(
            [sys.executable, "import_models.py", model_id, "--from-dir", str(folder)],
            cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    with running_server(work / "serve.log", {"BENTOML_HOME": str(work / "home")}) as server:
        yield server


def _pointed_at(code: str, server: RunningServer) -> str:
    for url in _SERVER_URLS:
        code = code.replace(url, server.url)
    return code


def test_the_docs_have_runnable_examples() -> None:
    runnable = [e for e in examples() if e.skip is None]
    assert len([e for e in runnable if e.lang == "python"]) >= 4
    assert len([c for e in runnable if e.lang == "bash" for c in curl_commands(e.code)]) >= 3


@pytest.mark.parametrize("example", examples(), ids=str)
def test_each_example_runs_against_a_real_server(example: Example, docs_server: RunningServer, tmp_path) -> None:
    if example.skip:
        pytest.skip(example.skip)
    env = {**os.environ, "RERANK_BASE_URL": docs_server.url}
    if example.lang == "python":
        script = tmp_path / "example.py"
        script.write_text(_pointed_at(example.code, docs_server))
        # clients/ stands in for `pip install ./clients` (the README's `rerank_client`); tests/test_client_package.py
        # installs it for real.
        path = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "clients")])
        run = subprocess.run(
            [sys.executable, str(script)], cwd=REPO_ROOT, env={**env, "PYTHONPATH": path},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, f"{example.source}:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
        return
    for command in curl_commands(example.code):
        args = shlex.split(_pointed_at(command, docs_server), comments=True)
        run = subprocess.run([*args, "--silent", "--show-error", "--fail-with-body"], capture_output=True, text=True)
        assert run.returncode == 0, f"{example.source}: {command}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
