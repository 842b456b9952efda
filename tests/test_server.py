"""`bentoml serve` from the repository root, called over HTTP as clients call it."""

from __future__ import annotations

import asyncio
import itertools
import time

import bentoml
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rerank_server.importer.sources import import_from_folder
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
    # Best first; documents whose reference scores differ by float noise only (1e-6, batch padding) may swap places.
    ranked = [float(reference[r["index"]]) for r in body["results"]]
    assert all(earlier >= later - 1e-5 for earlier, later in itertools.pairwise(ranked))


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
    for path in ("/readyz", "/livez", "/healthz", "/metrics", "/docs", "/docs.json", "/bentoml"):
        assert httpx.get(f"{server.url}{path}").status_code == 200, path
    assert "text/html" in httpx.get(f"{server.url}/", headers={"accept": "text/html"}).headers["content-type"]


def test_the_batchable_api_is_callable_with_the_bentoml_client(server, reference_encoder) -> None:
    with bentoml.SyncHTTPClient(server.url) as client:
        scored = client.score_pairs(pairs=[{"model": FIXTURE_MODEL_ID, "query": QUERY, "document": "python code"}])
    assert scored[0]["score"] == pytest.approx(float(reference_encoder.predict([(QUERY, "python code")])[0]), abs=1e-5)
    assert scored[0]["tokens"] > 0 and scored[0]["error"] is None


def test_the_batchable_api_scores_a_pair_without_a_model_with_the_default_model(server, reference_encoder) -> None:
    # As /v1/rerank does: `model` is optional, not a pydantic error dump.
    with bentoml.SyncHTTPClient(server.url) as client:
        scored = client.score_pairs(pairs=[{"query": QUERY, "document": "python code"}])
    assert scored[0]["model"] == FIXTURE_MODEL_ID and scored[0]["error"] is None
    assert scored[0]["score"] == pytest.approx(float(reference_encoder.predict([(QUERY, "python code")])[0]), abs=1e-5)


def _batches(url: str) -> tuple[float, float]:
    """(model calls, pairs scored) for the fixture model, from the server's rerank_batch_size_pairs histogram."""
    calls = pairs = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.labels.get("model") != FIXTURE_MODEL_ID:
                continue
            if sample.name == "rerank_batch_size_pairs_count":
                calls += sample.value
            elif sample.name == "rerank_batch_size_pairs_sum":
                pairs += sample.value
    return calls, pairs


def test_concurrent_requests_are_merged_into_one_model_batch(server) -> None:
    calls_before, pairs_before = _batches(server.url)
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
    calls, pairs = _batches(server.url)
    assert pairs - pairs_before == 60 + requests * 30
    # 9 requests; the 8 that queued behind the blocker (240 pairs, under the 256-pair cap) share one model call.
    assert calls - calls_before <= 3, "the queued requests were merged into few model calls"


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


def test_the_bentoml_api_replaces_lone_surrogates_as_the_routes_do(server) -> None:
    body = b'{"pairs": [{"model": "mini-reranker", "query": "\\ud800 q", "document": "a \\udfff b"}]}'
    response = httpx.post(
        f"{server.url}/score_pairs", content=body, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()
    assert result["error"] is None and 0 < result["score"] < 1
    same = httpx.post(
        f"{server.url}/score_pairs",
        json={"pairs": [{"model": "mini-reranker", "query": "\ufffd q", "document": "a \ufffd b"}]},
        timeout=60,
    ).json()[0]
    assert result["score"] == pytest.approx(same["score"], abs=1e-6)


def _adaptive_batches(url: str) -> tuple[float, float]:
    """(dispatches, calls merged into them) of `/score_pairs`, from BentoML's own adaptive batch size histogram."""
    dispatches = calls = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.labels.get("method_name") != "score_pairs":
                continue
            if sample.name.endswith("adaptive_batch_size_count"):
                dispatches += sample.value
            elif sample.name.endswith("adaptive_batch_size_sum"):
                calls += sample.value
    return dispatches, calls


def test_the_batchable_api_merges_bentoml_client_calls_and_shares_the_routes_queue(server) -> None:
    """BentoML clients calling the batchable `score_pairs` while HTTP clients call `/v1/rerank` on the same pairs:
    BentoML's dispatcher merges the API's calls, they join the routes' queue, and every score is the same."""
    import concurrent.futures

    documents = [" ".join(WORDS[i % len(WORDS) :] + WORDS[: i % len(WORDS)]) for i in range(12)]
    pairs = [{"model": FIXTURE_MODEL_ID, "query": QUERY, "document": d} for d in documents]
    before = _adaptive_batches(server.url)
    blocker = concurrent.futures.ThreadPoolExecutor(1).submit(
        httpx.post, f"{server.url}/v1/rerank", json={"query": "busy", "documents": [" ".join(WORDS * 20)] * 60},
        timeout=300,
    )  # fmt: skip

    def api_call(_: int) -> list[dict]:
        with bentoml.SyncHTTPClient(server.url, timeout=300) as client:
            return client.score_pairs(pairs=pairs)

    def route_call(_: int) -> dict:
        return httpx.post(f"{server.url}/v1/rerank", json={"query": QUERY, "documents": documents}, timeout=300).json()

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        api_answers = pool.map(api_call, range(8))
        route_answers = pool.map(route_call, range(4))
        api_answers, route_answers = list(api_answers), list(route_answers)
    assert blocker.result().status_code == 200
    expected = [score for _, score in sorted((r["index"], r["relevance_score"]) for r in route_answers[0]["results"])]
    for answer in route_answers:
        by_index = [score for _, score in sorted((r["index"], r["relevance_score"]) for r in answer["results"])]
        assert by_index == pytest.approx(expected, abs=1e-6)
    for answer in api_answers:
        assert [result["error"] for result in answer] == [None] * len(documents)
        assert [result["score"] for result in answer] == pytest.approx(expected, abs=1e-6)
    dispatches, calls = (now - then for now, then in zip(_adaptive_batches(server.url), before, strict=True))
    assert calls == 8 and dispatches < calls, "BentoML's dispatcher merged concurrent API calls"


def test_the_batchable_api_counts_each_calls_own_pairs(server) -> None:
    """Merged calls still get one access line each, with their own pairs and models."""
    import concurrent.futures

    def call(count: int) -> int:
        pairs = [{"model": "mini-reranker", "query": "q", "document": f"document {i}"} for i in range(count)]
        return httpx.post(
            f"{server.url}/score_pairs", json={"pairs": pairs}, headers={"X-Request-ID": f"merged-{count}"}, timeout=120
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert list(pool.map(call, [1, 2, 3, 5, 8, 13])) == [200] * 6
    deadline = time.monotonic() + 10  # a line is written once its answer has been sent
    while (log := server.log.read_text()).count("request_id=merged-") < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    for count in (1, 2, 3, 5, 8, 13):
        assert f"request_id=merged-{count} POST /score_pairs status=200 model={FIXTURE_MODEL_ID} pairs={count} " in log


def test_bentomls_learned_wait_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a burst BentoML's dispatcher learns a wait of about one batch's time and holds every lone call back that
    long; service.py caps it (rerank_server.serving.dispatcher) while the learned duration model stays BentoML's."""
    from bentoml._internal.marshal import dispatcher as bentoml_dispatcher

    from rerank_server.serving.dispatcher import bound_learned_wait
    from rerank_server.settings import get_settings

    monkeypatch.setattr(bentoml_dispatcher, "Optimizer", bentoml_dispatcher.Optimizer)  # put back after the test

    def learned_after(waits: float) -> bentoml_dispatcher.Optimizer:
        cork = bentoml_dispatcher.CorkDispatcher(60000, 1024, fallback=lambda: None)
        for n in range(1, 40):  # dispatches of n calls, each ~20 ms + 5 ms per call
            cork.optimizer.log_outbound(n=n, wait=waits, duration=0.02 + 0.005 * n)
        cork.optimizer.trigger_refresh()
        return cork.optimizer

    bound_learned_wait(0.01)
    bound_learned_wait(0.01)  # each worker applies it once; applied twice it still caps BentoML's own optimizer
    after_bursts = learned_after(waits=1.2)
    assert after_bursts.wait == 0.01
    assert after_bursts.o_a == pytest.approx(0.005) and after_bursts.o_b == pytest.approx(0.02)
    assert learned_after(waits=0.002).wait == pytest.approx(0.002)  # a short learned wait stands

    import service  # noqa: F401  (applies the cap from the settings, as each worker does)

    assert learned_after(waits=1.2).wait == get_settings().api_max_wait_ms / 1000
