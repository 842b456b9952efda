"""The HTTP routes with the model called directly (no BentoML server): request and answer shapes, errors."""

from __future__ import annotations

import pytest

from tests.conftest import FIXTURE_MODEL_ID

JSON = {"content-type": "application/json"}
DOCS = ["Machine learning is a branch of AI", "Python is a programming language", "The cat sat on the mat"]


def test_rerank_answers_in_vllm_shape_sorted_by_score(client, reference_encoder) -> None:
    response = client.post("/v1/rerank", json={"query": "what is ML?", "documents": DOCS})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "model", "usage", "results"}
    assert body["id"].startswith("rerank-") and body["model"] == FIXTURE_MODEL_ID
    expected = reference_encoder.predict([("what is ML?", d) for d in DOCS])
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r["index"] for r in body["results"]) == [0, 1, 2]
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), abs=1e-5)
        assert result["document"] == {"text": DOCS[result["index"]]}
    tokenizer = reference_encoder.tokenizer
    tokens = sum(len(tokenizer("what is ML?", d)["input_ids"]) for d in DOCS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


@pytest.mark.parametrize(("top_n", "count"), [(None, 3), (0, 3), (1, 1), (2, 2), (3, 3), (50, 3)])
def test_top_n(client, top_n, count) -> None:
    payload = {"query": "q", "documents": DOCS, **({"top_n": top_n} if top_n is not None else {})}
    everything = client.post("/v1/rerank", json={"query": "q", "documents": DOCS}).json()["results"]
    results = client.post("/v1/rerank", json=payload).json()["results"]
    assert [r["index"] for r in results] == [r["index"] for r in everything][:count]


def test_top_n_null_returns_everything(client) -> None:
    assert len(client.post("/v1/rerank", json={"query": "q", "documents": DOCS, "top_n": None}).json()["results"]) == 3


def test_return_documents_false_leaves_the_document_out(client) -> None:
    results = client.post("/v1/rerank", json={"query": "q", "documents": DOCS, "return_documents": False}).json()
    assert all(set(r) == {"index", "relevance_score"} for r in results["results"])


def test_model_can_be_named_by_id_short_name_or_any_case(client) -> None:
    for name in (FIXTURE_MODEL_ID, "mini-reranker", "TEST-ORG/Mini-Reranker"):
        body = client.post("/v1/rerank", json={"query": "q", "documents": DOCS, "model": name}).json()
        assert body["model"] == FIXTURE_MODEL_ID


def test_unknown_model_is_a_404_listing_the_available_ones(client) -> None:
    response = client.post("/v1/rerank", json={"query": "q", "documents": DOCS, "model": "BAAI/nope"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == 404 and error["param"] == "model" and error["type"] == "NotFoundError"
    assert "BAAI/nope" in error["message"] and FIXTURE_MODEL_ID in error["message"]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"query": "q", "documents": []}, "documents"),
        ({"documents": DOCS}, "query"),
        ({"query": "q", "documents": "not a list"}, "documents"),
        ({"query": "q", "documents": DOCS, "top_n": -1}, "top_n"),
        ({"query": "q", "documents": DOCS, "top_n": "two"}, "top_n"),
    ],
)
def test_bad_requests_are_400_in_vllm_error_shape(client, payload, param) -> None:
    response = client.post("/v1/rerank", json=payload)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 400 and error["type"] == "BadRequestError"
    assert error["param"].startswith(param)


def test_malformed_json_is_a_400(client) -> None:
    response = client.post("/v1/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 400


def test_empty_query_is_allowed(client) -> None:
    assert client.post("/v1/rerank", json={"query": "", "documents": DOCS}).status_code == 200


def test_unknown_keys_are_ignored(client) -> None:
    payload = {"query": "q", "documents": DOCS, "max_chunks_per_doc": 3, "rank_fields": ["text"], "priority": 1}
    assert client.post("/v1/rerank", json=payload).status_code == 200


def test_models_lists_every_stored_reranker_openai_style(client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    card = next(m for m in body["data"] if m["id"] == FIXTURE_MODEL_ID)
    assert card["object"] == "model" and card["owned_by"] == "test-org"
    assert card["max_length"] == 512 and card["default"] is True
    assert isinstance(card["created"], int) and card["tag"].startswith("test-org--mini-reranker:")
    assert card["loaded"] is True  # the rerank tests above loaded it


def test_status_document_for_programs(client) -> None:
    body = client.get("/", headers={"accept": "application/json"}).json()
    assert body["status"] == "running"
    assert body["default_model"] == FIXTURE_MODEL_ID
    assert FIXTURE_MODEL_ID in body["supported_models"]
    assert FIXTURE_MODEL_ID in body["loaded_models"]
    assert client.get("/").json()["status"] == "running"  # curl sends Accept: */*


def test_browsers_get_a_page_of_links_at_the_root(client) -> None:
    response = client.get("/", headers={"accept": "text/html,application/xhtml+xml"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert all(f'href="{page}"' in response.text for page in ("playground", "docs", "bentoml"))


def test_every_pair_of_a_request_goes_to_the_batcher_in_one_call(client) -> None:
    from prometheus_client import REGISTRY

    def batches() -> tuple[float, float]:
        labels = {"model": FIXTURE_MODEL_ID}
        count = REGISTRY.get_sample_value("rerank_batch_size_pairs_count", labels) or 0.0
        return count, REGISTRY.get_sample_value("rerank_batch_size_pairs_sum", labels) or 0.0

    before = batches()
    assert client.post("/v1/rerank", json={"query": "q", "documents": DOCS * 10}).status_code == 200
    after = batches()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 30)


@pytest.mark.parametrize(
    ("path", "content", "headers", "message", "param"),
    [
        ("/v1/rerank", b'{"query": "q", "documents": [', JSON, "The request body is not valid JSON", None),
        ("/v1/rerank", b'{"query": "q", "documents": [1, null]}', JSON,
         "`documents.0` must be a string, an object with `text` and/or `image`, or `{\"content\": [parts]}`",
         "documents.0"),
        ("/v1/rerank", b"", JSON, "The request body is empty; send a JSON object such as", None),
        ("/v1/rerank", b'{"query": "q", "documents": ["a"]}', {"content-type": "application/x-www-form-urlencoded"},
         "sent with the header `Content-Type: application/json`", None),
        ("/v1/rerank", b'{"documents": ["a"]}', JSON, "`query` is required", "query"),
        ("/v1/rerank", b'{"query": "q", "documents": ["a"], "top_n": "x"}', JSON, "`top_n`: Input should be", "top_n"),
        ("/score", b'{"text_1": "q", "text_2": []}', JSON, "`text_2` must not be empty", "text_2"),
        ("/score", b'{"text_1": 3, "text_2": "d"}', JSON,
         "`text_1` must be a string, an object with `text` and/or `image`, or a list of them", "text_1"),
    ],
)  # fmt: skip
def test_errors_name_the_field_and_say_what_to_send(client, path, content, headers, message, param) -> None:
    response = client.post(path, content=content, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"], error["message"]
    assert error["param"] == param


def test_tei_errors_name_tei_fields(client) -> None:
    response = client.post("/rerank", json={"query": "q", "texts": []})
    assert response.status_code == 422
    assert response.json() == {"error": "Input validation error: `texts` must not be empty", "error_type": "Validation"}
    malformed = client.post("/rerank", content=b'{"query": "q", "texts": ["a",', headers=JSON)
    assert malformed.status_code == 422 and malformed.json()["error_type"] == "Validation"
    assert "not valid JSON" in malformed.json()["error"]


def test_the_store_name_shown_as_tag_names_the_model_too(client) -> None:
    card = next(m for m in client.get("/v1/models").json()["data"] if m["id"] == FIXTURE_MODEL_ID)
    store_name = card["tag"].partition(":")[0]
    for name in (store_name, card["tag"], f"{store_name}:latest"):
        body = client.post("/v1/rerank", json={"query": "q", "documents": DOCS, "model": name}).json()
        assert body["model"] == FIXTURE_MODEL_ID, name


def test_docs_need_no_outside_url(client) -> None:
    import re

    page = client.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: *["']([^"']+)["']""", page.text)
    urls = [u for pair in urls for u in pair if u]
    assert urls and not [u for u in urls if "//" in u], urls
    for url in urls:
        assert client.get(url).status_code == 200, url
