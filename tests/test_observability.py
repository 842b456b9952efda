"""Metrics, request ids and access log lines, scraped from and read off a real `bentoml serve`."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FIXTURE_MODEL_ID, RunningServer, running_server

KEY = "observability-secret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def observed(stored_fixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_CACHE_SIZE": "1000", "RERANK_API_KEY": KEY}
    with running_server(tmp_path_factory.mktemp("observed") / "serve.log", env) as running:
        yield running


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("rerank_"):
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_move_by_exactly_what_was_sent(observed) -> None:
    before = scrape(observed.url)
    tokens = 0
    for size in (4, 5, 6):  # one after another: three batches
        body = {"query": "metrics", "documents": [f"document {size} {i}" for i in range(size)]}
        response = httpx.post(f"{observed.url}/v1/rerank", json=body, headers=AUTH, timeout=60)
        assert response.status_code == 200
        tokens += response.json()["usage"]["total_tokens"]
    repeat = {"query": "metrics", "documents": [f"document 4 {i}" for i in range(4)]}  # answered from the cache
    assert httpx.post(f"{observed.url}/v1/rerank", json=repeat, headers=AUTH, timeout=60).status_code == 200
    bad = httpx.post(f"{observed.url}/v1/rerank", json={"query": "q", "documents": []}, headers=AUTH, timeout=60)
    assert bad.status_code == 400
    assert httpx.post(f"{observed.url}/v1/rerank", json=repeat, timeout=60).status_code == 401
    after = scrape(observed.url)

    model = FIXTURE_MODEL_ID
    assert moved(before, after, "rerank_requests_total", route="/v1/rerank", model=model, status="200") == 4
    assert moved(before, after, "rerank_requests_total", route="/v1/rerank", model="", status="400") == 1
    assert moved(before, after, "rerank_requests_total", route="/v1/rerank", model="", status="401") == 1
    assert moved(before, after, "rerank_request_duration_seconds_count", route="/v1/rerank") == 6
    assert moved(before, after, "rerank_pairs_total", model=model) == 15
    assert moved(before, after, "rerank_tokens_total", model=model) == tokens
    assert moved(before, after, "rerank_batch_size_pairs_count", model=model) == 3
    assert moved(before, after, "rerank_batch_size_pairs_sum", model=model) == 15
    assert moved(before, after, "rerank_queue_wait_seconds_count", model=model) == 3
    assert moved(before, after, "rerank_cache_misses_total") == 15
    assert moved(before, after, "rerank_cache_hits_total") == 4
    assert after[("rerank_models_loaded", (("worker", "1"),))] == 1
    assert after[("rerank_model_load_seconds_count", (("model", model),))] == 1
    assert after[("rerank_queue_pairs", ())] == 0


def test_request_ids_come_back_in_the_header_and_the_access_log(observed) -> None:
    body = {"query": "q", "documents": ["a", "b"]}
    fresh = httpx.post(f"{observed.url}/v1/rerank", json=body, headers=AUTH, timeout=60)
    assert fresh.headers["x-request-id"] == fresh.json()["id"] and fresh.json()["id"].startswith("rerank-")
    chosen = httpx.post(
        f"{observed.url}/v1/rerank", json=body, headers={**AUTH, "X-Request-ID": "trace-42.abc"}, timeout=60
    )
    assert chosen.headers["x-request-id"] == chosen.json()["id"] == "trace-42.abc"
    forged = httpx.post(
        f"{observed.url}/v1/rerank", json=body, headers={**AUTH, "X-Request-ID": "x\tstatus=200 injected"}, timeout=60
    )
    assert forged.headers["x-request-id"].startswith("rerank-")
    refused = httpx.post(f"{observed.url}/v1/rerank", json=body, headers={"X-Request-ID": "no-key-1"}, timeout=60)
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "no-key-1"
    tei = httpx.post(f"{observed.url}/rerank", json={"query": "q", "texts": ["a"]}, headers=AUTH, timeout=60)
    assert tei.headers["x-request-id"].startswith("rerank-")

    log = observed.log.read_text()
    assert f"request_id={fresh.json()['id']} POST /v1/rerank status=200 model={FIXTURE_MODEL_ID} pairs=2" in log
    assert "request_id=trace-42.abc POST /v1/rerank status=200" in log
    assert "request_id=no-key-1 POST /v1/rerank status=401" in log
    assert KEY not in log, "API keys must never be logged"


def test_a_path_cannot_write_a_log_line_of_its_own(observed) -> None:
    forged = "2026-01-01T00:00:00+0000 [INFO] [entry_service:rerank:1] request_id=forged POST /v1/rerank status=200"
    for path in (f"/x%0A{forged}", f"/x%0D%0A{forged}", f"/x%E2%80%A8{forged}", "/x%1B%5B2J"):
        httpx.get(f"{observed.url}{path}", headers=AUTH, timeout=30)
    time.sleep(0.5)
    lines = observed.log.read_text().splitlines()
    assert not [line for line in lines if line.startswith("2026-01-01") or "\x1b" in line or "\u2028" in line]
    assert any("GET /x\\n2026-01-01T00:00:00+0000" in line for line in lines), "the path is logged, escaped"
