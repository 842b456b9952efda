"""Several workers in one server (RERANK_WORKERS): the count, each worker's device, pod-level readiness, and two
real workers on this CPU answering alike, with metrics that add up and a drain of both on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from rerank_server.serving.workers import Readiness, visible_gpus, worker_count, worker_device
from tests.conftest import FIXTURE_MODEL_ID, REPO_ROOT, running_server
from tests.test_observability import scrape


def test_one_worker_per_visible_gpu_unless_told() -> None:
    assert worker_count(0, gpus=0) == 1
    assert worker_count(0, gpus=4) == 4
    assert worker_count(3, gpus=8) == 3
    assert worker_count(2, gpus=0) == 2


@pytest.mark.parametrize(
    ("visible", "count"), [("0,1,2,3", 4), ("2", 1), ("", 0), ("-1", 0), ("0,1,-1,3", 2), ("GPU-1a2b,GPU-3c4d", 2)]
)
def test_visible_gpus_follow_cuda_visible_devices_as_cuda_does(monkeypatch, visible: str, count: int) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert visible_gpus() == count


def test_each_worker_drives_its_own_gpu_and_extra_workers_share_them() -> None:
    assert [worker_device("cuda", index, 4) for index in (1, 2, 3, 4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert [worker_device("cuda", index, 2) for index in (1, 2, 3, 4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_device("cuda", 3, 1) == "cuda"  # one GPU: every worker on it
    assert worker_device("cuda", None, 4) == "cuda"  # not under bentoml serve
    assert worker_device("cpu", 2, 4) == "cpu"
    assert worker_device("cuda:3", 1, 4) == "cuda:3"  # an explicit RERANK_DEVICE is kept


def test_the_service_takes_a_gpu_per_worker_and_each_worker_its_own(tmp_path: Path) -> None:
    """service.py as `bentoml serve` and each worker import it, with 4 GPUs faked through CUDA_VISIBLE_DEVICES."""
    probe = (
        "import bentoml, torch, service\n"
        "config = service.Reranker.config\n"
        "print(config['workers'], config['resources']['gpu'])\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1,2,3", "RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID}
    env.pop("RERANK_WORKERS", None)
    run = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["4", "4"]
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env={**env, "RERANK_WORKERS": "2"}, capture_output=True, text=True
    )
    assert run.stdout.split() == ["2", "4"]


def test_readiness_waits_for_every_worker_and_notices_a_dead_one(tmp_path: Path) -> None:
    readiness = Readiness(workers=2, folder=tmp_path)
    assert not readiness.all_ready() and not readiness.lost_a_worker()
    readiness.mark_ready(1)
    assert readiness.ready_workers() == 1 and not readiness.all_ready()
    (tmp_path / "rerank-ready-2").write_text(str(os.getpid()))
    assert readiness.all_ready()
    readiness.mark_leaving(1)  # draining
    assert not readiness.all_ready() and not readiness.lost_a_worker()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "rerank-ready-1").write_text(str(gone.pid))  # marked ready, then killed
    assert not readiness.all_ready() and readiness.lost_a_worker()


def test_one_process_outside_bentoml_serve_is_ready_when_it_answers(monkeypatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert Readiness(workers=1).all_ready()


def _ready_workers(log: str) -> set[str]:
    return set(re.findall(r"Worker (\d) of 2 ready", log))


def test_two_workers_share_the_load_answer_alike_add_up_their_metrics_and_both_drain(
    stored_fixture, reference_encoder, tmp_path: Path
) -> None:
    documents = [f"document {i} about pandas and bamboo forests" for i in range(20)]
    reference = reference_encoder.predict([("where do pandas live?", d) for d in documents])
    # The heavier rounds below can queue minutes of work on one worker of a busy 2-core CI machine: this test is
    # about the spread, not the deadline (tests/test_overload.py has that).
    env = {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_WORKERS": "2", "RERANK_REQUEST_TIMEOUT_S": "600"}
    log = tmp_path / "serve.log"
    with running_server(log, env) as running:
        assert _ready_workers(log.read_text()) == {"1", "2"}
        assert httpx.get(f"{running.url}/readyz").status_code == 200

        async def load() -> list[httpx.Response]:
            # One connection per request: the kernel hands each new connection to whichever worker accepts first.
            async def one() -> httpx.Response:
                async with httpx.AsyncClient(base_url=running.url, timeout=120) as client:
                    return await client.post(
                        "/v1/rerank", json={"query": "where do pandas live?", "documents": documents}
                    )

            return await asyncio.gather(*(one() for _ in range(24)))

        answers = asyncio.run(load())
        assert {response.status_code for response in answers} == {200}
        first = answers[0].json()["results"]
        for response in answers:
            assert response.json()["results"] == first, "every worker answers the same"
        for result in first:
            assert result["relevance_score"] == pytest.approx(float(reference[result["index"]]), abs=1e-5)

        metrics = scrape(running.url)
        assert metrics[("rerank_models_loaded", (("worker", "1"),))] == 1
        assert metrics[("rerank_models_loaded", (("worker", "2"),))] == 1
        assert metrics[("rerank_queue_pairs", ())] == 0
        pairs = metrics[("rerank_pairs_total", (("model", FIXTURE_MODEL_ID),))]
        assert pairs == 24 * len(documents), "the pairs both workers scored, added up"
        served_by = re.findall(r"POST /v1/rerank status=200 .* worker=(\d)", log.read_text())
        assert len(served_by) == 24
        # The kernel gives each new connection to whichever worker accepts first; an idle worker may win every race
        # for a while, so more rounds (of heavier requests, which keep a worker busy) until both have served.
        for _ in range(10):
            if set(served_by) == {"1", "2"}:
                break
            documents = [" ".join(["bamboo"] * 100) + f" {i}" for i in range(100)]
            assert {r.status_code for r in asyncio.run(load())} == {200}
            served_by = re.findall(r"POST /v1/rerank status=200 .* worker=(\d)", log.read_text())
        assert set(served_by) == {"1", "2"}, "the requests were spread over both workers"

        os.kill(running.process.pid, signal.SIGTERM)
        assert running.process.wait(timeout=60) == 0
    assert log.read_text().count("Completed cleanup hook: drain") == 2
