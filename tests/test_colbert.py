"""Late-interaction rerankers (ColBERT, PyLate folders): recognised at import (never misfiled as a cross-encoder),
scored as PyLate scores them on every route, and documents' token embeddings kept between requests: a document seen
before costs no encoder pass, within a byte budget, never across model versions."""

from __future__ import annotations

import base64
import shutil

import httpx
import pytest
import torch

from rerank_server.engine.passes import score_directly
from rerank_server.importer.commit import ImportOptions
from rerank_server.importer.folder import ModelImportError
from rerank_server.importer.sources import import_from_folder
from rerank_server.models.late_interaction import QueryMemo
from rerank_server.models.loaded import load_reranker
from rerank_server.recipes import DEFAULT_OPTIONS
from tests.colbert_reference import PyLateReference, build_colbert
from tests.conftest import routes_client, running_server, scores_by_index, scoring_engine
from tests.fixture_images import png

BERT_ID = "test-org/colbert-small"
MODERN_ID = "test-org/modern-colbert"
QUERY = "what do giant pandas eat?"
DOCUMENTS = [
    "The giant panda eats bamboo almost exclusively, up to 38 kg a day.",
    "Paris is the capital of France.",
    "Pandas (the Python library) read CSV files!",
    "",
    "?!...,;:",  # punctuation only: every token but the special ones is skipped
    "bamboo " * 300,  # far longer than the document length: truncated as PyLate does
]


@pytest.fixture(scope="module")
def colbert_models(tmp_path_factory) -> dict[str, tuple[str, PyLateReference]]:
    folder = tmp_path_factory.mktemp("colbert")
    found = {}
    for model_id, backbone in ((BERT_ID, "bert"), (MODERN_ID, "modernbert")):
        path = build_colbert(folder / backbone, backbone)
        stored = import_from_folder(model_id, path).stored
        found[model_id] = (stored.model_id, PyLateReference(path))
    return found


def test_a_pylate_folder_is_stored_as_a_late_interaction_model(colbert_models, tmp_path) -> None:
    from rerank_server.models.store import find_reranker

    for model_id, architecture in ((BERT_ID, "BertModel"), (MODERN_ID, "ModernBertModel")):
        stored = find_reranker(model_id)
        assert (stored.recipe, stored.architecture, stored.max_length) == ("colbert", architecture, 32 + 48)
    nested = build_colbert(tmp_path / "nested", "bert", nested=True)
    stored = import_from_folder("test-org/nested-colbert", nested).stored
    assert (stored.recipe, stored.architecture) == ("colbert", "BertModel")
    with scoring_engine() as engine:
        logits = score_directly(engine.registry.get(stored.model_id), [QUERY] * 2, DOCUMENTS[:2]).logits
    assert logits == pytest.approx([PyLateReference(nested).score(QUERY, d) for d in DOCUMENTS[:2]], abs=1e-5)
    folder = build_colbert(tmp_path / "misfiled", "bert")
    with pytest.raises(ModelImportError, match="late-interaction"):
        import_from_folder("test-org/misfiled", folder, ImportOptions(recipe="cross-encoder"))
    shutil.rmtree(folder / "1_Dense")
    with pytest.raises(ModelImportError, match="Dense projection"):
        import_from_folder("test-org/no-dense", folder)


def test_what_a_pylate_config_leaves_out_is_pylates_default(tmp_path) -> None:
    # PyLate fills what its config does not say with its own defaults: `[Q] ` / `[D] ` as the prefixes (tokens of this
    # ModernBERT fixture, as of GTE-ModernColBERT) and the punctuation as the skiplist.
    silent = ("query_prefix", "document_prefix", "skiplist_words")
    folder = build_colbert(tmp_path / "silent", "modernbert", leave_out=silent)
    reference = PyLateReference(folder)
    stored = import_from_folder("test-org/silent-colbert", folder).stored
    documents = DOCUMENTS[:5]
    with scoring_engine() as engine:
        model = engine.registry.get(stored.model_id)
        for pair, document in zip(model.encode([QUERY] * len(documents), documents).late, documents, strict=True):
            assert list(pair.query) == reference.ids(QUERY, True) and list(pair.document) == reference.ids(
                document, False
            )
        punctuation = {reference.tokenizer.convert_tokens_to_ids(mark) for mark in "!?.,;:()"}
        kept = model.encode([QUERY], [DOCUMENTS[4]]).late[0]
        assert [token in punctuation for token in kept.document] == [not keep for keep in kept.kept]
        logits = score_directly(model, [QUERY] * len(documents), documents).logits
    assert logits == pytest.approx([reference.score(QUERY, d) for d in documents], abs=1e-5)


@pytest.mark.parametrize("model_id", [BERT_ID, MODERN_ID])
def test_scores_are_pylates_on_every_route(colbert_models, model_id: str) -> None:
    _, reference = colbert_models[model_id]
    expected = [reference.score(QUERY, document) for document in DOCUMENTS]
    query_length = reference.config["query_length"]
    with scoring_engine() as engine, routes_client(engine) as client:
        loaded = engine.registry.get(model_id)
        encoded = loaded.encode([QUERY] * len(DOCUMENTS), DOCUMENTS)
        for pair, document in zip(encoded.late, DOCUMENTS, strict=True):
            assert list(pair.query) == reference.ids(QUERY, True) and list(pair.document) == reference.ids(
                document, False
            )
        body = {"model": model_id, "query": QUERY, "documents": DOCUMENTS}
        raw = client.post("/v1/rerank", json={**body, "use_activation": False}).json()["results"]
        assert scores_by_index(raw) == pytest.approx(expected, abs=1e-5)
        order = [r["index"] for r in raw]
        assert order == sorted(range(len(expected)), key=lambda i: -expected[i])
        relevance = [r / query_length for r in expected]  # MaxSim over the query length
        for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
            results = client.post(path, json=body).json()["results"]
            assert [r["index"] for r in results] == order, path
            assert scores_by_index(results) == pytest.approx(relevance, abs=1e-6), path
        tei = client.post("/rerank", json={"model": model_id, "query": QUERY, "texts": DOCUMENTS}).json()
        assert scores_by_index(tei, "score") == pytest.approx(relevance, abs=1e-6)
        tei_raw = {"model": model_id, "query": QUERY, "texts": DOCUMENTS, "raw_scores": True}
        assert scores_by_index(client.post("/rerank", json=tei_raw).json(), "score") == pytest.approx(
            expected, abs=1e-5
        )
        scored = client.post("/score", json={"model": model_id, "text_1": QUERY, "text_2": DOCUMENTS}).json()
        assert [d["score"] for d in scored["data"]] == pytest.approx(relevance, abs=1e-6)
        card = next(c for c in client.get("/v1/models").json()["data"] if c["id"] == model_id)
        assert card["recipe"] == "colbert" and card["score"]["kind"] == "mean-maxsim"
        # Images to a text model, as for every text model.
        image = base64.b64encode(png(8, 8)).decode()
        refused = client.post("/v1/rerank", json={**body, "documents": [{"image": image}]})
        assert refused.status_code == 400 and "ranks text only" in refused.json()["error"]["message"]


def test_the_batchable_api_gives_the_same_scores(colbert_models, tmp_path) -> None:
    _, reference = colbert_models[BERT_ID]
    with running_server(tmp_path / "serve.log", {"RERANK_DEFAULT_MODEL": BERT_ID}) as server:
        pairs = [{"model": BERT_ID, "query": QUERY, "document": document} for document in DOCUMENTS[:3]]
        answer = httpx.post(f"{server.url}/score_pairs", json={"pairs": pairs}, timeout=60).json()
    assert [pair["logit"] for pair in answer] == pytest.approx(
        [reference.score(QUERY, d) for d in DOCUMENTS[:3]], abs=1e-5
    )


def _counting_encoder(model) -> list[int]:
    """Rows each encoder pass of `model` embeds, recorded as they happen."""
    rows: list[int] = []
    embed = model.backend.embed

    def counted(ids, mask):
        rows.append(len(ids))
        return embed(ids, mask)

    model.backend.embed = counted
    return rows


def test_a_document_seen_before_costs_no_encoder_pass_and_scores_the_same(colbert_models) -> None:
    _, reference = colbert_models[BERT_ID]
    with scoring_engine() as engine:
        model = engine.registry.get(BERT_ID)
        passes = _counting_encoder(model)
        cold = score_directly(model, [QUERY] * 3, DOCUMENTS[:3]).logits
        assert passes == [1, 3], "one pass for the query, one for the three documents"
        passes.clear()
        again = score_directly(model, ["where do pandas live?"] * 3, DOCUMENTS[:3]).logits
        assert passes == [1], "a new query with cached documents encodes only the query"
        assert again == pytest.approx([reference.score("where do pandas live?", d) for d in DOCUMENTS[:3]], abs=1e-5)
        passes.clear()
        assert score_directly(model, [QUERY] * 3, DOCUMENTS[:3]).logits == cold, "identical to the cold run"
        hits = engine.metrics.embedding_cache_hits._value.get()
        assert hits >= 6 and engine.metrics.embedding_cache_bytes._value.get() == engine.registry.embeddings.bytes_held


def test_a_query_whose_pairs_span_several_passes_is_encoded_once(colbert_models) -> None:
    _, reference = colbert_models[BERT_ID]
    documents = [f"bamboo forest number {i} where the pandas of the reserve feed" for i in range(5)]
    with scoring_engine() as engine:
        model = engine.registry.get(BERT_ID)
        passes = _counting_encoder(model)
        # A budget below two pairs: each pair is a pass of its own, as a long batch is cut on a CPU.
        scored = score_directly(model, [QUERY] * 5, documents, token_budget=100)
        assert sum(passes) == 1 + 5, "the query once, each document once"
        # Two queries in one pass: each kept is a copy of its own rows, not a view holding the whole pass.
        queries = ["where do pandas live?", "how long do pandas sleep?"]
        score_directly(model, queries, documents[:2])
        for pair in model.encode(queries, documents[:2]).late:
            kept = model.query_memo.get((pair.query, pair.attended))
            assert kept is not None and kept.untyped_storage().nbytes() == kept.numel() * 4
        assert scored.logits == pytest.approx([reference.score(QUERY, d) for d in documents], abs=1e-5)
    memo = QueryMemo(max_bytes=3 * 32 * 96 * 4)
    for i in range(10):
        memo.put(((i,), 1), torch.zeros(32, 96))
    assert len(memo) == 3 and memo.get(((9,), 1)) is not None and memo.get(((0,), 1)) is None


def test_the_cache_stays_within_its_budget_and_never_serves_another_version(colbert_models, tmp_path) -> None:
    with scoring_engine(embedding_cache_mb=1) as engine:
        model = engine.registry.get(BERT_ID)
        cache = engine.registry.embeddings
        for start in range(0, 600, 50):  # a stream of unique documents, ~4.7 kB of embeddings each
            documents = [f"document number {i} " + "about bamboo and pandas " * 9 for i in range(start, start + 50)]
            score_directly(model, [QUERY] * 50, documents)
            assert cache.bytes_held <= 2**20
        assert 0 < len(cache) < 600
        # A re-import is a new version: its copy encodes every document again.
        folder = build_colbert(tmp_path / "reimport", "bert")
        import_from_folder(BERT_ID, folder, ImportOptions(force=True))
        engine.registry.refresh()
        newer = engine.registry.get(BERT_ID)
        assert newer is not model
        passes = _counting_encoder(newer)
        score_directly(newer, [QUERY], [f"document number 599 {'about bamboo and pandas ' * 9}"])
        assert passes == [1, 1], "the old version's embeddings are not the new version's"


def test_long_documents_are_split_into_windows_when_asked(colbert_models) -> None:
    _, reference = colbert_models[BERT_ID]
    long_document = " ".join(f"word{i}" for i in range(150)) + " giant pandas eat bamboo"
    with scoring_engine() as engine, routes_client(engine) as client:
        body = {"model": BERT_ID, "query": QUERY, "documents": [long_document], "use_activation": False}
        whole = client.post("/v1/rerank", json=body).json()["results"][0]["relevance_score"]
        windowed = client.post("/v1/rerank", json={**body, "max_chunks_per_doc": 8}).json()["results"][0]
        model = engine.registry.get(BERT_ID)
        windows = model.windows(QUERY, long_document, 8, DEFAULT_OPTIONS)
    assert whole == pytest.approx(reference.score(QUERY, long_document), abs=1e-5)
    assert len(windows) > 1
    assert windowed["relevance_score"] == pytest.approx(max(reference.score(QUERY, w) for w in windows), abs=1e-5)


def test_an_over_long_query_is_cut_to_the_query_length_as_pylate_does(colbert_models) -> None:
    _, reference = colbert_models[MODERN_ID]
    query = "pandas bamboo " * 100
    with scoring_engine() as engine:
        model = engine.registry.get(MODERN_ID)
        logits = score_directly(model, [query], [DOCUMENTS[0]]).logits
        assert len(model.encode([query], [DOCUMENTS[0]]).late[0].query) == 32
    assert logits == pytest.approx([reference.score(query, DOCUMENTS[0])], abs=1e-5)


def test_a_direct_load_scores_without_a_cache(colbert_models) -> None:
    from rerank_server.models.store import find_reranker

    model = load_reranker(find_reranker(BERT_ID), device="cpu")
    _, reference = colbert_models[BERT_ID]
    assert score_directly(model, [QUERY], [DOCUMENTS[1]]).logits == pytest.approx(
        [reference.score(QUERY, DOCUMENTS[1])], abs=1e-5
    )
