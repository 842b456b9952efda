"""Overload and faults as clients see them: 429 + Retry-After at once, 504 past the deadline, 503 on out-of-memory,
JSON 500 for bugs, the queue freed when a request gives up, and a SIGTERM that lets in-flight requests finish."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, wait

import httpx
import pytest
import torch

from tests.conftest import FIXTURE_MODEL_ID, RunningServer, routes_client, running_server, scoring_engine
from tests.test_batcher import GatedScorer, pairs


@pytest.fixture()
def gated() -> GatedScorer:
    return GatedScorer()


def occupy(engine, scorer: GatedScorer, queued: int = 0) -> list[Future]:
    """Keep the engine's model thread busy (and `queued` pairs waiting) until the scorer's gate opens; the futures
    of that work, done once it has left the queue."""
    scorer.gate.clear()
    work = [engine.batcher.submit("busy-model", scorer, pairs(1))]
    assert scorer.started.wait(5)
    if queued:
        work.append(engine.batcher.submit("busy-model", scorer, pairs(*range(queued))))
    return work


def test_a_full_queue_is_a_fast_429_with_retry_after(stored_fixture, gated) -> None:
    with scoring_engine(max_queue_pairs=4) as engine, routes_client(engine) as client:
        occupying = occupy(engine, gated, queued=4)
        started = time.perf_counter()
        response = client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
        assert time.perf_counter() - started < 1.0
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["type"] == "TooManyRequestsError"
        assert response.json()["error"]["code"] == 429
        tei = client.post("/rerank", json={"query": "q", "texts": ["a"]})
        assert tei.status_code == 429 and tei.json()["error_type"] == "Overloaded"
        gated.gate.set()
        wait(occupying, timeout=10)  # the queue has room again once the work holding it is done
        assert client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"]}).status_code == 200


def test_a_request_past_its_deadline_is_a_504_and_leaves_the_queue(stored_fixture, gated) -> None:
    from prometheus_client import REGISTRY

    def scored_pairs() -> float:
        return REGISTRY.get_sample_value("rerank_pairs_total", {"model": FIXTURE_MODEL_ID}) or 0.0

    with scoring_engine(request_timeout_s=0.3) as engine, routes_client(engine) as client:
        occupy(engine, gated)
        before = scored_pairs()
        started = time.perf_counter()
        response = client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b", "c"]})
        assert 0.3 <= time.perf_counter() - started < 3.0
        assert response.status_code == 504
        assert response.json()["error"] == {
            "message": "The request was not scored within 0.3 s (RERANK_REQUEST_TIMEOUT_S)",
            "type": "TimeoutError", "param": None, "code": 504,
        }  # fmt: skip
        gated.gate.set()
        assert client.post("/v1/rerank", json={"query": "q", "documents": ["d"]}).status_code == 200
        assert scored_pairs() - before == 1, "the timed-out request's pairs must not be scored"
        assert engine.batcher.queued_pairs == 0


@pytest.mark.parametrize(
    ("failure", "status", "message"),
    [
        (torch.OutOfMemoryError("CUDA out of memory"), 503, "ran out of memory"),
        (KeyError("bug"), 500, "Internal error: KeyError"),
    ],
)
def test_model_failures_are_json_errors(stored_fixture, monkeypatch, failure, status, message) -> None:
    with scoring_engine() as engine, routes_client(engine, raise_server_exceptions=False) as client:
        scorer = engine.registry.get(FIXTURE_MODEL_ID)
        monkeypatch.setattr(scorer, "forward", lambda encoded: (_ for _ in ()).throw(failure))
        response = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
        assert response.status_code == status
        assert message in response.json()["error"]["message"]
        monkeypatch.undo()
        assert client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200


@pytest.fixture(scope="module")
def small_queue(stored_fixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose queue holds 128 pairs: two waiting 64-document requests fill it."""
    env = {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_MAX_QUEUE_PAIRS": "128", "RERANK_MAX_BATCH_PAIRS": "64"}
    with running_server(tmp_path_factory.mktemp("small-queue") / "serve.log", env) as running:
        yield running


def test_a_burst_beyond_the_queue_gets_fast_429s_and_the_server_recovers(small_queue) -> None:
    """The HTTP routes and BentoML's `/score_pairs` share one queue and refuse alike: 429 and Retry-After at once,
    never BentoML's own estimate-based 503."""
    documents = [" ".join(["word"] * 200) + f" {i}" for i in range(64)]

    async def burst() -> list[tuple[httpx.Response, float]]:
        async with httpx.AsyncClient(base_url=small_queue.url, timeout=120) as client:

            async def timed(i: int) -> tuple[httpx.Response, float]:
                started = time.perf_counter()
                if i % 2:
                    pairs = [{"model": FIXTURE_MODEL_ID, "query": f"q{i}", "document": d} for d in documents]
                    response = await client.post("/score_pairs", json={"pairs": pairs})
                else:
                    response = await client.post("/v1/rerank", json={"query": f"q{i}", "documents": documents})
                return response, time.perf_counter() - started

            return await asyncio.gather(*(timed(i) for i in range(12)))

    answers = asyncio.run(burst())
    statuses = sorted(response.status_code for response, _ in answers)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 6, statuses  # at most one running and two waiting at any time
    for response, seconds in answers:
        if response.status_code == 429:
            assert seconds < 2.0 and response.headers["retry-after"] == "1"
            if response.request.url.path == "/v1/rerank":
                assert response.json()["error"]["code"] == 429
    assert any(r.status_code == 429 and r.request.url.path == "/score_pairs" for r, _ in answers)
    started = time.perf_counter()
    after = httpx.post(f"{small_queue.url}/v1/rerank", json={"query": "q", "documents": ["one", "two"]}, timeout=60)
    assert after.status_code == 200 and time.perf_counter() - started < 2.0


def test_sigterm_lets_the_request_in_flight_finish(stored_fixture, tmp_path) -> None:
    documents = [" ".join(["word"] * 200) + f" {i}" for i in range(100)]
    with running_server(tmp_path / "serve.log", {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID}) as running:

        async def scenario() -> tuple[httpx.Response, BaseException | httpx.Response]:
            async with httpx.AsyncClient(base_url=running.url, timeout=120) as client:
                in_flight = asyncio.create_task(client.post("/v1/rerank", json={"query": "q", "documents": documents}))
                await asyncio.sleep(1.0)
                os.kill(running.process.pid, signal.SIGTERM)  # as `docker stop` / Kubernetes do, to the main process
                await asyncio.sleep(0.5)
                async with httpx.AsyncClient(base_url=running.url, timeout=60) as late_client:
                    try:
                        late: BaseException | httpx.Response = await late_client.post(
                            "/v1/rerank", json={"query": "q", "documents": ["d"]}
                        )
                    except httpx.TransportError as exc:
                        late = exc
                return await in_flight, late

        finished, late = asyncio.run(scenario())
        assert finished.status_code == 200 and len(finished.json()["results"]) == 100
        # A request that arrives once shutdown has begun is not served: the connection is closed unanswered (a
        # transport error clients retry elsewhere), never a half-written or 5xx answer.
        assert isinstance(late, httpx.TransportError), late
        assert running.process.wait(timeout=60) == 0
    assert "Completed cleanup hook: drain" in (tmp_path / "serve.log").read_text()


def test_a_client_that_leaves_takes_its_queued_work_with_it(stored_fixture, tmp_path) -> None:
    """A 600-document request (~20 s of CPU here) whose client gives up after a second: its pieces that had not
    started are dropped, and the access log says 499 at once instead of 200 twenty seconds later."""
    from tests.test_observability import moved, scrape

    documents = [" ".join(["word"] * 200) + f" {i}" for i in range(600)]
    log = tmp_path / "serve.log"
    # Pieces of 64 pairs: a few seconds each on any CPU (a 256-pair piece took 28 s on a 2-core EPYC without AMX).
    env = {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_MAX_BATCH_PAIRS": "64"}
    with running_server(log, env) as server:
        before = scrape(server.url)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/rerank", json={"query": "q", "documents": documents}, timeout=1.0)
        left = time.monotonic()
        while "status=499" not in log.read_text() and time.monotonic() - left < 10:
            time.sleep(0.1)
        noticed = time.monotonic() - left
        started = time.monotonic()
        ok = httpx.post(f"{server.url}/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=60)
        waited = time.monotonic() - started
        after = scrape(server.url)
    assert noticed < 5, "the disconnect must be noticed while the request waits"
    assert ok.status_code == 200
    scored = moved(before, after, "rerank_pairs_total", model=FIXTURE_MODEL_ID) - 1
    assert scored <= 256, f"{scored:.0f} of the 600 pairs were scored after the client left"
    assert waited < 15, "the next request waits at most for the piece that was already running"
