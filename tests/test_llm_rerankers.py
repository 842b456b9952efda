"""LLM rerankers (Qwen3-Reranker, bge-reranker-v2-gemma) scored exactly as their authors' code scores them.

The fixtures are tiny random causal LMs with tokenizers built like the real ones (tests/fixture_models.py); the
references are the published recipes, re-implemented in tests/llm_references.py. Token ids are compared exactly;
scores within 1e-4 in float32, and in the same order, on every route. Documents of mixed lengths in one batch make a
wrong padding side show; a wrong template, token id or activation changes every score.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from rerank_server.engine.passes import score_directly
from rerank_server.importer.folder import ModelImportError
from rerank_server.importer.sources import import_from_folder
from rerank_server.models.loaded import load_folder
from rerank_server.models.store import find_reranker
from rerank_server.recipes import TextOptions
from tests.conftest import (
    BGE_GEMMA_ID,
    FIXTURE_MODEL_ID,
    QWEN3_ID,
    REPO_ROOT,
    routes_client,
    running_server,
    scores_by_index,
)
from tests.conftest import scoring_engine as make_engine
from tests.llm_references import BGE_GEMMA_PROMPT, BgeGemmaReference, Qwen3Reference

QUERY = "Which planet is known as the Red Planet?"
DOCUMENTS = [
    "Venus is often called Earth's twin because of its similar size and proximity.",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Jupiter, the largest planet in our solar system, has a prominent red spot.",
    "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
    "",
    "火星是太阳系中的红色行星。",
    " ".join(["Mars"] * 40),
]
INSTRUCTION = "Given a question about astronomy, find the passage that answers it"


def long_document(words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(
        rng.choices("the red planet Mars has a thin atmosphere of carbon dioxide and two moons".split(), k=words)
    )


@pytest.fixture(scope="module")
def qwen3_reference(qwen3_dir: Path) -> Qwen3Reference:
    return Qwen3Reference(qwen3_dir)


@pytest.fixture(scope="module")
def bge_gemma_reference(bge_gemma_dir: Path) -> BgeGemmaReference:
    return BgeGemmaReference(bge_gemma_dir)


@pytest.fixture(scope="module")
def llm_client(stored_llms):
    with make_engine() as engine, routes_client(engine) as client:
        yield client


# --- Token ids: the recipes against the references -----------------------------------------------------------------


def test_qwen3_token_ids_are_the_references(qwen3_dir, qwen3_reference) -> None:
    scorer = load_folder(qwen3_dir, recipe="qwen3", max_length=8192, causal=True)
    documents = [*DOCUMENTS, long_document(3000), long_document(20_000, seed=1)]
    queries = [QUERY] * len(documents)
    assert scorer.encode(queries, documents).input_ids == qwen3_reference.token_ids(queries, documents)
    custom = scorer.encode(queries, documents, TextOptions(instruction=INSTRUCTION)).input_ids
    assert custom == qwen3_reference.token_ids(queries, documents, INSTRUCTION)
    short = Qwen3Reference.__new__(Qwen3Reference)
    short.__dict__.update(qwen3_reference.__dict__, max_length=200)
    assert scorer.encode(queries, documents, TextOptions(max_length=200)).input_ids == short.token_ids(
        queries, documents
    )
    # A query far longer than the limit too: the template is never cut, the middle is cut from its end.
    huge_query = long_document(30_000, seed=2)
    assert scorer.encode([huge_query], ["d"]).input_ids == qwen3_reference.token_ids([huge_query], ["d"])


def test_bge_gemma_token_ids_are_the_references(bge_gemma_dir, bge_gemma_reference) -> None:
    scorer = load_folder(bge_gemma_dir, recipe="bge-gemma", max_length=512, causal=True)
    documents = [*DOCUMENTS, long_document(3000), long_document(20_000, seed=1)]
    queries = [QUERY] * (len(documents) - 1) + [long_document(5000, seed=3)]  # a query past its 384-token cap
    assert scorer.encode(queries, documents).input_ids == bge_gemma_reference.token_ids(queries, documents)
    prompt = "Does passage B answer question A? Reply 'Yes' or 'No'."
    custom = scorer.encode(queries, documents, TextOptions(instruction=prompt)).input_ids
    assert custom == bge_gemma_reference.token_ids(queries, documents, prompt=prompt)
    # truncate_prompt_tokens caps the whole prompt; FlagEmbedding's max_length caps BOS + query + "\n" + passage at
    # max_length + "\n" + prompt, and then appends "\n" + prompt.
    tokenizer = bge_gemma_reference.tokenizer
    sep_and_prompt = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ("\n", BGE_GEMMA_PROMPT))
    assert sep_and_prompt > 10, "the fixture's prompt is several tokens, as the real one is"
    cap = 128 + 2 * sep_and_prompt
    capped = scorer.encode(queries, documents, TextOptions(max_length=cap)).input_ids
    assert capped == bge_gemma_reference.token_ids(queries, documents, max_length=128)
    assert max(len(ids) for ids in capped) == cap


def test_the_template_is_never_cut_when_truncating_from_the_left(qwen3_dir, qwen3_reference) -> None:
    scorer = load_folder(qwen3_dir, recipe="qwen3", max_length=8192, causal=True)
    document = long_document(3000) + " the final words"
    (ids,) = scorer.encode([QUERY], [document], TextOptions(max_length=300, side="left")).input_ids
    assert len(ids) <= 300
    assert ids[: len(qwen3_reference.prefix_tokens)] == qwen3_reference.prefix_tokens
    assert ids[-len(qwen3_reference.suffix_tokens) :] == qwen3_reference.suffix_tokens
    text = qwen3_reference.tokenizer.decode(ids)
    assert "<Query>: " + QUERY in text and text.split("<Document>: ")[1].split("<|im_end|>")[0].endswith("final words")


# --- Scores on every route -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("instruction", [None, INSTRUCTION])
def test_qwen3_scores_are_the_references_on_every_route(llm_client, qwen3_reference, instruction) -> None:
    expected = qwen3_reference.scores([QUERY] * len(DOCUMENTS), DOCUMENTS, instruction)
    assert np.ptp(expected) > 0.05, "the fixture must separate documents for this test to mean anything"
    extra = {"instruction": instruction} if instruction else {}
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        body = llm_client.post(path, json={"model": QWEN3_ID, "query": QUERY, "documents": DOCUMENTS, **extra}).json()
        assert body["model"] == QWEN3_ID
        assert scores_by_index(body["results"]) == pytest.approx(expected, abs=1e-4), path
        ranked = [r["index"] for r in body["results"]]
        assert ranked == sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i]), path
        tokens = sum(len(ids) for ids in qwen3_reference.token_ids([QUERY] * len(DOCUMENTS), DOCUMENTS, instruction))
        assert body["usage"]["prompt_tokens"] == tokens, "usage counts what the model saw, the template included"
    tei = llm_client.post("/rerank", json={"model": QWEN3_ID, "query": QUERY, "texts": DOCUMENTS, **extra}).json()
    assert scores_by_index(tei, "score") == pytest.approx(expected, abs=1e-4)
    score = llm_client.post("/score", json={"model": QWEN3_ID, "text_1": QUERY, "text_2": DOCUMENTS, **extra}).json()
    assert [d["score"] for d in score["data"]] == pytest.approx(expected, abs=1e-4)
    raw = llm_client.post(
        "/v1/rerank", json={"model": QWEN3_ID, "query": QUERY, "documents": DOCUMENTS, "use_activation": False, **extra}
    ).json()
    logits = torch.logit(torch.tensor(expected, dtype=torch.float64)).tolist()  # z_yes - z_no
    assert scores_by_index(raw["results"]) == pytest.approx(logits, abs=1e-3)


@pytest.mark.parametrize("prompt", [None, "Does passage B answer question A? Reply 'Yes' or 'No'."])
def test_bge_gemma_scores_are_the_references_on_every_route(llm_client, bge_gemma_reference, prompt) -> None:
    expected = bge_gemma_reference.scores([QUERY] * len(DOCUMENTS), DOCUMENTS, prompt=prompt)
    assert np.ptp(expected) > 0.05, "the fixture must separate documents for this test to mean anything"
    extra = {"instruction": prompt} if prompt else {}
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        body = llm_client.post(
            path, json={"model": "bge-reranker-v2-gemma", "query": QUERY, "documents": DOCUMENTS, **extra}
        ).json()
        assert body["model"] == BGE_GEMMA_ID
        assert scores_by_index(body["results"]) == pytest.approx(expected, abs=1e-4), path
    tei = llm_client.post("/rerank", json={"model": BGE_GEMMA_ID, "query": QUERY, "texts": DOCUMENTS, **extra}).json()
    assert scores_by_index(tei, "score") == pytest.approx(expected, abs=1e-4)
    score = llm_client.post(
        "/score", json={"model": BGE_GEMMA_ID, "text_1": QUERY, "text_2": DOCUMENTS, **extra}
    ).json()
    assert [d["score"] for d in score["data"]] == pytest.approx(expected, abs=1e-4)


def test_an_instruction_is_ignored_by_cross_encoders(llm_client, reference_encoder) -> None:
    body = {"model": FIXTURE_MODEL_ID, "query": QUERY, "documents": DOCUMENTS[:3], "instruction": INSTRUCTION}
    scores = scores_by_index(llm_client.post("/v1/rerank", json=body).json()["results"])
    assert scores == pytest.approx(reference_encoder.predict([(QUERY, d) for d in DOCUMENTS[:3]]).tolist(), abs=1e-5)


def test_concurrent_requests_mixing_llm_rerankers_and_a_cross_encoder(
    stored_llms, qwen3_reference, bge_gemma_reference, reference_encoder, tmp_path
) -> None:
    """Through `bentoml serve`: requests for three models and two instructions at once, each answered exactly."""
    expected = {
        (QWEN3_ID, None): qwen3_reference.scores([QUERY] * len(DOCUMENTS), DOCUMENTS),
        (QWEN3_ID, INSTRUCTION): qwen3_reference.scores([QUERY] * len(DOCUMENTS), DOCUMENTS, INSTRUCTION),
        (BGE_GEMMA_ID, None): bge_gemma_reference.scores([QUERY] * len(DOCUMENTS), DOCUMENTS),
        (FIXTURE_MODEL_ID, None): reference_encoder.predict([(QUERY, d) for d in DOCUMENTS]).tolist(),
    }
    env = {"RERANK_DEFAULT_MODEL": FIXTURE_MODEL_ID, "RERANK_PRELOAD": f"{QWEN3_ID},{BGE_GEMMA_ID}"}
    with running_server(tmp_path / "serve.log", env) as server:

        async def burst() -> list[tuple[tuple[str, str | None], list[float]]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

                async def one(key: tuple[str, str | None], path: str) -> tuple[tuple[str, str | None], list[float]]:
                    model, instruction = key
                    body = {"model": model, "query": QUERY, "documents": DOCUMENTS}
                    if instruction:
                        body["instruction"] = instruction
                    response = await client.post(path, json=body)
                    assert response.status_code == 200, response.text
                    return key, scores_by_index(response.json()["results"])

                jobs = [one(key, path) for key in expected for path in ("/v1/rerank", "/v2/rerank", "/rerank")]
                return await asyncio.gather(*(jobs * 2))

        answers = asyncio.run(burst())
    for key, scores in answers:
        assert scores == pytest.approx(expected[key], abs=1e-4), key


# --- Import: catalogue, folders, recipes, refusals -----------------------------------------------------------------


def test_catalogue_ids_get_their_recipe_and_max_length(stored_llms) -> None:
    qwen3, gemma = find_reranker("qwen3-reranker-0.6b"), find_reranker("bge-reranker-v2-gemma")
    assert (qwen3.model_id, qwen3.recipe, qwen3.max_length, qwen3.architecture) == (
        QWEN3_ID, "qwen3", 8192, "Qwen3ForCausalLM",
    )  # fmt: skip
    assert (gemma.model_id, gemma.recipe, gemma.max_length) == (BGE_GEMMA_ID, "bge-gemma", 512)
    assert qwen3.checkpoint_dtype == "bfloat16", "on CUDA it is served in the dtype it ships in"


def _copy(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target))


def test_a_causal_lm_with_no_known_recipe_is_refused_and_one_can_be_named(qwen3_dir, tmp_path) -> None:
    folder = _copy(qwen3_dir, tmp_path / "my-finetune")
    with pytest.raises(ModelImportError, match=r"name one with --recipe \(qwen3, bge-gemma, mxbai-v2"):
        import_from_folder("my-org/my-finetune", folder)
    run = subprocess.run(
        [sys.executable, "import_models.py", "my-org/my-finetune", "--from-dir", str(folder), "--recipe", "qwen3"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert find_reranker("my-org/my-finetune").recipe == "qwen3"


def test_a_sentence_transformers_folder_tells_its_recipe_by_its_chat_template(qwen3_dir, qwen3_reference, tmp_path):
    """sentence-transformers' causal-LM CrossEncoder folders carry the prompt as a chat template and name the yes/no
    tokens in `1_LogitScore/config.json`."""
    folder = _copy(qwen3_dir, tmp_path / "st-format")
    (folder / "chat_template.jinja").write_text(
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
        'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n<Instruct>: {{ ... }}'
    )
    (folder / "1_LogitScore").mkdir()
    tokens = {"true_token_id": qwen3_reference.token_true_id, "false_token_id": qwen3_reference.token_false_id}
    (folder / "1_LogitScore" / "config.json").write_text(json.dumps(tokens))
    stored = import_from_folder("some-lab/reranker-st", folder).stored
    assert stored.recipe == "qwen3"


def test_a_converted_single_logit_qwen3_scores_as_the_original(qwen3_dir, qwen3_reference, tmp_path) -> None:
    """tomaarsen/Qwen3-Reranker-*-seq-cls: Qwen3ForSequenceClassification with lm_head[yes] - lm_head[no] as its head
    (vLLM's convert_model_to_seq_cls.py, from_2_way_softmax); it needs the Qwen3 prompt, which its id tells."""
    import transformers

    causal = transformers.AutoModelForCausalLM.from_pretrained(qwen3_dir, dtype=torch.float32)
    config = transformers.AutoConfig.from_pretrained(qwen3_dir)
    config.num_labels, config.architectures = 1, ["Qwen3ForSequenceClassification"]
    converted = transformers.Qwen3ForSequenceClassification(config)
    converted.model.load_state_dict(causal.model.state_dict())
    weights = causal.lm_head.weight
    with torch.no_grad():
        converted.score.weight.copy_(
            (weights[qwen3_reference.token_true_id] - weights[qwen3_reference.token_false_id])[None]
        )
    folder = tmp_path / "seq-cls"
    converted.save_pretrained(folder)
    qwen3_reference.tokenizer.save_pretrained(folder)
    stored = import_from_folder("tomaarsen/Qwen3-Reranker-0.6B-seq-cls", folder).stored
    assert (stored.recipe, stored.causal) == ("qwen3", False)
    with make_engine() as engine, routes_client(engine) as client:
        body = {"model": stored.model_id, "query": QUERY, "documents": DOCUMENTS}
        scores = scores_by_index(client.post("/v1/rerank", json=body).json()["results"])
    assert scores == pytest.approx(qwen3_reference.scores([QUERY] * len(DOCUMENTS), DOCUMENTS), abs=1e-4)


def test_rerankers_that_need_their_own_modelling_code_are_refused_with_the_reason(qwen3_dir, tmp_path) -> None:
    for model_type, architecture in (
        ("minicpm", "LayerWiseMiniCPMForCausalLM"),
        ("cost_wise_gemma", "CostWiseGemmaForCausalLM"),
    ):
        folder = _copy(qwen3_dir, tmp_path / model_type)
        config = json.loads((folder / "config.json").read_text())
        config.update(model_type=model_type, architectures=[architecture], auto_map={"AutoModelForCausalLM": "x.y"})
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(ModelImportError, match="trust_remote_code"):
            import_from_folder(f"BAAI/{model_type}-reranker", folder)


def test_cpu_runtimes_refuse_llm_rerankers_in_one_line(qwen3_dir) -> None:
    run = subprocess.run(
        [sys.executable, "import_models.py", QWEN3_ID, "--from-dir", str(qwen3_dir), "--backend", "onnx-int8"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.strip() == (
        f"error: {QWEN3_ID}: --backend onnx-int8 runs cross-encoders only; a qwen3 reranker runs with --backend torch "
        "(on a GPU, or on the CPU)"
    )


# --- Serving them well --------------------------------------------------------------------------------------------


def test_only_the_answer_tokens_of_the_output_layer_are_kept(qwen3_dir) -> None:
    backend = load_folder(qwen3_dir, recipe="qwen3", max_length=8192, causal=True).backend
    vocabulary = backend.body.config.vocab_size
    assert backend.head.shape[0] == 2, "only the rows of 'yes' and 'no'"
    # No module computes logits over the vocabulary: the last hidden state meets two rows, at the last position.
    assert not [m for m in backend.body.modules() if isinstance(m, torch.nn.Linear) and m.out_features == vocabulary]


def test_half_precision_runs_on_the_cpu_and_stays_close(qwen3_dir, qwen3_reference) -> None:
    half = load_folder(qwen3_dir, recipe="qwen3", max_length=8192, causal=True, dtype="bfloat16")
    assert half.backend.dtype == torch.bfloat16
    scores = score_directly(half, [QUERY] * len(DOCUMENTS), DOCUMENTS).scores
    assert scores == pytest.approx(qwen3_reference.scores([QUERY] * len(DOCUMENTS), DOCUMENTS), abs=0.05)


def test_auto_dtype_is_the_checkpoints_on_cuda() -> None:
    from rerank_server.backends.torch_backend import resolve_dtype

    assert resolve_dtype("auto", "cuda", "bfloat16") == torch.bfloat16  # Qwen3 ships in bfloat16
    assert resolve_dtype("auto", "cuda:1", "float32") == torch.float16  # BGE, Gemma fp32 checkpoints: fp16
    assert resolve_dtype("auto", "cpu", "bfloat16") == torch.float32
    assert resolve_dtype("float16", "cuda", "bfloat16") == torch.float16  # RERANK_DTYPE wins
