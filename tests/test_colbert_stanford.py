"""ColBERT models saved in the Stanford format (colbert-ai, RAGatouille: answerai-colbert-small-v1, jina-colbert-v2):
recognised at import as late-interaction models, and scored as PyLate scores the same folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rerank_server.catalog import known_model
from rerank_server.engine.passes import score_directly
from rerank_server.importer.commit import ImportOptions
from rerank_server.importer.folder import ModelImportError, inspect_folder
from rerank_server.importer.sources import import_from_folder
from rerank_server.recipes.colbert import ColbertRecipe
from tests.colbert_reference import STANFORD_METADATA, PyLateReference, build_stanford_colbert, build_stanford_rotary
from tests.conftest import routes_client, scores_by_index, scoring_engine

ANSWERAI_ID = "answerdotai/answerai-colbert-small-v1"
QUERY = "what do giant pandas eat?"
DOCUMENTS = [
    "The giant panda eats bamboo almost exclusively, up to 38 kg a day.",
    "Paris is the capital of France.",
    "Pandas (the Python library) read CSV files!",
    "?!...,;:",
    "bamboo " * 80,  # longer than the document length (48): cut as PyLate cuts it
]


@pytest.fixture(scope="module")
def stanford_bert(tmp_path_factory) -> tuple[Path, PyLateReference]:
    """The Stanford BERT fixture stored under answerai-colbert-small-v1's id, and PyLate on the same folder."""
    folder = build_stanford_colbert(tmp_path_factory.mktemp("stanford") / "answerai")
    import_from_folder(ANSWERAI_ID, folder)
    return folder, PyLateReference(folder)


def test_a_stanford_folder_is_stored_as_a_late_interaction_model(stanford_bert) -> None:
    from rerank_server.models.store import find_reranker

    stored = find_reranker(ANSWERAI_ID)
    # The lengths are the folder's own (artifact.metadata), not the published model's 32 + 300.
    assert (stored.recipe, stored.architecture, stored.max_length) == ("colbert", "BertModel", 32 + 48)
    assert stored.parameters > 22_000_000 and stored.license == "apache-2.0"
    with pytest.raises(ModelImportError, match="late-interaction"):
        import_from_folder("test-org/misfiled", stanford_bert[0], ImportOptions(recipe="cross-encoder"))


def test_stanford_scores_are_pylates(stanford_bert) -> None:
    _, reference = stanford_bert
    expected = [reference.score(QUERY, document) for document in DOCUMENTS]
    with scoring_engine() as engine, routes_client(engine) as client:
        model = engine.registry.get(ANSWERAI_ID)
        for pair, document in zip(model.encode([QUERY] * len(DOCUMENTS), DOCUMENTS).late, DOCUMENTS, strict=True):
            assert list(pair.query) == reference.ids(QUERY, True)
            assert list(pair.document) == reference.ids(document, False)
        body = {"model": ANSWERAI_ID, "query": QUERY, "documents": DOCUMENTS}
        raw = client.post("/v1/rerank", json={**body, "use_activation": False}).json()["results"]
        assert scores_by_index(raw) == pytest.approx(expected, abs=1e-5)
        assert [r["index"] for r in raw] == sorted(range(len(expected)), key=lambda i: -expected[i])
        scored = client.post("/score", json={"model": ANSWERAI_ID, "text_1": QUERY, "text_2": DOCUMENTS}).json()
    relevance = [score / 32 for score in expected]  # MaxSim over the query length
    assert [d["score"] for d in scored["data"]] == pytest.approx(relevance, abs=1e-6)


def test_without_artifact_metadata_the_settings_are_pylates_defaults(tmp_path) -> None:
    folder = build_stanford_colbert(tmp_path / "bare", metadata=None)
    settings = ColbertRecipe.load_extras(folder)["settings"]
    pylate = PyLateReference(folder).config
    names = ("query_prefix", "document_prefix", "query_length", "document_length", "attend_to_expansion_tokens")
    assert [getattr(settings, name) for name in names] == [pylate[name] for name in names]
    assert list(settings.skiplist_words) == pylate["skiplist_words"]
    assert inspect_folder(folder, "test-org/bare").max_length == pylate["query_length"] + pylate["document_length"]


@pytest.mark.parametrize(
    ("wrong", "message"),
    [({"query_maxlen": 0}, "query_length must be a whole number of tokens above 0, not 0"),
     ({"doc_maxlen": [300]}, r"document_length must be a whole number of tokens above 0, not \[300\]")],
)  # fmt: skip
def test_unusable_artifact_metadata_is_one_clear_import_error(tmp_path, wrong: dict, message: str) -> None:
    folder = build_stanford_colbert(tmp_path / "wrong", metadata={**STANFORD_METADATA, **wrong})
    with pytest.raises(ModelImportError, match=message):
        import_from_folder("test-org/wrong-metadata", folder)


def test_pickled_weights_and_missing_projections(tmp_path) -> None:
    pickled = build_stanford_colbert(tmp_path / "pickled", weights="bin")
    stored = import_from_folder("test-org/pickled-colbert", pickled).stored
    with scoring_engine() as engine:
        logits = score_directly(engine.registry.get(stored.model_id), [QUERY] * 2, DOCUMENTS[:2]).logits
    assert logits == pytest.approx([PyLateReference(pickled).score(QUERY, d) for d in DOCUMENTS[:2]], abs=1e-5)
    state = torch.load(pickled / "pytorch_model.bin", weights_only=True)
    del state["linear.weight"]
    torch.save(state, pickled / "pytorch_model.bin")
    with pytest.raises(ModelImportError, match=r"no ColBERT projection \(linear.weight\)"):
        import_from_folder("test-org/no-projection-bin", pickled)
    from safetensors.torch import load_file, save_file

    folder = build_stanford_colbert(tmp_path / "no-projection")
    state = load_file(folder / "model.safetensors")
    del state["linear.weight"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ModelImportError, match=r"no ColBERT projection \(linear.weight\).*HF_ColBERT"):
        import_from_folder("test-org/no-projection", folder)
    # Sharded: one model.safetensors.index.json and its shards, where PyLate reads one file.
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    weight_map = {key: "model-00001-of-00001.safetensors" for key in state}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelImportError, match="sharded weights"):
        import_from_folder("test-org/sharded", folder)


def test_an_import_by_id_downloads_the_colbert_settings(stanford_bert, monkeypatch) -> None:
    from rerank_server.importer.sources import import_from_hub
    from tests.fake_hub import fake_hub

    with fake_hub({"test-org/stanford-from-hub": stanford_bert[0]}) as (endpoint, _):
        # What HF_ENDPOINT sets when huggingface_hub is imported.
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", endpoint)
        template = f"{endpoint}/{{repo_id}}/resolve/{{revision}}/{{filename}}"
        monkeypatch.setattr("huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE", template)
        stored = import_from_hub("test-org/stanford-from-hub").stored
    assert (stored.path / "artifact.metadata").is_file() and stored.max_length == 32 + 48


JINA_ID = "jinaai/jina-colbert-v2"
# jina-colbert-v2's model card: models.ColBERT("jinaai/jina-colbert-v2", query_prefix="[QueryMarker]",
# document_prefix="[DocumentMarker]", attend_to_expansion_tokens=True, trust_remote_code=True).
MODEL_CARD = {
    "query_prefix": "[QueryMarker]",
    "document_prefix": "[DocumentMarker]",
    "attend_to_expansion_tokens": True,
}


def test_a_stanford_folder_with_its_own_code_is_scored_as_its_model_card_says(tmp_path, monkeypatch) -> None:
    folder = build_stanford_rotary(tmp_path / "jina-colbert")
    with pytest.raises(ModelImportError, match="ships its own modelling code.*--trust-remote-code"):
        import_from_folder(JINA_ID, folder)
    stored = import_from_folder(JINA_ID, folder, ImportOptions(trust_remote_code=True)).stored
    assert (stored.recipe, stored.architecture, stored.max_length) == ("colbert", "RotaryXLMRobertaModel", 32 + 64)
    assert set(stored.remote_code) == {"configuration_rotary.py", "modeling_rotary.py"} and stored.runs_code
    assert stored.license == "cc-by-nc-4.0"
    reference = PyLateReference(folder, trust_remote_code=True, **MODEL_CARD)
    expected = [reference.score(QUERY, document) for document in DOCUMENTS]
    with scoring_engine() as engine, routes_client(engine) as client:
        pair = engine.registry.get(JINA_ID).encode([QUERY], [DOCUMENTS[0]]).late[0]
        # The model card's markers, not the metadata's [unused0] / [unused1]; every expansion token attended.
        assert pair.query[1] == reference.tokenizer.convert_tokens_to_ids("[QueryMarker]") and pair.attended == 32
        assert list(pair.query) == reference.ids(QUERY, True)
        assert list(pair.document) == reference.ids(DOCUMENTS[0], False)
        body = {"model": JINA_ID, "query": QUERY, "documents": DOCUMENTS, "use_activation": False}
        raw = client.post("/v1/rerank", json=body).json()["results"]
        tei = {"model": JINA_ID, "query": QUERY, "texts": DOCUMENTS, "raw_scores": True}
        tei_scores = scores_by_index(client.post("/rerank", json=tei).json(), "score")
    assert scores_by_index(raw) == pytest.approx(expected, abs=1e-5)
    assert [r["index"] for r in raw] == sorted(range(len(expected)), key=lambda i: -expected[i])
    assert tei_scores == pytest.approx(expected, abs=1e-5)
    # The catalogue's arguments are part of the version: changed in a release, the next import stores the model again.
    options = ImportOptions(trust_remote_code=True)
    assert import_from_folder(JINA_ID, folder, options).skipped
    changed = dataclasses.replace(known_model(JINA_ID), pylate_arguments=(("attend_to_expansion_tokens", False),))
    for module in ("rerank_server.importer.commit", "rerank_server.importer.folder"):
        monkeypatch.setattr(f"{module}.known_model", lambda model_id: changed)
    assert not import_from_folder(JINA_ID, folder, options).skipped
