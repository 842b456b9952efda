"""What real rerank clients send, sent as they send it, and read as they read it (from each client's public source).

Each test names the client; the body, path and the fields read are that client's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rerank_server.recipes import TextOptions
from tests.conftest import FIXTURE_MODEL_ID

QUERY = "What is the capital of the United States?"
DOCS = [
    "Carson City is the capital city of the American state of Nevada.",
    "Washington, D.C. is the capital of the United States.",
    "Capital punishment has existed in the United States since before it was a country.",
]


@pytest.fixture(scope="module")
def reference(reference_encoder) -> np.ndarray:
    return reference_encoder.predict([(QUERY, d) for d in DOCS])


def _by_index(results: list[dict], key: str = "relevance_score") -> dict[int, float]:
    return {r["index"]: r[key] for r in results}


def _assert_ranked(scores: dict[int, float], reference: np.ndarray, count: int | None = None) -> None:
    expected = sorted(range(len(reference)), key=lambda i: -reference[i])[: count or len(reference)]
    assert list(scores) == expected
    for index, score in scores.items():
        assert score == pytest.approx(float(reference[index]), abs=1e-5)


def test_astrbot_vllm_rerank_provider(client, reference) -> None:
    # POST {rerank_api_base}/v1/rerank, Bearer key; reads results[].index / .relevance_score, fails on empty results.
    payload = {"query": QUERY, "documents": DOCS, "model": FIXTURE_MODEL_ID, "top_n": 2}
    response = client.post("/v1/rerank", json=payload, headers={"Authorization": "Bearer any"})
    results = response.json()["results"]
    assert results, "AstrBot treats an empty results list as a failure"
    _assert_ranked(_by_index(results), reference, 2)


def test_dify_openai_api_compatible_rerank(client, reference) -> None:
    # endpoint_url "http://host:8000/v1" + "/rerank"; body {model, query, documents, top_n}.
    body = client.post(
        "/v1/rerank", json={"model": FIXTURE_MODEL_ID, "query": QUERY, "documents": DOCS, "top_n": 3}
    ).json()
    _assert_ranked(_by_index(body["results"]), reference)


def test_dify_xinference_rerank(client, reference) -> None:
    # Xinference client: {model, query, documents, top_n, return_documents: true}; reads document.text.
    payload = {"model": FIXTURE_MODEL_ID, "query": QUERY, "documents": DOCS, "top_n": None, "return_documents": True}
    results = client.post("/v1/rerank", json=payload).json()["results"]
    _assert_ranked(_by_index(results), reference)
    assert [r["document"]["text"] for r in results] == [DOCS[r["index"]] for r in results]


@pytest.mark.parametrize("client_name", ["langchain JinaRerank", "llama-index JinaRerank"])
def test_jina_rerankers(client, reference, client_name) -> None:
    # Both POST {"model", "query", "documents", "top_n"} to .../v1/rerank and read results[].index/.relevance_score.
    payload = {"model": FIXTURE_MODEL_ID, "query": QUERY, "documents": DOCS, "top_n": 2}
    body = client.post("/v1/rerank", json=payload, headers={"Authorization": "Bearer key"}).json()
    _assert_ranked(_by_index(body["results"]), reference, 2)
    assert body["usage"]["total_tokens"] > 0


def test_cohere_sdk_v1_with_text_objects(client, reference) -> None:
    payload = {
        "model": FIXTURE_MODEL_ID,
        "query": QUERY,
        "documents": [{"text": d, "title": f"doc {i}"} for i, d in enumerate(DOCS)],
        "top_n": 3,
        "return_documents": True,
        "rank_fields": ["text"],
    }
    results = client.post("/v1/rerank", json=payload).json()["results"]
    _assert_ranked(_by_index(results), reference)
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in results)


def test_cohere_sdk_v2(client, reference) -> None:
    payload = {"model": FIXTURE_MODEL_ID, "query": QUERY, "documents": DOCS, "top_n": 2, "max_tokens_per_doc": 4096}
    results = client.post("/v2/rerank", json=payload).json()["results"]
    _assert_ranked(_by_index(results), reference, 2)


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_every_rerank_route_takes_the_same_body(client, reference, path) -> None:
    body = client.post(path, json={"query": QUERY, "documents": DOCS, "priority": 5}).json()
    _assert_ranked(_by_index(body["results"]), reference)


def test_llama_index_and_ragflow_tei_rerankers(client, reference) -> None:
    payload = {"query": QUERY, "texts": DOCS, "raw_scores": False, "truncate": True, "return_text": True}
    response = client.post("/rerank", json=payload)
    assert response.headers["content-type"] == "application/json"
    ranks = response.json()
    assert isinstance(ranks, list)
    _assert_ranked(_by_index(ranks, "score"), reference)
    assert [r["text"] for r in ranks] == [DOCS[r["index"]] for r in ranks]
    without_text = client.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()
    assert all(set(r) == {"index", "score"} for r in without_text)


def test_tei_raw_scores_and_vllm_use_activation_give_logits(client, reference_encoder) -> None:
    logits = reference_encoder.predict([(QUERY, d) for d in DOCS], activation_fn=torch.nn.Identity())
    raw = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    for rank in raw:
        assert rank["score"] == pytest.approx(float(logits[rank["index"]]), abs=1e-4)
    vllm = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "use_activation": False}).json()
    for result in vllm["results"]:
        assert result["relevance_score"] == pytest.approx(float(logits[result["index"]]), abs=1e-4)


def test_vllm_score_one_to_many_and_pairwise(client, reference, reference_encoder) -> None:
    body = client.post("/score", json={"model": FIXTURE_MODEL_ID, "text_1": QUERY, "text_2": DOCS}).json()
    assert body["object"] == "list" and body["model"] == FIXTURE_MODEL_ID and body["id"].startswith("score-")
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and {d["object"] for d in body["data"]} == {"score"}
    np.testing.assert_allclose([d["score"] for d in body["data"]], reference, atol=1e-5)
    assert body["usage"]["prompt_tokens"] > 0
    pairs = client.post("/v1/score", json={"text_1": ["a question", QUERY], "text_2": ["an answer", DOCS[1]]}).json()
    expected = reference_encoder.predict([("a question", "an answer"), (QUERY, DOCS[1])])
    np.testing.assert_allclose([d["score"] for d in pairs["data"]], expected, atol=1e-5)
    mismatch = client.post("/score", json={"text_1": ["a", "b"], "text_2": ["c", "d", "e"]})
    assert mismatch.status_code == 400 and mismatch.json()["error"]["param"] == "text_1"


# --- Long inputs ------------------------------------------------------------------------------------------------------

LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 120) + " washington is the capital"


def test_truncate_prompt_tokens_matches_a_reference_with_that_max_length(client, fixture_model_dir) -> None:
    from sentence_transformers import CrossEncoder

    short = CrossEncoder(str(fixture_model_dir), device="cpu", max_length=64)
    body = client.post("/v1/rerank", json={"query": QUERY, "documents": [LONG, DOCS[1]], "truncate_prompt_tokens": 64})
    expected = short.predict([(QUERY, LONG), (QUERY, DOCS[1])])
    assert _by_index(body.json()["results"]) == pytest.approx({0: float(expected[0]), 1: float(expected[1])}, abs=1e-5)
    assert body.json()["usage"]["total_tokens"] <= 128
    too_long = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "truncate_prompt_tokens": 100000})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "truncate_prompt_tokens"


def test_max_tokens_per_doc_cuts_each_document(client, reference_encoder) -> None:
    tokenizer = reference_encoder.tokenizer
    first_ten = tokenizer.decode(tokenizer(LONG, add_special_tokens=False)["input_ids"][:10])
    body = client.post("/v2/rerank", json={"query": QUERY, "documents": [LONG], "max_tokens_per_doc": 10}).json()
    expected = reference_encoder.predict([(QUERY, first_ten)])
    assert body["results"][0]["relevance_score"] == pytest.approx(float(expected[0]), abs=1e-5)
    query_tokens = len(tokenizer(QUERY)["input_ids"])
    assert body["usage"]["total_tokens"] == query_tokens + 10 + 1


def test_tei_truncation_direction_left_keeps_the_end(client, fixture_model_dir) -> None:
    from sentence_transformers import CrossEncoder

    left = CrossEncoder(str(fixture_model_dir), device="cpu")
    left.tokenizer.truncation_side = "left"
    expected = left.predict([(QUERY, LONG)])
    ranks = client.post("/rerank", json={"query": QUERY, "texts": [LONG], "truncation_direction": "Left"}).json()
    assert ranks[0]["score"] == pytest.approx(float(expected[0]), abs=1e-5)


def test_tei_without_truncation_refuses_long_input(client) -> None:
    response = client.post("/rerank", json={"query": QUERY, "texts": [LONG * 3], "truncate": False})
    assert response.status_code == 413
    body = response.json()
    assert body["error_type"] == "Validation" and "512" in body["error"]
    assert client.post("/rerank", json={"query": QUERY, "texts": DOCS, "truncate": False}).status_code == 200


def test_chunking_scores_each_window_and_keeps_the_best(client, engine, reference_encoder) -> None:
    scorer = engine.registry.get(FIXTURE_MODEL_ID)
    # One window of filler ("rain" is one token), then the relevant passage: truncation alone never shows it.
    room = 512 - len(reference_encoder.tokenizer(QUERY, add_special_tokens=False)["input_ids"]) - 3
    BURIED = " ".join(["rain"] * room) + " " + DOCS[1]
    windows = scorer.recipe.windows(QUERY, BURIED, 5, TextOptions())
    assert windows == [" ".join(["rain"] * room), DOCS[1]]
    best = float(max(reference_encoder.predict([(QUERY, w) for w in windows])))
    whole = float(reference_encoder.predict([(QUERY, BURIED)])[0])
    assert best > whole + 0.1, "the buried passage must matter for this test to mean anything"
    chunked = client.post("/v1/rerank", json={"query": QUERY, "documents": [BURIED, DOCS[0]], "max_chunks_per_doc": 5})
    assert _by_index(chunked.json()["results"])[0] == pytest.approx(best, abs=1e-5)
    plain = client.post("/v1/rerank", json={"query": QUERY, "documents": [BURIED, DOCS[0]]}).json()
    assert _by_index(plain["results"])[0] == pytest.approx(whole, abs=1e-5)
    assert scorer.recipe.windows(QUERY, DOCS[0], 5, TextOptions()) == [DOCS[0]]


# --- Limits and errors ------------------------------------------------------------------------------------------------


def test_too_many_documents(client, engine) -> None:
    limit = engine.registry.settings.max_documents
    vllm = client.post("/v1/rerank", json={"query": "q", "documents": ["d"] * (limit + 1)})
    assert vllm.status_code == 400 and str(limit) in vllm.json()["error"]["message"]
    tei = client.post("/rerank", json={"query": "q", "texts": ["d"] * (limit + 1)})
    assert tei.status_code == 422 and tei.json()["error_type"] == "Validation"


def test_tei_validation_errors_are_422_in_tei_shape(client) -> None:
    for payload in ({"query": "q", "texts": "not a list"}, {"texts": ["a"]}, {"query": "q", "texts": []}):
        response = client.post("/rerank", json=payload)
        assert response.status_code == 422, payload
        assert set(response.json()) == {"error", "error_type"}


def test_unknown_routes_and_methods_answer_json(client) -> None:
    missing = client.post("/v1/nothing", json={})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404
    wrong_method = client.get("/v1/rerank")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == 405


@pytest.mark.parametrize(("field", "cap"), [("truncate_prompt_tokens", 128), ("max_tokens_per_doc", 100)])
def test_chunk_windows_fit_the_requests_own_truncation(client, reference_encoder, field, cap) -> None:
    """Windows sized for the model's 512 tokens and then cut to the request's cap would hide most of a document."""
    query_tokens = len(reference_encoder.tokenizer(QUERY, add_special_tokens=False)["input_ids"])
    room = cap - query_tokens - 3 if field == "truncate_prompt_tokens" else cap
    buried = " ".join(["rain"] * room) + " " + DOCS[1]  # the answer starts just past the first window
    windows = [" ".join(["rain"] * room), DOCS[1]]
    best = float(max(reference_encoder.predict([(QUERY, w) for w in windows])))
    first_window_only = float(reference_encoder.predict([(QUERY, windows[0])])[0])
    assert best > first_window_only + 0.1, "the buried passage must matter for this test to mean anything"
    body = {"query": QUERY, "documents": [buried], "max_chunks_per_doc": 4, field: cap}
    chunked = client.post("/v1/rerank", json=body).json()
    assert chunked["results"][0]["relevance_score"] == pytest.approx(best, abs=1e-5)
