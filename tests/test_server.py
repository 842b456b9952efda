"""`bentoml serve` from the repository root, called over HTTP as clients call it."""

from __future__ import annotations

import asyncio

import bentoml
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rerank_server.model_store import import_from_folder
from tests.conftest import FIXTURE_MODEL_ID
from tests.test_scorer import QUERY, WORDS, mixed_documents


def test_rerank_matches_the_reference_cross_encoder(server, reference_encoder) -> None:
    documents = mixed_documents(16, seed=7) + ["机器学习是人工智能的一个分支", ""]
    response = httpx.post(f"{server.url}/v1/rerank", json={"query": QUERY, "documents": documents}, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    reference = reference_encoder.predict([(QUERY, d) for d in documents])
    assert len(body["results"]) == len(documents)
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(float(reference[result["index"]]), abs=1e-5)
        assert result["document"]["text"] == documents[result["index"]]
    assert [r["index"] for r in body["results"]] == sorted(range(len(documents)), key=lambda i: -reference[i])


def test_top_n_and_models_and_status(server) -> None:
    body = httpx.post(
        f"{server.url}/v1/rerank", json={"query": "q", "documents": ["a", "b", "c"], "top_n": 2}, timeout=30
    ).json()
    assert len(body["results"]) == 2
    models = httpx.get(f"{server.url}/v1/models").json()
    assert FIXTURE_MODEL_ID in [m["id"] for m in models["data"] if m["loaded"]]
    status = httpx.get(f"{server.url}/", headers={"accept": "application/json"}).json()
    assert FIXTURE_MODEL_ID in status["loaded_models"] and status["default_model"] == FIXTURE_MODEL_ID


def test_bentoml_endpoints_keep_working(server) -> None:
    for path in ("/readyz", "/livez", "/healthz", "/metrics", "/docs", "/docs.json"):
        assert httpx.get(f"{server.url}{path}").status_code == 200, path
    assert "text/html" in httpx.get(f"{server.url}/", headers={"accept": "text/html"}).headers["content-type"]


def test_the_batchable_api_is_callable_with_the_bentoml_client(server, reference_encoder) -> None:
    with bentoml.SyncHTTPClient(server.url) as client:
        scored = client.score_pairs(pairs=[{"model": FIXTURE_MODEL_ID, "query": QUERY, "document": "python code"}])
    assert scored[0]["score"] == pytest.approx(float(reference_encoder.predict([(QUERY, "python code")])[0]), abs=1e-5)
    assert scored[0]["tokens"] > 0 and scored[0]["error"] is None


def _batch_histogram(url: str) -> tuple[float, float]:
    """(model calls, calls serving one request) from BentoML's adaptive batch size histogram of `score_pairs`."""
    calls = single = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        if family.name != "bentoml_service_adaptive_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("method_name") != "score_pairs":
                continue
            if sample.name.endswith("_count"):
                calls += sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 1.0:
                single += sample.value
    return calls, single


def test_concurrent_requests_are_merged_into_one_model_batch(server) -> None:
    calls_before, single_before = _batch_histogram(server.url)
    requests = 8

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            # A long request keeps the model busy while the others queue up behind it in the batcher.
            blocker = asyncio.create_task(
                client.post("/v1/rerank", json={"query": "busy", "documents": [" ".join(WORDS * 20)] * 60})
            )
            await asyncio.sleep(0.5)
            documents = [" ".join([WORDS[j % len(WORDS)]] * 20) for j in range(30)]
            payloads = [{"query": f"query {i}", "documents": documents} for i in range(requests)]
            others = await asyncio.gather(*(client.post("/v1/rerank", json=p) for p in payloads))
            return [await blocker, *others]

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * (requests + 1)
    calls, single = _batch_histogram(server.url)
    # 9 requests (at most 256 pairs a call): without merging they would need 9 model calls.
    assert calls - calls_before <= 4, "the queued requests were merged into few model calls"
    # The histogram counts request parts per call: a call above the 1-bucket held parts of several requests.
    assert (calls - calls_before) - (single - single_before) >= 1


def test_a_stored_model_loads_on_first_use_once(server, fixture_model_dir) -> None:
    import_from_folder("test-org/second-reranker", fixture_model_dir)  # imported while the server runs

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            payload = {"query": "q", "documents": ["a", "b"], "model": "test-org/second-reranker"}
            return await asyncio.gather(*(client.post("/v1/rerank", json=payload) for _ in range(8)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 8
    assert {r.json()["model"] for r in responses} == {"test-org/second-reranker"}
    assert server.log.read_text().count("Loaded test-org/second-reranker") == 1
    loaded = httpx.get(f"{server.url}/", headers={"accept": "application/json"}).json()["loaded_models"]
    assert {FIXTURE_MODEL_ID, "test-org/second-reranker"} <= set(loaded)
