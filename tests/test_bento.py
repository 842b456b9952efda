"""`bentoml build` offline; the built Bento shipped to a fresh BentoML home and served with `bentoml serve <tag>`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import FIXTURE_MODEL_ID, REPO_ROOT, RunningServer, running_server


def bentoml_cli(*args: str, home: str | None = None, cwd: Path = REPO_ROOT) -> str:
    env = {**os.environ, "RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID}
    if home:
        env["BENTOML_HOME"] = home
    run = subprocess.run(
        [sys.executable, "-m", "bentoml", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.fixture(scope="module")
def bento_tag(stored_fixture) -> str:
    output = bentoml_cli("build", "--output", "tag")
    return next(line for line in output.splitlines() if line.startswith("__tag__:")).removeprefix("__tag__:")


@pytest.fixture(scope="module")
def bento_dir(bento_tag: str) -> Path:
    name, version = bento_tag.split(":")
    return Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version


def test_the_bento_names_the_preloaded_model_and_is_configured_for_gpus(bento_dir: Path, stored_fixture) -> None:
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    service = info["services"][0]
    assert [m["tag"] for m in service["models"]] == [stored_fixture.tag]
    assert service["config"]["resources"] == {"gpu": 1}
    assert service["config"]["http"]["port"] == 8000
    dockerfile = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:12.8.1" in dockerfile
    assert "python3.11" in dockerfile
    sources = {p.relative_to(bento_dir / "src").as_posix() for p in (bento_dir / "src").rglob("*") if p.is_file()}
    assert {"service.py", "import_models.py", "rerank_server/models/loaded.py"} <= sources
    static = REPO_ROOT / "rerank_server" / "api" / "static"
    assert {p.relative_to(REPO_ROOT).as_posix() for p in static.rglob("*") if p.is_file()} <= sources
    assert not any(s.startswith("tests/") for s in sources)


@pytest.fixture(scope="module")
def shipped_bento(bento_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The Bento exported, imported into an empty BentoML home elsewhere, and served from there."""
    work = tmp_path_factory.mktemp("shipped")
    archive = work / "rerank.tar"  # uncompressed: gzip of the weights would dominate the test time
    bentoml_cli("export", bento_tag, str(archive))
    fresh_home = str(work / "home")
    bentoml_cli("import", str(archive), home=fresh_home, cwd=work)
    env = {"BENTOML_HOME": fresh_home, "RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID}
    with running_server(work / "serve.log", env, target=bento_tag, cwd=work) as running:
        yield running


def test_the_shipped_bento_carries_its_model_and_serves_it(shipped_bento, reference_encoder) -> None:
    documents = ["machine learning is a kind of AI", "the weather is nice", ""]
    body = httpx.post(
        f"{shipped_bento.url}/v1/rerank", json={"query": "what is ML?", "documents": documents}, timeout=60
    ).json()
    reference = reference_encoder.predict([("what is ML?", d) for d in documents])
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(float(reference[result["index"]]), abs=1e-5)
    models = httpx.get(f"{shipped_bento.url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == [FIXTURE_MODEL_ID]  # the empty home holds only what the Bento brought
    for page in ("/playground", "/playground-assets/playground.js"):
        assert httpx.get(f"{shipped_bento.url}{page}").status_code == 200, page
