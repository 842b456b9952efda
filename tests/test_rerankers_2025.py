"""The rerankers of 2025-26 (issue #24): mxbai-rerank v2 scored as mixedbread's package scores it, rerankers that
ship their own modelling code behind `--trust-remote-code`, and ModernBERT / Ettin cross-encoders."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import transformers

from rerank_server.engine.passes import score_directly
from rerank_server.importer.commit import ImportOptions
from rerank_server.importer.folder import ModelImportError
from rerank_server.importer.sources import import_from_folder
from rerank_server.models.loaded import load_folder
from rerank_server.models.store import find_reranker
from rerank_server.recipes import TextOptions
from tests.conftest import FIXTURE_MODEL_ID, REPO_ROOT, routes_client, running_server, scores_by_index, scoring_engine
from tests.fixture_models import (
    build_ettin_reranker,
    build_modernbert_cross_encoder,
    build_mxbai_v2_reranker,
    build_remote_code_reranker,
)
from tests.llm_references import MxbaiV2Reference
from tests.test_llm_rerankers import DOCUMENTS, QUERY, long_document

MXBAI_ID = "mixedbread-ai/mxbai-rerank-base-v2"
INSTRUCTION = "Find the passage that names the planet"


def _sigmoid(values: list[float]) -> list[float]:
    return torch.sigmoid(torch.tensor(values, dtype=torch.float64)).tolist()


# --- mxbai-rerank v2 -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mxbai_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mxbai_v2_reranker(tmp_path_factory.mktemp("mxbai") / "mxbai-rerank-v2")


@pytest.fixture(scope="module")
def mxbai_reference(mxbai_dir: Path) -> MxbaiV2Reference:
    return MxbaiV2Reference(mxbai_dir)


@pytest.fixture(scope="module")
def stored_mxbai(stored_fixture, mxbai_dir: Path) -> str:
    """Stored under its catalogue id: the recipe comes from the id."""
    return import_from_folder(MXBAI_ID, mxbai_dir).stored.model_id


@pytest.fixture(scope="module")
def new_client(stored_mxbai):
    with scoring_engine() as engine, routes_client(engine) as client:
        yield client


def test_mxbai_token_ids_are_the_packages(mxbai_dir, mxbai_reference) -> None:
    model = load_folder(mxbai_dir, recipe="mxbai-v2", max_length=8192, causal=True)
    documents = [*DOCUMENTS, long_document(12_000), "Paris.", "ends in a newline\n"]
    queries = [QUERY] * len(documents)
    assert model.encode(queries, documents).input_ids == mxbai_reference.token_ids(queries, documents)
    with_instruction = model.encode(queries, documents, TextOptions(instruction=INSTRUCTION)).input_ids
    assert with_instruction == mxbai_reference.token_ids(queries, documents, INSTRUCTION)
    # A query far over the package's 3/4 of max_length, and a small max_length, cut as the package cuts them.
    huge_query = long_document(9000, seed=4)
    assert model.encode([huge_query], ["d"]).input_ids == mxbai_reference.token_ids([huge_query], ["d"])
    short = MxbaiV2Reference.__new__(MxbaiV2Reference)
    short.__dict__.update(mxbai_reference.__dict__, max_length=200)
    cap = 200 + model.recipe.template_length  # truncate_prompt_tokens caps the whole prompt, template included
    capped = model.encode(queries, documents, TextOptions(max_length=cap)).input_ids
    assert capped == short.token_ids(queries, documents)
    assert max(len(ids) for ids in capped) <= cap


@pytest.mark.parametrize("instruction", [None, INSTRUCTION])
def test_mxbai_scores_are_the_packages_on_every_route(new_client, mxbai_reference, instruction) -> None:
    raw = mxbai_reference.predict([QUERY] * len(DOCUMENTS), DOCUMENTS, instruction=instruction)
    assert np.ptp(raw) > 0.5, "the fixture must separate documents for this test to mean anything"
    expected = _sigmoid(raw)  # relevance_score is the sigmoid of the package's raw score
    extra = {"instruction": instruction} if instruction else {}
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        body = new_client.post(path, json={"model": MXBAI_ID, "query": QUERY, "documents": DOCUMENTS, **extra}).json()
        assert body["model"] == MXBAI_ID
        assert scores_by_index(body["results"]) == pytest.approx(expected, abs=1e-4), path
        assert [r["index"] for r in body["results"]] == sorted(range(len(DOCUMENTS)), key=lambda i: -raw[i]), path
    raw_answer = new_client.post(
        "/v1/rerank", json={"model": MXBAI_ID, "query": QUERY, "documents": DOCUMENTS, "use_activation": False, **extra}
    ).json()
    assert scores_by_index(raw_answer["results"]) == pytest.approx(raw, abs=1e-4), "the raw score is the package's"
    tei = new_client.post(
        "/rerank", json={"model": MXBAI_ID, "query": QUERY, "texts": DOCUMENTS, "raw_scores": True, **extra}
    ).json()
    assert scores_by_index(tei, "score") == pytest.approx(raw, abs=1e-4)
    score = new_client.post("/score", json={"model": MXBAI_ID, "text_1": QUERY, "text_2": DOCUMENTS, **extra}).json()
    assert [d["score"] for d in score["data"]] == pytest.approx(expected, abs=1e-4)


def test_mxbai_long_documents_score_as_the_package(new_client, mxbai_reference) -> None:
    documents = [long_document(9000, seed=s) for s in range(3)]
    raw = mxbai_reference.predict([QUERY] * 3, documents)
    body = new_client.post(
        "/v1/rerank", json={"model": MXBAI_ID, "query": QUERY, "documents": documents, "use_activation": False}
    ).json()
    assert scores_by_index(body["results"]) == pytest.approx(raw, abs=1e-4)


def test_mxbai_fine_tunes_take_the_recipe_by_name(stored_fixture, mxbai_dir) -> None:
    with pytest.raises(ModelImportError, match="--recipe"):
        import_from_folder("my-org/my-mxbai-finetune", mxbai_dir)
    stored = import_from_folder("my-org/my-mxbai-finetune", mxbai_dir, ImportOptions(recipe="mxbai-v2")).stored
    assert (stored.recipe, stored.max_length, stored.causal) == ("mxbai-v2", 8192, True)
    assert find_reranker("mixedbread-ai/mxbai-rerank-base-v2").recipe == "mxbai-v2"


def test_a_converted_sequence_classification_checkpoint_scores_the_same(
    stored_fixture, mxbai_dir, mxbai_reference, tmp_path
) -> None:
    """vLLM's conversion (`from_2_way_softmax`): one label whose weight is lm_head["1"] - lm_head["0"]."""
    language_model = transformers.AutoModelForCausalLM.from_pretrained(mxbai_dir, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(mxbai_dir)
    one, zero = (tokenizer.convert_tokens_to_ids(digit) for digit in ("1", "0"))
    config = transformers.AutoConfig.from_pretrained(mxbai_dir)
    config.update({"num_labels": 1, "architectures": ["Qwen2ForSequenceClassification"]})
    converted = transformers.Qwen2ForSequenceClassification(config)
    converted.model.load_state_dict(language_model.model.state_dict())
    head = language_model.get_output_embeddings().weight
    converted.score.weight.data = (head[one] - head[zero]).unsqueeze(0).clone()
    converted.save_pretrained(tmp_path / "seq-cls")
    tokenizer.save_pretrained(tmp_path / "seq-cls")
    stored = import_from_folder("my-org/mxbai-rerank-base-v2-seq-cls", tmp_path / "seq-cls").stored
    assert (stored.recipe, stored.causal) == ("mxbai-v2", False)
    with scoring_engine() as engine, routes_client(engine) as client:
        body = client.post(
            "/v1/rerank",
            json={"model": stored.model_id, "query": QUERY, "documents": DOCUMENTS, "use_activation": False},
        ).json()
    expected = mxbai_reference.predict([QUERY] * len(DOCUMENTS), DOCUMENTS)
    assert scores_by_index(body["results"]) == pytest.approx(expected, abs=1e-4)


def test_mxbai_and_a_cross_encoder_answer_concurrently_through_bentoml_serve(
    stored_mxbai, mxbai_reference, reference_encoder, tmp_path
) -> None:
    expected = {
        (MXBAI_ID, None): mxbai_reference.predict([QUERY] * len(DOCUMENTS), DOCUMENTS),
        (MXBAI_ID, INSTRUCTION): mxbai_reference.predict([QUERY] * len(DOCUMENTS), DOCUMENTS, instruction=INSTRUCTION),
        (FIXTURE_MODEL_ID, None): reference_encoder.predict(
            [(QUERY, d) for d in DOCUMENTS], activation_fn=torch.nn.Identity()
        ).tolist(),
    }
    env = {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_PRELOAD": MXBAI_ID}
    with running_server(tmp_path / "serve.log", env) as server:

        async def burst() -> list[tuple[tuple[str, str | None], list[float]]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

                async def one(key: tuple[str, str | None]) -> tuple[tuple[str, str | None], list[float]]:
                    model, instruction = key
                    body = {"model": model, "query": QUERY, "documents": DOCUMENTS, "use_activation": False}
                    response = await client.post("/v1/rerank", json={**body, "instruction": instruction})
                    assert response.status_code == 200, response.text
                    return key, scores_by_index(response.json()["results"])

                return await asyncio.gather(*(one(key) for key in [*expected] * 3))

        answers = asyncio.run(burst())
    for key, scores in answers:
        assert scores == pytest.approx(expected[key], abs=1e-4), key


# --- Rerankers with their own modelling code -------------------------------------------------------------------------


def _cli(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "import_models.py", *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def _reference(folder: Path, pairs: list[tuple[str, str]]) -> list[float]:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), trust_remote_code=True, activation_fn=torch.nn.Identity())
    return model.predict(pairs).tolist()


def test_own_code_without_the_flag_is_refused_in_one_line_and_nothing_is_stored(tmp_path) -> None:
    folder, _ = build_remote_code_reranker(tmp_path / "own-code")  # model_type "bert": a stock class would load
    run = _cli("test-org/own-code-refused", "--from-dir", str(folder))
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0 and "--trust-remote-code" in run.stderr, run.stderr
    assert find_reranker("test-org/own-code-refused") is None


def test_own_code_is_stored_run_from_the_store_and_scores_as_sentence_transformers(stored_fixture, tmp_path) -> None:
    source, _ = build_remote_code_reranker(tmp_path / "own-code")
    pairs = [(QUERY, d) for d in DOCUMENTS]
    expected = _reference(source, pairs)
    run = _cli("test-org/own-code", "--from-dir", str(source), "--trust-remote-code")
    assert run.returncode == 0, run.stderr
    for name in ("modeling_custom.py", "custom_head.py"):  # the relative import travels with it
        assert re.search(rf"{name} sha256 [0-9a-f]{{64}}", run.stdout), run.stdout
    listing = _cli("--list").stdout
    assert re.search(r"test-org/own-code .* own ", listing), listing
    shutil.rmtree(source)  # served from the store alone
    with scoring_engine() as engine, routes_client(engine) as client:
        card = next(m for m in client.get("/v1/models").json()["data"] if m["id"] == "test-org/own-code")
        assert card["remote_code"] is True
        body = client.post(
            "/v1/rerank",
            json={"model": "test-org/own-code", "query": QUERY, "documents": DOCUMENTS, "use_activation": False},
        ).json()
    assert scores_by_index(body["results"]) == pytest.approx(expected, abs=1e-5)


def test_code_from_another_repository_comes_with_an_import_by_id(stored_fixture, tmp_path, monkeypatch) -> None:
    from tests.fake_hub import fake_hub

    weights, code = build_remote_code_reranker(tmp_path / "custom-reranker", code_repo="test-org/custom-code")
    self_contained = tmp_path / "self-contained"  # the reference: code and weights side by side, names local
    shutil.copytree(weights, self_contained)
    for path in code.iterdir():
        shutil.copy(path, self_contained / path.name)
    config = json.loads((self_contained / "config.json").read_text())
    config["auto_map"] = {k: v.split("--")[1] for k, v in config["auto_map"].items()}
    (self_contained / "config.json").write_text(json.dumps(config))
    expected = _reference(self_contained, [(QUERY, d) for d in DOCUMENTS])
    with fake_hub({"test-org/custom-reranker": weights, "test-org/custom-code": code}) as (endpoint, _):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        run = _cli("test-org/custom-reranker", "--trust-remote-code", env={"HF_ENDPOINT": endpoint})
    assert run.returncode == 0, run.stderr
    assert "configuration_custom.py sha256" in run.stdout and "modeling_custom.py sha256" in run.stdout
    stored = find_reranker("test-org/custom-reranker")
    stored_config = json.loads((stored.path / "config.json").read_text())
    assert all("--" not in reference for reference in stored_config["auto_map"].values()), "nothing fetched later"
    with scoring_engine() as engine, routes_client(engine) as client:
        body = client.post(
            "/v1/rerank",
            json={"model": stored.model_id, "query": QUERY, "documents": DOCUMENTS, "use_activation": False},
        ).json()
    assert scores_by_index(body["results"]) == pytest.approx(expected, abs=1e-5)


def test_a_model_stored_with_its_code_ignored_is_refused_at_load(stored_fixture, tmp_path) -> None:
    """What an earlier import did: the folder stored without its code, served with the stock class (wrong scores)."""
    import bentoml

    from rerank_server.models.store import APP_LABEL

    folder, _ = build_remote_code_reranker(tmp_path / "old-import")
    metadata = {
        "model_id": "test-org/old-import",
        "max_length": 512,
        "architecture": "CustomBertForSequenceClassification",
    }
    with bentoml.models.create("test-org--old-import", labels={**APP_LABEL}, metadata=metadata) as model:
        shutil.copytree(folder, model.path, dirs_exist_ok=True)
    with scoring_engine() as engine, routes_client(engine) as client:
        answer = client.post("/v1/rerank", json={"model": "test-org/old-import", "query": "q", "documents": ["d"]})
    assert answer.status_code == 503
    assert "re-import it with `import_models.py --trust-remote-code`" in answer.json()["error"]["message"]


def test_an_operator_can_refuse_models_own_code_on_a_host(stored_fixture, tmp_path) -> None:
    source, _ = build_remote_code_reranker(tmp_path / "refused-here")
    import_from_folder("test-org/refused-here", source, ImportOptions(trust_remote_code=True))
    with scoring_engine(allow_remote_code=False) as engine, routes_client(engine) as client:
        answer = client.post("/v1/rerank", json={"model": "test-org/refused-here", "query": "q", "documents": ["d"]})
    assert answer.status_code == 503 and "RERANK_ALLOW_REMOTE_CODE=false" in answer.json()["error"]["message"]


# --- ModernBERT and Ettin ------------------------------------------------------------------------------------------


def test_a_modernbert_cross_encoder_serves_sentence_transformers_scores(stored_fixture, tmp_path) -> None:
    from sentence_transformers import CrossEncoder

    folder = build_modernbert_cross_encoder(tmp_path / "modernbert")
    documents = [*DOCUMENTS, long_document(3000)]
    expected = CrossEncoder(str(folder)).predict([(QUERY, d) for d in documents]).tolist()
    assert np.ptp(expected) > 0.1, "the fixture must separate documents for this test to mean anything"
    stored = import_from_folder("test-org/modernbert-reranker", folder).stored
    with scoring_engine() as engine, routes_client(engine) as client:
        body = client.post("/v1/rerank", json={"model": stored.model_id, "query": QUERY, "documents": documents}).json()
    assert scores_by_index(body["results"]) == pytest.approx(expected, abs=1e-5)


def test_an_ettin_reranker_serves_its_raw_scores_and_their_sigmoid(stored_fixture, tmp_path) -> None:
    from sentence_transformers import CrossEncoder

    folder = build_ettin_reranker(tmp_path / "ettin")
    documents = [*DOCUMENTS, long_document(3000)]
    raw = CrossEncoder(str(folder)).predict([(QUERY, d) for d in documents]).tolist()  # its own activation: none
    assert np.ptp(raw) > 1.0, "the fixture must separate documents for this test to mean anything"
    stored = import_from_folder("test-org/ettin-reranker", folder).stored
    assert stored.max_length == 7999 and stored.module_stack
    with scoring_engine() as engine, routes_client(engine) as client:
        body = {"model": stored.model_id, "query": QUERY, "documents": documents}
        relevance = client.post("/v1/rerank", json=body).json()["results"]
        logits = client.post("/v1/rerank", json={**body, "use_activation": False}).json()["results"]
    assert scores_by_index(logits) == pytest.approx(raw, abs=1e-4)
    assert scores_by_index(relevance) == pytest.approx(_sigmoid(raw), abs=1e-5)
    direct = load_folder(stored.path, max_length=7999, module_stack=True)
    assert score_directly(direct, [QUERY], [documents[0]]).logits == pytest.approx(raw[:1], abs=1e-4)


@pytest.mark.parametrize("backend", ["openvino-int8", "onnx-int8"])
def test_cpu_runtimes_refuse_modernbert_at_import_in_one_line(tmp_path, backend: str) -> None:
    folder = build_modernbert_cross_encoder(tmp_path / "modernbert")
    run = _cli("test-org/modernbert-cpu", "--from-dir", str(folder), "--backend", backend)
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0 and "BERT-family" in run.stderr, run.stderr
    assert find_reranker("test-org/modernbert-cpu") is None


@pytest.mark.parametrize("entry", ["/tmp/elsewhere/evil.Model", "../outside.Model", "a.b.Model"])
def test_code_named_outside_the_folder_is_refused_at_import(tmp_path, entry: str) -> None:
    folder, _ = build_remote_code_reranker(tmp_path / "escape")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"]["AutoModelForSequenceClassification"] = entry
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelImportError, match="is not `module.Class`"):
        import_from_folder("test-org/escape", folder, ImportOptions(trust_remote_code=True))


def test_stored_code_changed_after_the_import_is_refused_at_load(stored_fixture, tmp_path) -> None:
    source, _ = build_remote_code_reranker(tmp_path / "tampered")
    stored = import_from_folder("test-org/tampered", source, ImportOptions(trust_remote_code=True)).stored
    (stored.path / "custom_head.py").write_text("def shift(logits, token_type_ids):\n    return logits * 0\n")
    with scoring_engine() as engine, routes_client(engine) as client:
        answer = client.post("/v1/rerank", json={"model": "test-org/tampered", "query": "q", "documents": ["d"]})
    assert answer.status_code == 503 and "changed since the import" in answer.json()["error"]["message"]


def test_own_code_is_taken_for_classifiers_only(tmp_path, mxbai_dir) -> None:
    folder = Path(shutil.copytree(mxbai_dir, tmp_path / "causal-with-code"))
    (folder / "modeling_custom.py").write_text("from transformers import Qwen2ForCausalLM as CustomLM\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLM"}
    (folder / "config.json").write_text(json.dumps(config))
    options = ImportOptions(trust_remote_code=True, recipe="mxbai-v2")
    with pytest.raises(ModelImportError, match="ForSequenceClassification cross-encoders"):
        import_from_folder("test-org/causal-with-code", folder, options)
