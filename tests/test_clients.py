"""clients/rerank_client.py against a real `bentoml serve`, including the original design's examples as written."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from clients.rerank_client import RerankClient, RerankError, RetryPolicy, SyncRerankClient
from tests.conftest import FIXTURE_MODEL_ID, free_port

DOCS = ["机器学习是AI的分支", "Python是编程语言", "深度学习使用神经网络"]


def raw_rerank(url: str, **body: object) -> dict:
    return httpx.post(f"{url}/v1/rerank", json=body, timeout=60).json()


def test_sync_client_returns_what_the_server_answers(server) -> None:
    expected = raw_rerank(server.url, query="什么是机器学习？", documents=DOCS, top_n=2)["results"]
    with SyncRerankClient(server.url) as client:
        results = client.rerank("什么是机器学习？", DOCS, top_n=2)
    assert [(r.index, r.relevance_score, r.document) for r in results] == [
        (e["index"], e["relevance_score"], e["document"]["text"]) for e in expected
    ]


def test_sync_client_models_health_and_model_choice(server) -> None:
    client = SyncRerankClient(server.url)
    try:
        assert FIXTURE_MODEL_ID in [m["id"] for m in client.models()]
        assert client.status()["default_model"] == FIXTURE_MODEL_ID
        assert client.health() is True  # GET /health's answer, as its name says
        results = client.rerank("q", DOCS, model="mini-reranker", return_documents=False)
        assert len(results) == 3 and all(r.document is None for r in results)
    finally:
        client.close()


def test_errors_carry_the_status_and_the_servers_message(server) -> None:
    with SyncRerankClient(server.url) as client, pytest.raises(RerankError) as caught:
        client.rerank("q", DOCS, model="no/such-model")
    assert caught.value.status_code == 404
    assert "no/such-model" in caught.value.message


def test_base_url_and_key_fall_back_to_the_environment(server, monkeypatch) -> None:
    monkeypatch.setenv("RERANK_BASE_URL", server.url)
    monkeypatch.setenv("RERANK_API_KEY", "from-env")
    client = SyncRerankClient()
    assert client.base_url == server.url
    assert client._http.headers["authorization"] == "Bearer from-env"
    client.close()


def test_health_is_the_health_routes_answer() -> None:
    answers = iter([httpx.Response(200), httpx.Response(503, json={"error": "not ready", "error_type": "Unhealthy"})])
    client = SyncRerankClient("http://rerank.test")
    client._http = httpx.Client(base_url="http://rerank.test", transport=httpx.MockTransport(lambda r: next(answers)))
    with client:
        assert client.health() is True and client.health() is False  # 503: not ready, no retry, no exception


def test_an_unreachable_server_is_a_rerank_error_after_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = SyncRerankClient(url, retry=RetryPolicy(attempts=2, backoff=0.01))
    with client, pytest.raises(RerankError, match="cannot reach") as caught:
        client.rerank("q", ["d"])
    assert caught.value.status_code is None


def test_retries_honour_retry_after_then_succeed(monkeypatch) -> None:
    answers = iter(
        [
            httpx.Response(503, headers={"Retry-After": "0.05"}, json={"error": {"message": "busy"}}),
            httpx.Response(429, json={"error": {"message": "slow down"}}),
            httpx.Response(200, json={"results": [{"index": 0, "relevance_score": 0.9}]}),
        ]
    )
    slept: list[float] = []
    monkeypatch.setattr("clients.rerank_client.time.sleep", slept.append)
    client = SyncRerankClient("http://rerank.test", retry=RetryPolicy(attempts=3, backoff=0.2))
    client._http = httpx.Client(base_url=client.base_url, transport=httpx.MockTransport(lambda _: next(answers)))
    assert client.rerank("q", ["d"])[0].relevance_score == 0.9
    assert slept[0] == 0.05 and 0.4 <= slept[1] <= 0.5


def test_client_errors_are_not_retried() -> None:
    calls: list[int] = []

    def answer(_: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(400, json={"error": {"message": "documents must not be empty"}})

    client = SyncRerankClient("http://rerank.test")
    client._http = httpx.Client(base_url=client.base_url, transport=httpx.MockTransport(answer))
    with pytest.raises(RerankError, match="documents must not be empty"):
        client.rerank("q", [])
    assert calls == [1]


def test_async_client_and_the_original_designs_examples(server, monkeypatch) -> None:
    monkeypatch.setenv("RERANK_BASE_URL", server.url)

    # The original design's README, "批量处理": concurrent queries with asyncio.gather.
    async def batch_rerank(queries, documents):
        client = RerankClient()
        tasks = [client.rerank(query, documents, top_n=3) for query in queries]
        results = await asyncio.gather(*tasks)
        await client.close()
        return results

    batched = asyncio.run(batch_rerank(["查询1", "查询2", "查询3"], DOCS))
    assert [len(r) for r in batched] == [3, 3, 3]

    # "RAG 应用集成": retrieve candidates, rerank, keep the best documents.
    async def rag_pipeline(user_query: str) -> list[str]:
        reranker = RerankClient(server.url)
        try:
            candidates = DOCS * 2
            reranked = await reranker.rerank(query=user_query, documents=candidates, top_n=2)
            return [candidates[r.index] for r in reranked]
        finally:
            await reranker.close()

    top_docs = asyncio.run(rag_pipeline("如何提高模型性能？"))
    expected = raw_rerank(server.url, query="如何提高模型性能？", documents=DOCS * 2, top_n=2)["results"]
    assert top_docs == [(DOCS * 2)[e["index"]] for e in expected]

    async def with_context_manager() -> tuple[list, dict, bool]:
        async with RerankClient(server.url) as client:
            return await client.models(), await client.status(), await client.health()

    models, status, healthy = asyncio.run(with_context_manager())
    assert FIXTURE_MODEL_ID in [m["id"] for m in models] and status["status"] == "running" and healthy is True


def test_the_real_cohere_sdk_v1_and_v2(server, reference_encoder) -> None:
    import cohere

    documents = ["ML is a branch of AI", "Python is a language", "cats sleep a lot"]
    expected = reference_encoder.predict([("what is ML?", d) for d in documents])
    best_two = sorted(range(3), key=lambda i: -expected[i])[:2]

    v2 = cohere.ClientV2(api_key="unused", base_url=server.url).rerank(
        model=FIXTURE_MODEL_ID, query="what is ML?", documents=documents, top_n=2
    )
    assert [r.index for r in v2.results] == best_two
    assert [r.relevance_score for r in v2.results] == pytest.approx([float(expected[i]) for i in best_two], abs=1e-5)

    v1 = cohere.Client(api_key="unused", base_url=server.url).rerank(
        model=FIXTURE_MODEL_ID, query="what is ML?", documents=[{"text": d} for d in documents], top_n=2,
        return_documents=True,
    )  # fmt: skip
    assert [r.index for r in v1.results] == best_two
    assert [r.document.text for r in v1.results] == [documents[i] for i in best_two]


def _counting_client(error: Exception, retry: RetryPolicy | None = None) -> tuple[SyncRerankClient, list[int]]:
    calls: list[int] = []

    def fail(_: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise error

    client = SyncRerankClient("http://rerank.test", retry=retry or RetryPolicy(attempts=3, backoff=0.001))
    client._http = httpx.Client(base_url=client.base_url, transport=httpx.MockTransport(fail))
    return client, calls


def test_a_read_timeout_is_not_retried_the_server_is_still_working() -> None:
    client, calls = _counting_client(httpx.ReadTimeout("timed out"))
    with client, pytest.raises(RerankError, match="no answer from http://rerank.test in time"):
        client.rerank("q", ["d"])
    assert calls == [1], "a retry would queue a second copy of work the server is still doing"


def test_failures_to_connect_are_retried() -> None:
    for error in (httpx.ConnectError("refused"), httpx.RemoteProtocolError("closed without an answer")):
        client, calls = _counting_client(error)
        with client, pytest.raises(RerankError, match="cannot reach"):
            client.rerank("q", ["d"])
        assert len(calls) == 4


def test_the_default_timeout_outlasts_the_servers_deadline() -> None:
    from rerank_server.settings import Settings

    server_deadline = Settings.model_fields["request_timeout_s"].default
    for client in (SyncRerankClient("http://rerank.test"), RerankClient("http://rerank.test")):
        assert client._http.timeout.read > server_deadline
