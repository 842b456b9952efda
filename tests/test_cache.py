"""The result cache: identical answers with and without it, never another model's or truncation's score, bounded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from rerank_server.api.pairs import score_pairs
from rerank_server.api.wire import PairToScore
from rerank_server.engine.cache import cache_key
from rerank_server.importer.sources import import_from_folder
from tests.conftest import FIXTURE_MODEL_ID, routes_client, scoring_engine
from tests.fixture_models import build_minilm_cross_encoder
from tests.test_scorer import QUERY, mixed_documents

OTHER_MODEL_ID = "test-org/other-weights"


@pytest.fixture(scope="module")
def other_model(stored_fixture, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second model with the same tokenizer and different weights."""
    folder = build_minilm_cross_encoder(Path(tmp_path_factory.mktemp("other")) / "model", seed=1)
    import_from_folder(OTHER_MODEL_ID, folder)
    return OTHER_MODEL_ID


def counts() -> tuple[float, float, float]:
    hits = REGISTRY.get_sample_value("rerank_cache_hits_total") or 0.0
    misses = REGISTRY.get_sample_value("rerank_cache_misses_total") or 0.0
    scored = REGISTRY.get_sample_value("rerank_pairs_total", {"model": FIXTURE_MODEL_ID}) or 0.0
    return hits, misses, scored


def test_cached_and_uncached_answers_are_identical_and_hits_cost_no_model_time(stored_fixture) -> None:
    documents = mixed_documents(12, seed=3)
    pairs = [PairToScore(model=FIXTURE_MODEL_ID, query=QUERY, document=d) for d in documents]
    with scoring_engine(cache_size=100) as cached, scoring_engine() as uncached:
        before = counts()
        first = asyncio.run(score_pairs(cached, pairs))
        again = asyncio.run(score_pairs(cached, pairs))
        plain = asyncio.run(score_pairs(uncached, pairs))
        after = counts()
    assert first == again == plain
    # 12 misses, then 12 hits; the model scored the 12 pairs for the cached engine once and for the other once.
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (12, 12, 24)


def test_a_request_mixing_hits_and_misses_keeps_its_order(stored_fixture) -> None:
    pairs = [PairToScore(model=FIXTURE_MODEL_ID, query=QUERY, document=d) for d in mixed_documents(6, seed=4)]
    with scoring_engine(cache_size=100) as engine:
        asyncio.run(score_pairs(engine, pairs[::2]))
        mixed = asyncio.run(score_pairs(engine, pairs))
    with scoring_engine() as engine:
        plain = asyncio.run(score_pairs(engine, pairs))
    # Equal up to float noise: the misses were scored in a smaller batch than the all-miss request's, padded less.
    assert [r.tokens for r in mixed] == [r.tokens for r in plain]
    assert [r.logit for r in mixed] == pytest.approx([r.logit for r in plain], abs=1e-5)


def test_the_cache_never_answers_for_another_model_or_truncation(stored_fixture, other_model) -> None:
    document = " ".join(mixed_documents(1, seed=5))
    base = PairToScore(model=FIXTURE_MODEL_ID, query=QUERY, document=document)
    variants = [
        base,
        base.model_copy(update={"model": other_model}),
        base.model_copy(update={"max_length": 16}),
        base.model_copy(update={"max_length": 16, "truncation_side": "left"}),
        base.model_copy(update={"max_document_tokens": 4}),
    ]
    with scoring_engine() as engine:
        expected = [asyncio.run(score_pairs(engine, [variant]))[0] for variant in variants]
    assert len({result.logit for result in expected}) == len(variants), "each variant must score differently"
    with scoring_engine(cache_size=100) as engine:
        for _ in range(2):  # the second round is answered from the cache
            assert [asyncio.run(score_pairs(engine, [variant]))[0] for variant in variants] == expected
        assert len(engine.cache) == len(variants)


def test_the_cache_is_bounded_least_recently_used_out(stored_fixture) -> None:
    with scoring_engine(cache_size=3) as engine:
        for i in range(5):
            asyncio.run(score_pairs(engine, [PairToScore(model=FIXTURE_MODEL_ID, query="q", document=f"document {i}")]))
        assert len(engine.cache) == 3
        before = counts()
        asyncio.run(score_pairs(engine, [PairToScore(model=FIXTURE_MODEL_ID, query="q", document="document 4")]))
        asyncio.run(score_pairs(engine, [PairToScore(model=FIXTURE_MODEL_ID, query="q", document="document 0")]))
        after = counts()
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1), "document 4 is kept, document 0 was dropped"


def test_keys_do_not_run_together() -> None:
    assert cache_key("m", "ab", "c") != cache_key("m", "a", "bc")


def test_the_http_answer_is_the_same_from_the_cache(stored_fixture) -> None:
    body = {"query": QUERY, "documents": mixed_documents(5, seed=6), "return_documents": True}
    with scoring_engine(cache_size=100) as engine, routes_client(engine) as client:
        first, second = (client.post("/v1/rerank", json=body).json() for _ in range(2))
    assert first.pop("id") != second.pop("id")
    assert first == second


def test_a_new_import_of_a_model_is_served_and_never_meets_the_old_scores(stored_fixture, tmp_path) -> None:
    from sentence_transformers import CrossEncoder

    from rerank_server.importer.commit import ImportOptions

    first = build_minilm_cross_encoder(tmp_path / "first", seed=2)
    second = build_minilm_cross_encoder(tmp_path / "second", seed=3)
    import_from_folder("test-org/reimported", first)
    body = {"query": QUERY, "documents": mixed_documents(3, seed=8), "model": "test-org/reimported"}
    expected = [
        CrossEncoder(str(folder)).predict([(QUERY, d) for d in body["documents"]]) for folder in (first, second)
    ]
    with scoring_engine(cache_size=100) as engine, routes_client(engine) as client:
        before = {r["index"]: r["relevance_score"] for r in client.post("/v1/rerank", json=body).json()["results"]}
        import_from_folder("test-org/reimported", second, ImportOptions(force=True))  # e.g. a fine-tuned version
        time.sleep(1.1)  # the server reads the store again at most once a second
        after = {r["index"]: r["relevance_score"] for r in client.post("/v1/rerank", json=body).json()["results"]}
    assert [before[i] for i in range(3)] == pytest.approx(list(expected[0]), abs=1e-5)
    assert [after[i] for i in range(3)] == pytest.approx(list(expected[1]), abs=1e-5)
