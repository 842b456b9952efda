"""Overload never surfaces as a 500: the batcher's refusals become 503 with Retry-After, bugs become JSON errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from rerank_server.http_api import BackendBusyError
from tests.conftest import FIXTURE_MODEL_ID, DirectBackend, RunningServer, routes_client, running_server


class RefusingBackend(DirectBackend):
    def __init__(self, registry, error: Exception) -> None:
        super().__init__(registry)
        self.error = error

    async def batch_score(self, pairs):
        raise self.error


def test_a_busy_batcher_is_a_503_with_retry_after(direct_backend) -> None:
    backend = RefusingBackend(direct_backend.registry, BackendBusyError("process is overloaded"))
    with routes_client(backend) as client:
        response = client.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["type"] == "ServiceUnavailableError"
        tei = client.post("/rerank", json={"query": "q", "texts": ["d"]})
        assert tei.status_code == 503 and tei.json()["error_type"] == "ServiceUnavailableError"


def test_an_unexpected_failure_is_a_json_500(direct_backend) -> None:
    backend = RefusingBackend(direct_backend.registry, KeyError("bug"))
    with routes_client(backend, raise_server_exceptions=False) as client:
        response = client.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "Internal error: KeyError"


@pytest.fixture(scope="module")
def impatient(stored_fixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose batcher accepts 1.5 s of queueing: a short request fits, a burst of long ones cannot."""
    env = {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_MAX_LATENCY_MS": "1500", "RERANK_MAX_BATCH_PAIRS": "64"}
    with running_server(tmp_path_factory.mktemp("impatient") / "serve.log", env) as running:
        yield running


def test_a_burst_beyond_the_latency_budget_gets_fast_503s_not_500s(impatient) -> None:
    documents = [" ".join(["word"] * 200) + f" {i}" for i in range(64)]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=impatient.url, timeout=120) as client:
            return await asyncio.gather(
                *(client.post("/v1/rerank", json={"query": f"q{i}", "documents": documents}) for i in range(12))
            )

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses, "the burst should exceed a 1.5 s budget"
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == 503
    # Once the burst is over, a short request is served again (after the Retry-After pause a client would take).
    for _ in range(10):
        after = httpx.post(f"{impatient.url}/v1/rerank", json={"query": "q", "documents": ["one", "two"]}, timeout=60)
        if after.status_code == 200:
            break
        time.sleep(1)
    assert after.status_code == 200
