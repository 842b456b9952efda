"""Multimodal reranking: Qwen3-VL-Reranker scored exactly as its authors' code scores it, with images as documents or
queries, on every route that takes them.

The fixture is a tiny random Qwen3-VL with Qwen's tokenizer layout, image processor and chat template
(tests/fixture_models.py); the reference is the official `Qwen3VLReranker`, re-implemented in tests/vl_references.py
from the published code with transformers' own Qwen3-VL classes and the Pillow image processor. Token ids are compared
exactly; scores within 1e-4 at fp32, and in the same order. Images are generated here with Pillow: random pixels, so
that different images give different scores, in sizes that are resized up, down and not at all.
"""

from __future__ import annotations

import asyncio
import base64
import io
import random

import numpy as np
import pytest
from PIL import Image

from rerank_server.engine.image_memory import ImageMemory
from rerank_server.engine.passes import run_passes
from rerank_server.errors import QueueFullError
from rerank_server.importer.folder import ModelImportError
from rerank_server.importer.sources import import_from_folder
from rerank_server.models.loaded import load_folder
from rerank_server.models.store import find_reranker
from rerank_server.recipes import Content, ImageInput, TextOptions
from tests.conftest import FIXTURE_MODEL_ID, QWEN3_VL_ID, routes_client, scores_by_index, scoring_engine
from tests.vl_references import Qwen3VLRerankerReference

QUERY = "A woman playing with her dog on a beach at sunset."
INSTRUCTION = "Retrieve images or text relevant to the user's query."


def picture(height: int, width: int, seed: int, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """An image of random pixels, encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


# Resized as they are: kept (64x96), made larger (20x30 → 4 tokens at least), smaller (above 1,280 tokens), a
# transparent PNG (made RGB on white), a JPEG, a grey GIF.
IMAGES = {
    "kept": picture(64, 96, 0),
    "small": picture(20, 30, 1),
    "large": picture(1100, 1400, 2, fmt="JPEG"),
    "alpha": picture(50, 70, 3, "RGBA"),
    "jpeg": picture(90, 60, 4, fmt="JPEG"),
    "gif": picture(40, 80, 5, "L", fmt="GIF"),
}


def data_uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def long_text(words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choices("the dog runs on a beach at sunset with a woman and the waves".split(), k=words))


# Each document three ways: for the reference (PIL images), for the engine (Content), and as Jina's wire object.
DOCUMENTS = [
    ({"text": "A dog runs along the beach."}, "A dog runs along the beach."),
    ({"image": "kept"}, None),
    ({"text": "sunset over the sea", "image": "jpeg"}, None),
    ({"image": "alpha"}, None),
    ({"text": ""}, ""),
    ({"image": "large"}, None),
    ({"text": "grey", "image": "gif"}, None),
    ({"image": "small"}, None),
]


def for_reference(document: dict) -> dict:
    return {k: pil(IMAGES[v]) if k == "image" else v for k, v in document.items()}


def for_engine(document: dict):
    if "image" not in document:
        return document["text"]
    return Content(document.get("text"), (ImageInput(IMAGES[document["image"]], "documents.x.image"),))


def for_wire(document: dict) -> dict | str:
    if "image" not in document:
        return document["text"]
    return {**document, "image": data_uri(IMAGES[document["image"]])}


REFERENCE_DOCUMENTS = [for_reference(d) for d, _ in DOCUMENTS]
ENGINE_DOCUMENTS = [for_engine(d) for d, _ in DOCUMENTS]
WIRE_DOCUMENTS = [for_wire(d) for d, _ in DOCUMENTS]


@pytest.fixture(scope="module")
def reference(qwen3_vl_dir) -> Qwen3VLRerankerReference:
    return Qwen3VLRerankerReference(qwen3_vl_dir)


@pytest.fixture(scope="module")
def model(qwen3_vl_dir):
    return load_folder(qwen3_vl_dir, recipe="qwen3-vl", max_length=8192)


@pytest.fixture(scope="module")
def vl_client(stored_vl):
    with scoring_engine() as engine, routes_client(engine) as client:
        yield client


# --- Token ids and scores: the recipe against the reference ---------------------------------------------------------


def test_token_ids_are_the_references_text_image_mixed_and_image_query(model, reference) -> None:
    queries = {
        "text": (QUERY, {"text": QUERY}),
        "image": (Content(None, (ImageInput(IMAGES["kept"]),)), {"image": pil(IMAGES["kept"])}),
        "mixed": (
            Content("like this", (ImageInput(IMAGES["jpeg"]),)), {"text": "like this", "image": pil(IMAGES["jpeg"])}
        ),
    }  # fmt: skip
    for name, (query, reference_query) in queries.items():
        encoded = model.encode([query] * len(DOCUMENTS), ENGINE_DOCUMENTS, TextOptions())
        expected = reference.token_ids({"query": reference_query, "documents": REFERENCE_DOCUMENTS})
        assert encoded.input_ids == expected, name
        # Each pair's image tokens stand for its images' patches, 2x2 merged.
        for ids, images in zip(encoded.input_ids, encoded.images or [], strict=True):
            patches = sum(t * h * w for t, h, w in images.grids) if images else 0
            assert ids.count(model.recipe.image_token_id) * 4 == patches, name
    _, height, width = model.encode([QUERY], [ENGINE_DOCUMENTS[5]], TextOptions()).images[0].grids[0]
    assert 1200 < height * width // 4 <= 1280, "1100x1400 pixels are downscaled to at most 1,280 tokens"


def test_truncation_keeps_images_and_the_answer_prompt(model, reference, qwen3_vl_dir) -> None:
    """The reference cuts ordinary tokens from the end and keeps every special token (image tokens included)."""
    documents = [long_text(3000), {"text": long_text(400, 1), "image": "kept"}, long_text(20, 2)]
    engine_documents = [d if isinstance(d, str) else for_engine(d) for d in documents]
    reference_documents = [{"text": d} if isinstance(d, str) else for_reference(d) for d in documents]
    default = model.encode([QUERY] * 3, engine_documents, TextOptions()).input_ids
    assert default == reference.token_ids({"query": {"text": QUERY}, "documents": reference_documents})
    short = Qwen3VLRerankerReference.__new__(Qwen3VLRerankerReference)
    short.__dict__.update(reference.__dict__, max_length=120 - 5)
    capped = model.encode([QUERY] * 3, engine_documents, TextOptions(max_length=120)).input_ids
    assert capped == short.token_ids({"query": {"text": QUERY}, "documents": reference_documents})
    assert max(len(ids) for ids in capped) <= 120 < len(default[0])
    assert capped[1].count(model.recipe.image_token_id) == default[1].count(model.recipe.image_token_id) > 0
    huge_query = long_text(30_000, 3)  # far past the limit: the query is cut, the document's text is gone
    assert model.encode([huge_query], ["d"], TextOptions()).input_ids == reference.token_ids(
        {"query": {"text": huge_query}, "documents": [{"text": "d"}]}
    )


def test_scores_are_the_references_in_process(model, reference) -> None:
    expected = reference.process({"query": {"text": QUERY}, "documents": REFERENCE_DOCUMENTS})
    assert np.ptp(expected) > 0.05, "the fixture must separate documents for this test to mean anything"
    scores = torch_sigmoid(run_passes(model, model.encode([QUERY] * len(DOCUMENTS), ENGINE_DOCUMENTS)))
    assert scores == pytest.approx(expected, abs=1e-4)
    assert np.argsort(scores).tolist() == np.argsort(expected).tolist()


def test_document_caps_and_left_truncation_cut_the_documents_text_alone(model) -> None:
    """Cohere's max_tokens_per_doc and TEI's left side cut a document's text within what its pair leaves it, images
    and the query kept; pairs cut together are cut as they are alone (a query's room is worked out once per layout)."""
    image_query = Content("look", (ImageInput(IMAGES["kept"]),))
    queries = [QUERY, QUERY, image_query, QUERY, image_query]
    documents = [long_text(3000), Content(long_text(3000, 1), (ImageInput(IMAGES["jpeg"]),)), long_text(3000, 2),
                 long_text(3000, 3), Content(long_text(50, 4), (ImageInput(IMAGES["small"]),))]  # fmt: skip
    image = model.recipe.image_token_id
    for options in (TextOptions(max_document_tokens=40), TextOptions(side="left", max_length=300)):
        together = model.encode(queries, documents, options).input_ids
        alone = [model.encode([q], [d], options).input_ids[0] for q, d in zip(queries, documents, strict=True)]
        assert together == alone, options
        whole = model.encode(queries, documents).input_ids
        for cut, full in zip(together, whole, strict=True):
            assert len(cut) <= len(full) and cut.count(image) == full.count(image), options
        assert all(len(cut) < len(full) for cut, full in zip(together[:4], whole[:4], strict=True)), options
        assert len(set(map(len, together[:1] + together[3:4]))) == 1, "text pairs of one query get the same room"


def test_a_bf16_run_rounds_the_score_once_as_the_references_one_row_does(qwen3_vl_dir, tmp_path) -> None:
    """The reference scores through one row, W_yes - W_no. Two bf16 logits rounded apart lose up to 0.5 each when
    they are near 100 though their difference is small, as in a checkpoint whose yes and no rows share a large part."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(qwen3_vl_dir, tmp_path / "vl")
    weights = load_file(folder / "model.safetensors")
    recipe = load_folder(qwen3_vl_dir, recipe="qwen3-vl", max_length=8192).recipe
    head = recipe.last_token_head()
    shared = torch.randn(weights["lm_head.weight"].shape[1], generator=torch.Generator().manual_seed(0)) * 16
    for row in (head.positive_id, head.negative_id):
        weights["lm_head.weight"][row] += shared.to(weights["lm_head.weight"].dtype)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    exact, rounded = (load_folder(folder, recipe="qwen3-vl", max_length=8192, dtype=d) for d in ("float32", "bfloat16"))
    encoded = exact.encode([QUERY] * len(DOCUMENTS), ENGINE_DOCUMENTS)
    reference_logits = run_passes(exact, encoded)
    logits = run_passes(rounded, encoded)
    assert (logits - reference_logits).abs().max() < 0.15, (logits, reference_logits)


def torch_sigmoid(logits) -> list[float]:
    return logits.sigmoid().tolist()


def test_text_and_image_pairs_in_one_pass_score_as_they_do_alone(model) -> None:
    """The batcher packs pairs by length whatever they hold: a pass mixing image and text pairs of different lengths
    (left padding, 3-D positions per row) must give each pair its own score."""
    queries = [QUERY, Content("q", (ImageInput(IMAGES["small"]),))] * len(DOCUMENTS)
    documents = [d for d in ENGINE_DOCUMENTS for _ in range(2)]
    encoded = model.encode(queries, documents)
    together = run_passes(model, encoded, token_budget=10**7)  # one pass
    alone = [float(model.forward(encoded.select([i]))[0]) for i in range(len(encoded))]
    assert together.tolist() == pytest.approx(alone, abs=1e-4)
    in_reverse = run_passes(model, encoded.select(list(reversed(range(len(encoded))))), token_budget=10**7)
    assert list(reversed(in_reverse.tolist())) == pytest.approx(alone, abs=1e-4)


# --- The HTTP routes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("instruction", [None, INSTRUCTION])
def test_scores_are_the_references_on_every_route(vl_client, reference, instruction) -> None:
    inputs = {"query": {"text": QUERY}, "documents": REFERENCE_DOCUMENTS}
    expected = reference.process({**inputs, **({"instruction": instruction} if instruction else {})})
    tokens = sum(len(ids) for ids in reference.token_ids({**inputs, "instruction": instruction}))
    extra = {"instruction": instruction} if instruction else {}
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        body = {"model": QWEN3_VL_ID, "query": QUERY, "documents": WIRE_DOCUMENTS, **extra}
        answer = vl_client.post(path, json=body).json()
        assert answer["model"] == QWEN3_VL_ID, answer
        assert scores_by_index(answer["results"]) == pytest.approx(expected, abs=1e-4), path
        assert [r["index"] for r in answer["results"]] == sorted(range(len(expected)), key=lambda i: -expected[i])
        assert answer["usage"]["prompt_tokens"] == tokens, "usage counts the image tokens the model saw"
        echoed = {r["index"]: r["document"] for r in answer["results"]}
        assert [echoed[i] for i in range(len(DOCUMENTS))] == [
            {"text": d} if isinstance(d, str) else d for d in WIRE_DOCUMENTS
        ], "return_documents echoes what was sent"
    score = vl_client.post(
        "/score", json={"model": QWEN3_VL_ID, "text_1": QUERY, "text_2": WIRE_DOCUMENTS, **extra}
    ).json()
    assert [d["score"] for d in score["data"]] == pytest.approx(expected, abs=1e-4)


def test_image_queries_and_every_image_shape_on_the_wire(vl_client, reference) -> None:
    """An image query; Jina's bare base64; vLLM's `{content: [parts]}` as a document, as the query, and in place of
    the document list (one document per part); `/score` with an image on either side."""
    kept, jpeg = IMAGES["kept"], IMAGES["jpeg"]
    reference_documents = [{"text": "a dog"}, {"image": pil(jpeg)}, {"text": "surf", "image": pil(kept)}]
    expected = reference.process({"query": {"text": "look", "image": pil(kept)}, "documents": reference_documents})
    assert np.ptp(expected) > 0.01
    bare = base64.b64encode(kept).decode()
    jina = {
        "model": QWEN3_VL_ID, "query": {"text": "look", "image": bare},
        "documents": ["a dog", {"image": base64.b64encode(jpeg).decode()}, {"text": "surf", "image": data_uri(kept)}],
    }  # fmt: skip
    image_part = {"type": "image_url", "image_url": {"url": data_uri(kept)}}
    vllm = {
        "model": QWEN3_VL_ID,
        "query": {"content": [image_part, {"type": "text", "text": "look"}]},
        "documents": [
            "a dog",
            {"content": [{"type": "image_url", "image_url": {"url": data_uri(jpeg, "jpeg")}}]},
            {"content": [{"type": "text", "text": "surf"}, image_part]},  # images go first, as the reference puts them
        ],
    }
    for body in (jina, vllm):
        answer = vl_client.post("/v1/rerank", json=body).json()
        assert scores_by_index(answer["results"]) == pytest.approx(expected, abs=1e-4), answer
    assert vl_client.post("/v1/rerank", json={**vllm, "return_documents": True}).json()["results"][0]["document"]
    one_per_part = {
        "model": QWEN3_VL_ID, "query": {"image": bare},
        "documents": {"content": [{"type": "text", "text": "a dog"}, image_part]},
    }  # fmt: skip
    expected = reference.process(
        {"query": {"image": pil(kept)}, "documents": [{"text": "a dog"}, {"image": pil(kept)}]}
    )
    answer = vl_client.post("/v1/rerank", json=one_per_part).json()
    assert scores_by_index(answer["results"]) == pytest.approx(expected, abs=1e-4)
    assert {r["index"]: r["document"] for r in answer["results"]}[1] == {"multi_modal": image_part}
    score = vl_client.post(
        "/score", json={"model": QWEN3_VL_ID, "text_1": {"content": [image_part]}, "text_2": ["a dog", {"image": bare}]}
    ).json()
    assert [d["score"] for d in score["data"]] == pytest.approx(expected, abs=1e-4)


def test_text_only_requests_to_a_vl_model_and_image_requests_to_a_text_model(vl_client, reference) -> None:
    texts = ["A dog runs along the beach.", "Stock prices fell.", ""]
    expected = reference.process({"query": {"text": QUERY}, "documents": [{"text": t} for t in texts]})
    answer = vl_client.post("/v1/rerank", json={"model": QWEN3_VL_ID, "query": QUERY, "documents": texts}).json()
    assert scores_by_index(answer["results"]) == pytest.approx(expected, abs=1e-4)
    tei = vl_client.post("/rerank", json={"model": QWEN3_VL_ID, "query": QUERY, "texts": texts}).json()
    assert scores_by_index(tei, "score") == pytest.approx(expected, abs=1e-4)
    for body, field in (
        ({"query": QUERY, "documents": ["a", {"image": data_uri(IMAGES["kept"])}]}, "documents.1.image"),
        ({"query": {"image": data_uri(IMAGES["kept"])}, "documents": ["a"]}, "query.image"),
    ):
        response = vl_client.post("/v1/rerank", json={"model": FIXTURE_MODEL_ID, **body})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert FIXTURE_MODEL_ID in error["message"] and "text only" in error["message"]
        assert error["param"] == field
    chunked = {"model": QWEN3_VL_ID, "query": QUERY, "documents": [long_text(300)], "max_chunks_per_doc": 3}
    windows = vl_client.post("/v1/rerank", json={**chunked, "truncate_prompt_tokens": 200}).json()
    whole = vl_client.post("/v1/rerank", json={**chunked, "max_chunks_per_doc": 1, "truncate_prompt_tokens": 200})
    assert windows["usage"]["prompt_tokens"] > whole.json()["usage"]["prompt_tokens"], "text pairs are chunked"
    # A `{text}` object without an image still reaches a text model as text (Cohere v1).
    ok = vl_client.post("/v1/rerank", json={"model": FIXTURE_MODEL_ID, "query": "q", "documents": [{"text": "a"}]})
    assert ok.status_code == 200 and ok.json()["results"][0]["document"] == {"text": "a"}


def test_cache_keys_tell_texts_images_and_their_absence_apart() -> None:
    from rerank_server.engine.cache import cache_key

    image, same_bytes, other = (ImageInput(IMAGES["kept"]), ImageInput(bytes(IMAGES["kept"])), ImageInput(b"x"))
    keys = [
        cache_key("v", "q", "d"),
        cache_key("v", "q", Content("d", ())),
        cache_key("v", "q", Content(None, (image,))),
        cache_key("v", "q", Content("", (image,))),
        cache_key("v", "q", Content(None, (other,))),
        cache_key("v", "q", Content(None, (image, image))),
        cache_key("v", Content("q", (image,)), "d"),
    ]
    assert len(set(keys)) == len(keys)
    assert cache_key("v", "q", Content(None, (same_bytes,))) == keys[2], "keyed on the bytes, not the object"


def test_the_result_cache_is_keyed_on_the_image_bytes(stored_vl) -> None:
    body = {"model": QWEN3_VL_ID, "query": QUERY, "documents": [{"text": "t", "image": data_uri(IMAGES["kept"])}]}
    other = {**body, "documents": [{"text": "t", "image": data_uri(IMAGES["jpeg"])}]}
    with scoring_engine(cache_size=100) as engine, routes_client(engine) as client:
        first = client.post("/v1/rerank", json=body).json()
        assert len(engine.cache) == 1
        again = client.post("/v1/rerank", json=body).json()
        assert len(engine.cache) == 1 and again["results"] == first["results"], "the same bytes: a hit"
        changed = client.post("/v1/rerank", json=other).json()
        assert len(engine.cache) == 2, "the same text with another image: a miss"
        assert changed["results"][0]["relevance_score"] != first["results"][0]["relevance_score"]
        assert changed["usage"] == first["usage"] or changed["usage"]["prompt_tokens"] > 0
        assert engine.image_memory.held == 0, "reservations are given back once scored"


def test_concurrent_requests_for_a_vl_and_a_text_model(stored_vl, reference, reference_encoder) -> None:
    """Through one engine: image, text and mixed requests to the VL model and text requests to a cross-encoder at
    once; the batcher merges pairs of one model only, and each answer is the reference's."""
    from rerank_server.api.pairs import score_pairs  # noqa: F401 - the engine is shared by every entry point

    image_query = Content("look", (ImageInput(IMAGES["kept"]),))
    jobs = {
        "vl-mixed": (QWEN3_VL_ID, QUERY, ENGINE_DOCUMENTS),
        "vl-text": (QWEN3_VL_ID, QUERY, ["a dog", "the sea"]),
        "vl-image-query": (QWEN3_VL_ID, image_query, ENGINE_DOCUMENTS[:4]),
        "cross-encoder": (FIXTURE_MODEL_ID, QUERY, ["a dog", "the sea", "stocks"]),
    }
    expected = {
        "vl-mixed": reference.process({"query": {"text": QUERY}, "documents": REFERENCE_DOCUMENTS}),
        "vl-text": reference.process({"query": {"text": QUERY}, "documents": [{"text": "a dog"}, {"text": "the sea"}]}),
        "vl-image-query": reference.process(
            {"query": {"text": "look", "image": pil(IMAGES["kept"])}, "documents": REFERENCE_DOCUMENTS[:4]}
        ),
        "cross-encoder": reference_encoder.predict([(QUERY, d) for d in ("a dog", "the sea", "stocks")]).tolist(),
    }
    with scoring_engine() as engine:

        async def burst() -> list[tuple[str, list[float]]]:
            async def one(name: str) -> tuple[str, list[float]]:
                model_id, query, documents = jobs[name]
                scored = await engine.score(model_id, [query] * len(documents), documents)
                return name, scored.scores

            return await asyncio.gather(*(one(name) for name in list(jobs) * 3))

        answers = asyncio.run(burst())
        assert engine.image_memory.held == 0
    for name, scores in answers:
        assert scores == pytest.approx(expected[name], abs=1e-4), name


# --- Bounds on images -------------------------------------------------------------------------------------------------


def test_image_memory_is_reserved_and_given_back() -> None:
    memory = ImageMemory(100)
    release = memory.reserve(80)
    with pytest.raises(QueueFullError, match="RERANK_MAX_IMAGE_MEMORY_MB"):
        memory.reserve(30)
    release()
    release()  # twice releases once
    assert memory.held == 0
    alone = memory.reserve(500)  # larger than the bound, but alone: taken
    assert memory.held == 500
    alone()


def test_a_request_over_the_image_memory_bound_is_a_429_when_others_hold_it(stored_vl) -> None:
    body = {"model": QWEN3_VL_ID, "query": QUERY, "documents": [{"image": data_uri(IMAGES["kept"])}]}
    with scoring_engine(max_image_memory_mb=1) as engine, routes_client(engine) as client:
        holding = engine.image_memory.reserve(2**20)  # another request's images
        refused = client.post("/v1/rerank", json=body)
        assert refused.status_code == 429 and "RERANK_MAX_IMAGE_MEMORY_MB" in refused.text
        holding()
        assert client.post("/v1/rerank", json=body).status_code == 200
        assert engine.image_memory.held == 0


# --- Import -----------------------------------------------------------------------------------------------------------


def test_a_vl_checkpoint_imports_with_its_image_processor_and_template(stored_vl, qwen3_vl_dir) -> None:
    stored = find_reranker("qwen3-vl-reranker-2b")
    assert (stored.model_id, stored.recipe, stored.max_length) == (QWEN3_VL_ID, "qwen3-vl", 8192)
    assert stored.architecture == "Qwen3VLForConditionalGeneration"
    assert {"preprocessor_config.json", "chat_template.json", "tokenizer.json"} <= {
        p.name for p in stored.path.iterdir()
    }


def test_a_vl_finetune_needs_its_recipe_named_and_cpu_runtimes_refuse_it(qwen3_vl_dir, tmp_path) -> None:
    import shutil

    folder = shutil.copytree(qwen3_vl_dir, tmp_path / "vl-finetune")
    with pytest.raises(ModelImportError, match=r"name one with --recipe \(qwen3-vl\)"):
        import_from_folder("my-org/vl-finetune", folder)
    with pytest.raises(ModelImportError, match="the qwen3 recipe cannot score a vision-language model"):
        import_from_folder("my-org/vl-finetune", folder, _options(recipe="qwen3"))
    with pytest.raises(ModelImportError) as refused:
        import_from_folder(QWEN3_VL_ID, folder, _options(backend="openvino-int8"))
    assert "\n" not in str(refused.value) and "runs cross-encoders only" in str(refused.value)
    stored = import_from_folder("my-org/vl-finetune", folder, _options(recipe="qwen3-vl")).stored
    assert stored.recipe == "qwen3-vl"
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ModelImportError, match="no image processor"):
        import_from_folder("my-org/vl-finetune-2", folder, _options(recipe="qwen3-vl"))


def test_import_by_id_from_the_hub_keeps_the_image_processor_and_template(qwen3_vl_dir, tmp_path) -> None:
    """`import_models.py Qwen/Qwen3-VL-Reranker-8B` through a loopback Hub mirror: the recipe comes from the id, the
    download takes the processor's files, and the import's test run scores a pair."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT
    from tests.fake_hub import fake_hub

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    with fake_hub({"Qwen/Qwen3-VL-Reranker-8B": qwen3_vl_dir}) as (endpoint, seen):
        env["HF_ENDPOINT"] = endpoint
        run = subprocess.run(
            [sys.executable, "import_models.py", "Qwen/Qwen3-VL-Reranker-8B", "--models-dir", str(tmp_path)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    stored = find_reranker("Qwen/Qwen3-VL-Reranker-8B")
    assert (stored.recipe, stored.source) == ("qwen3-vl", f"hub:{endpoint}")
    assert (stored.path / "preprocessor_config.json").is_file() and (stored.path / "chat_template.json").is_file()
    assert any(path.endswith("preprocessor_config.json") for path in seen)


def _options(**values):
    from rerank_server.importer.commit import ImportOptions

    return ImportOptions(**values)
