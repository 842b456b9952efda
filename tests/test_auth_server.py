"""RERANK_API_KEY on a real `bentoml serve`: every API route needs a key, BentoML's batchable API included, while the
routes' own calls into the batcher keep working and probes stay open."""

from __future__ import annotations

from collections.abc import Iterator

import bentoml
import httpx
import pytest

from clients.rerank_client import RerankError, SyncRerankClient
from tests.conftest import FIXTURE_MODEL_ID, RunningServer, running_server

KEYS = ("first-secret-key", "second-secret-key")


@pytest.fixture(scope="module")
def secured(stored_fixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_API_KEY": ",".join(KEYS)}
    with running_server(tmp_path_factory.mktemp("secured") / "serve.log", env) as running:
        yield running


def test_rerank_needs_a_key_and_works_with_one(secured, reference_encoder) -> None:
    payload = {"query": "q", "documents": ["a", "b"]}
    assert httpx.post(f"{secured.url}/v1/rerank", json=payload).status_code == 401
    wrong = httpx.post(f"{secured.url}/v1/rerank", json=payload, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    for key in KEYS:
        headers = {"Authorization": f"Bearer {key}"}
        ok = httpx.post(f"{secured.url}/v1/rerank", json=payload, headers=headers, timeout=60)
        assert ok.status_code == 200
        expected = reference_encoder.predict([("q", "a"), ("q", "b")])
        for result in ok.json()["results"]:
            assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), abs=1e-5)


def test_every_api_route_is_closed_without_a_key(secured) -> None:
    for method, path in [("POST", "/rerank"), ("POST", "/v2/rerank"), ("POST", "/score"), ("GET", "/v1/models"),
                         ("POST", "/score_pairs")]:  # fmt: skip
        assert httpx.request(method, f"{secured.url}{path}", json={}).status_code == 401, path
    for path in ("/readyz", "/livez", "/healthz", "/metrics"):
        assert httpx.get(f"{secured.url}{path}").status_code == 200, path


def test_the_batchable_api_is_no_back_door(secured) -> None:
    pairs = [{"model": FIXTURE_MODEL_ID, "query": "q", "document": "d"}]
    with bentoml.SyncHTTPClient(secured.url, token=KEYS[1]) as client:
        assert client.score_pairs(pairs=pairs)[0]["score"] is not None
    direct = httpx.post(f"{secured.url}/score_pairs", json={"pairs": pairs})
    assert direct.status_code == 401


def test_python_clients_send_the_key(secured, monkeypatch) -> None:
    with SyncRerankClient(secured.url, api_key=KEYS[0]) as client:
        assert len(client.rerank("q", ["a", "b", "c"], top_n=2)) == 2
    monkeypatch.delenv("RERANK_API_KEY", raising=False)
    with SyncRerankClient(secured.url) as client, pytest.raises(RerankError) as caught:
        client.models()
    assert caught.value.status_code == 401


def test_keys_never_reach_the_log(secured) -> None:
    httpx.post(f"{secured.url}/v1/rerank", json={"query": "q", "documents": ["a"]},
               headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=60)  # fmt: skip
    log = secured.log.read_text()
    assert "/v1/rerank" in log
    assert not any(key in log for key in KEYS)
