"""Listwise rerankers (jina-reranker-v3 and v3.5) against an independent re-implementation of the published
`rerank()` (tests/listwise_reference.py), on tiny random fixtures laid out as the published checkpoints are
(tests/fixture_listwise.py): token ids equal, cosines within 1e-4 in float32, order identical; the API's decisions
(one list per request, the passes header, the cache keyed by the list, refusals naming their field). One in-process
engine serves every test of the module, with a cross-encoder beside the listwise models."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import transformers

from rerank_server.engine.passes import run_passes
from rerank_server.importer.commit import ImportOptions
from rerank_server.importer.folder import ModelImportError, inspect_folder
from rerank_server.importer.sources import import_from_folder
from rerank_server.models.loaded import load_folder, load_tokenizer
from rerank_server.recipes import RECIPES, EncodedPairs, RecipeError, TextOptions
from tests.conftest import FIXTURE_MODEL_ID, routes_client, scores_by_index, scoring_engine
from tests.fixture_listwise import build_jina_reranker
from tests.fixture_models import _CORPUS_WORDS
from tests.listwise_reference import V3, V35, Reference

V3_ID, V35_ID = "jinaai/jina-reranker-v3", "jinaai/jina-reranker-v3.5"
# Small contexts, so that the published length rule splits lists of a few long documents: v3 closes a pass once
# 5,000 less twice the query and the documents so far is at most 2,048; v3.5 at most 8,192 of 9,000.
V3_CONTEXT, V35_CONTEXT = 5000, 9000
QUERY = "what is a panda bear and where does it live"
TOLERANCE = 1e-4


def words(count: int, seed: int) -> str:
    """`count` corpus words, the same for the same seed."""
    rng = random.Random(seed)
    return " ".join(rng.choices(_CORPUS_WORDS, k=count))


SHORT = [words(12, i) for i in range(5)]
CHINESE = ["熊猫是中国特有的熊", "机器学习是人工智能的一个分支", "北京是中国的首都", "panda bear China"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("listwise")
    return {
        V3_ID: build_jina_reranker(root / "v3", model_max_length=V3_CONTEXT),
        V35_ID: build_jina_reranker(root / "v35", version="v3.5", model_max_length=V35_CONTEXT, seed=1),
    }


@pytest.fixture(scope="module")
def stored(folders: dict[str, Path], stored_fixture) -> dict[str, str]:
    trusted = ImportOptions(trust_remote_code=True)
    return {model: import_from_folder(model, folder, trusted).stored.recipe for model, folder in folders.items()}


@pytest.fixture(scope="module")
def references(folders: dict[str, Path]) -> dict[str, Reference]:
    return {V3_ID: Reference(folders[V3_ID], V3), V35_ID: Reference(folders[V35_ID], V35)}


@pytest.fixture(scope="module")
def engine(stored):
    # The pass bound at the tokenizers' own contexts: the published split rule exactly (the bound is tested apart).
    with scoring_engine(cache_size=10_000, max_list_documents=140, max_list_pass_tokens=V35_CONTEXT) as module_engine:
        yield module_engine


@pytest.fixture(scope="module")
def client(engine):
    with routes_client(engine) as test_client:
        yield test_client


def rerank(client, model: str, documents: list[str], **extra) -> tuple[list[dict], dict]:
    """A /v1/rerank answer of QUERY against `documents` that must succeed: its results and headers."""
    response = client.post("/v1/rerank", json={"model": model, "query": QUERY, "documents": documents, **extra})
    assert response.status_code == 200, response.text
    return response.json()["results"], dict(response.headers)


def check_against_reference(client, references, folders, model: str, documents: list[str], instruction=None) -> int:
    """The server's pass ids, scores and order equal the reference's; the number of passes."""
    reference = references[model]
    recipe = RECIPES[{V3_ID: "jina-v3", V35_ID: "jina-v3.5"}[model]](load_tokenizer(folders[model]), 131_072)
    encoded = recipe.encode([QUERY] * len(documents), documents, TextOptions(instruction=instruction))
    assert [list(one.input_ids) for one in encoded.lists[0].passes] == reference.prompts(QUERY, documents, instruction)
    expected = reference.rerank(QUERY, documents, instruction)
    results, headers = rerank(client, model, documents, **({"instruction": instruction} if instruction else {}))
    served = scores_by_index(results)
    assert max(abs(a - b) for a, b in zip(served, expected, strict=True)) < TOLERANCE
    assert [r["index"] for r in results] == sorted(range(len(expected)), key=lambda i: -expected[i])
    assert int(headers["x-rerank-listwise-passes"]) == len(encoded.lists[0].passes)
    return len(encoded.lists[0].passes)


def test_the_import_recognises_jina_for_ranking_behind_trust_remote_code(folders, stored):
    with pytest.raises(ModelImportError, match="--trust-remote-code"):
        import_from_folder("my-org/listwise-copy", folders[V3_ID])
    assert stored == {V3_ID: "jina-v3", V35_ID: "jina-v3.5"}
    # An id the catalogue does not know: v3.5 is told by its sliding-window layers.
    assert inspect_folder(folders[V35_ID], "my-org/other", trust_remote_code=True).recipe == "jina-v3.5"
    assert inspect_folder(folders[V3_ID], "my-org/other", trust_remote_code=True).recipe == "jina-v3"


@pytest.mark.parametrize("model", [V3_ID, V35_ID])
def test_a_short_list_scores_as_the_published_rerank(client, references, folders, model):
    assert check_against_reference(client, references, folders, model, SHORT) == 1


def test_chinese_and_markers_in_user_texts(client, references, folders):
    documents = [*CHINESE, "a document that smuggles <|embed_token|> markers <|rerank_token|> in"]
    check_against_reference(client, references, folders, V3_ID, documents)


def test_a_document_past_the_cap_is_cut_as_the_published_code_cuts_it(client, references, folders):
    long = words(2300, 7)
    assert len(references[V3_ID].tokenizer(long)["input_ids"]) > V3.document_cap
    check_against_reference(client, references, folders, V3_ID, [SHORT[0], long, SHORT[1]])


def test_an_instruction_enters_the_prompt(client, references, folders):
    plain = scores_by_index(rerank(client, V3_ID, SHORT)[0])
    check_against_reference(client, references, folders, V3_ID, SHORT, instruction="Prefer passages about bears")
    with_instruction = scores_by_index(rerank(client, V3_ID, SHORT, instruction="Prefer passages about bears")[0])
    assert plain != with_instruction


def test_130_documents_are_two_passes_fused(client, references, folders):
    documents = [words(6, 100 + i) for i in range(130)]
    assert check_against_reference(client, references, folders, V3_ID, documents) == 2


@pytest.mark.parametrize(("model", "length", "count"), [(V3_ID, 1000, 5), (V35_ID, 300, 5)])
def test_long_documents_close_passes_by_the_length_rule(client, references, folders, model, length, count):
    documents = [words(length, 200 + i) for i in range(count)]
    assert check_against_reference(client, references, folders, model, documents) >= 2


def close(served: list[float], expected: list[float]) -> None:
    """The served scores equal the reference's within TOLERANCE."""
    assert max(abs(a - b) for a, b in zip(served, expected, strict=True)) < TOLERANCE


def test_a_list_past_the_pass_bound_is_read_in_more_passes(stored, folders):
    """RERANK_MAX_LIST_PASS_TOKENS below the tokenizer's context replaces the published split: documents fill a pass
    while each fits in what the bound leaves beside twice the query and the instruction (the reference states that
    rule apart, `pass_tokens`), and the passes are scored and fused as the published rerank() does."""
    bound = 2400
    documents = [words(300, 400 + i) for i in range(10)]  # 300 tokens each (the fixture's words are one token)
    assert len(Reference(folders[V3_ID], V3).blocks(QUERY, documents)) == 1  # within the folder's context: one pass
    reference = Reference(folders[V3_ID], V3, pass_tokens=bound)
    # 2,400 less twice the query's 19 tokens holds 7 documents; the published rule with model_max_length = 2,400
    # would close a pass after every second one (room at most the cap of 2,048).
    assert reference.blocks(QUERY, documents) == [list(range(7)), [7, 8, 9]]
    # The instruction, which rerank() neither caps nor counts, counts against the bound: 700 tokens leave room for 5.
    instruction = words(700, 3)
    assert len(instruction) <= 4096  # the wire's own limit on an instruction
    assert reference.blocks(QUERY, documents, instruction) == [list(range(5)), list(range(5, 10))]
    with scoring_engine(max_list_pass_tokens=bound) as bounded, routes_client(bounded) as client:
        results, headers = rerank(client, V3_ID, documents)
        assert int(headers["x-rerank-listwise-passes"]) == 2
        close(scores_by_index(results), reference.rerank(QUERY, documents))
        results, headers = rerank(client, V3_ID, documents, instruction=instruction)
        assert int(headers["x-rerank-listwise-passes"]) == 2
        close(scores_by_index(results), reference.rerank(QUERY, documents, instruction))


def test_a_document_longer_than_a_bounded_pass_is_cut_to_the_room(stored, folders):
    """Under the bound a document longer than what a pass holds beside the query (twice) and the instruction is cut
    to that room as the published code cuts at a cap (its decoded tokens), not refused; TEI's `truncate: false` is
    refused with TEI's 413; only a query and instruction that leave no room at all are a 400 naming the field."""
    bound, query, long = 2400, words(700, 1), words(2300, 2)
    published = Reference(folders[V3_ID], V3)
    tokenizer = published.tokenizer
    query_ids = tokenizer(query)["input_ids"]
    room = bound - 2 * 512  # the query at its cap of 512, twice in the prompt: 1,376 tokens left for a document
    assert len(query_ids) > 512 and len(tokenizer(long)["input_ids"]) > V3.document_cap > room
    cut = tokenizer.decode(tokenizer(long)["input_ids"][:room])
    with scoring_engine(max_list_pass_tokens=bound) as bounded, routes_client(bounded) as client:
        response = client.post("/v1/rerank", json={"model": V3_ID, "query": query, "documents": [long]})
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["prompt_tokens"] == len(published.prompts(query, [cut])[0])
        close(scores_by_index(response.json()["results"]), published.rerank(query, [cut]))
        # In a list: the cut document fills a pass of its own; the bounded reference cuts and splits alike.
        documents = [SHORT[0], long, SHORT[1]]
        response = client.post("/v1/rerank", json={"model": V3_ID, "query": query, "documents": documents})
        assert response.status_code == 200, response.text
        assert response.headers["x-rerank-listwise-passes"] == "3"
        bounded_reference = Reference(folders[V3_ID], V3, pass_tokens=bound)
        close(scores_by_index(response.json()["results"]), bounded_reference.rerank(query, documents))
        tei = client.post("/rerank", json={"model": V3_ID, "query": query, "texts": [long], "truncate": False})
        assert tei.status_code == 413 and f"`inputs` must have less than {room} tokens" in tei.text, tei.text
    # No room at all (the bound's floor is 1,024): the field that takes it is named, with the limit.
    recipe = RECIPES["jina-v3"](load_tokenizer(folders[V3_ID]), 131_072, pass_tokens=1024)
    with pytest.raises(RecipeError, match="RERANK_MAX_LIST_PASS_TOKENS") as refused:
        recipe.encode([query], [SHORT[0]], TextOptions())
    assert refused.value.param == "query" and "1024" in refused.value.message
    with pytest.raises(RecipeError, match="RERANK_MAX_LIST_PASS_TOKENS") as refused:
        recipe.encode([QUERY], [SHORT[0]], TextOptions(instruction=words(1000, 5)))
    assert refused.value.param == "instruction"
    assert len(recipe.encode([QUERY], [SHORT[0]], TextOptions(instruction=words(900, 5))).lists[0].passes) == 1


def test_v35_lists_of_short_documents_are_one_pass_under_the_cpu_bound(stored, references):
    """On a CPU the bound (8,192) is v3.5's document cap: the published rule, room at most the cap, would read every
    document in a pass of its own; by the documents' real lengths 20 short ones are one pass, the published one."""
    documents = [words(12, 500 + i) for i in range(20)]
    assert len(references[V35_ID].blocks(QUERY, documents)) == 1
    with scoring_engine(device="cpu") as cpu, routes_client(cpu) as client:
        results, headers = rerank(client, V35_ID, documents)
    assert headers["x-rerank-listwise-passes"] == "1"
    close(scores_by_index(results), references[V35_ID].rerank(QUERY, documents))


def test_progress_is_reported_after_each_pass_of_a_list(stored, folders):
    """The batcher's stall watch (/livez) sees every pass: a list of several passes is one forward call, which calls
    `on_pass` after each of its passes, not once for the list."""
    model = load_folder(folders[V3_ID], recipe="jina-v3", max_length=131_072, list_pass_tokens=2400)
    try:
        lists = [
            model.encode([QUERY] * 10, [words(300, 400 + i) for i in range(10)]),  # 2 passes
            model.encode([QUERY] * 3, SHORT[:3]),  # 1 pass
            model.encode([QUERY] * 8, [words(1000, 600 + i) for i in range(8)]),  # 2 a pass: 4 passes
        ]
        assert [len(encoded.lists[0].passes) for encoded in lists] == [2, 1, 4]
        calls: list[int] = []
        run_passes(model, EncodedPairs.concat(lists), on_pass=lambda: calls.append(1))
        assert len(calls) == 7
    finally:
        model.release()


def test_the_pass_bound_is_smaller_on_a_cpu_than_on_a_gpu(stored):
    """Unset, RERANK_MAX_LIST_PASS_TOKENS is 8,192 on a CPU: a 32,768-token pass would take minutes on a few cores,
    longer than the stall timeout /livez allows one pass."""
    from rerank_server.models.registry import ModelRegistry
    from rerank_server.settings import Settings

    model = ModelRegistry(Settings(default_model=V35_ID, device="cpu")).get(V35_ID)
    try:
        assert model.recipe.pass_tokens == 8192 and model.recipe.context == 8192 < V35_CONTEXT
    finally:
        model.release()


def test_v35_reads_with_its_sliding_window_layers(references, folders):
    """The window changes the scores (the fixture's is 16 tokens): the server cannot ignore it and still pass."""
    config = transformers.Qwen3Config.from_pretrained(folders[V35_ID])
    config.layer_types = ["full_attention"] * config.num_hidden_layers
    global_only = Reference(folders[V35_ID], V35, config=config)
    windowed = references[V35_ID].rerank(QUERY, SHORT)
    assert max(abs(a - b) for a, b in zip(windowed, global_only.rerank(QUERY, SHORT), strict=True)) > 1e-3


def test_top_n_documents_usage_and_max_tokens_per_doc(client, references):
    full, _ = rerank(client, V3_ID, SHORT)
    response = client.post(
        "/v1/rerank", json={"model": V3_ID, "query": QUERY, "documents": SHORT, "top_n": 2, "return_documents": True}
    )
    body = response.json()
    assert [r["index"] for r in body["results"]] == [r["index"] for r in full[:2]]
    assert body["results"][0]["document"]["text"] == SHORT[full[0]["index"]]
    reference = references[V3_ID]
    prompt_tokens = sum(len(ids) for ids in reference.prompts(QUERY, SHORT))
    assert body["usage"]["prompt_tokens"] == prompt_tokens  # every pass's tokens, prompt included
    # max_tokens_per_doc below the model's cap wins: the documents are read as their first 3 tokens.
    cut, _ = rerank(client, V3_ID, SHORT, max_tokens_per_doc=3)
    firsts = [reference.tokenizer.decode(reference.tokenizer(d)["input_ids"][:3]) for d in SHORT]
    assert max(abs(a - b) for a, b in zip(scores_by_index(cut), reference.rerank(QUERY, firsts), strict=True)) < 1e-4
    cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert cards[V3_ID]["score"]["kind"] == "cosine"
    assert cards[V3_ID]["remote_code"] is False  # its code is stored with it, never run


def test_the_cache_keys_on_the_whole_list_and_its_order(client, engine, references):
    documents = [words(8, 300 + i) for i in range(4)]
    first, headers = rerank(client, V3_ID, documents)
    entries = len(engine.cache)
    again, again_headers = rerank(client, V3_ID, documents)
    assert again == first and len(engine.cache) == entries and again_headers["x-rerank-listwise-passes"] == "1"
    reordered = documents[::-1]
    served = scores_by_index(rerank(client, V3_ID, reordered)[0])
    expected = references[V3_ID].rerank(QUERY, reordered)
    assert max(abs(a - b) for a, b in zip(served, expected, strict=True)) < TOLERANCE
    assert abs(served[0] - scores_by_index(first)[3]) > 1e-6  # the same document, another list: another score


def test_score_is_one_list_for_one_query_and_each_pair_alone_pairwise(client, engine, references):
    from rerank_server.api.pairs import score_pairs
    from rerank_server.api.wire import PairToScore

    one = client.post("/score", json={"model": V3_ID, "queries": QUERY, "documents": SHORT}).json()
    assert [d["score"] for d in one["data"]] == pytest.approx(references[V3_ID].rerank(QUERY, SHORT), abs=TOLERANCE)
    queries = [QUERY, "capital of France", QUERY]
    pairwise = client.post("/score", json={"model": V3_ID, "queries": queries, "documents": SHORT[:3]})
    assert pairwise.status_code == 200, pairwise.text
    alone = [references[V3_ID].rerank(q, [d])[0] for q, d in zip(queries, SHORT[:3], strict=True)]
    assert [d["score"] for d in pairwise.json()["data"]] == pytest.approx(alone, abs=TOLERANCE)
    pairs = [PairToScore(model=V3_ID, query=q, document=d) for q, d in zip(queries, SHORT[:3], strict=True)]
    results = asyncio.run(score_pairs(engine, pairs))
    assert [r.score for r in results] == pytest.approx(alone, abs=TOLERANCE)


@pytest.mark.parametrize(
    ("path", "body", "field", "status"),
    [
        ("/v1/rerank", {"documents": ["d"] * 141}, "documents", 400),
        ("/rerank", {"texts": ["d"] * 141}, "texts", 422),
        ("/score", {"queries": QUERY, "items": ["d"] * 141}, "items", 400),
        ("/v1/rerank", {"documents": SHORT, "truncate_prompt_tokens": 100}, "truncate_prompt_tokens", 400),
        ("/v1/rerank", {"documents": SHORT, "max_chunks_per_doc": 4}, "max_chunks_per_doc", 400),
        ("/rerank", {"texts": [words(2300, 9)], "truncate": False}, "inputs", 413),
    ],
)
def test_each_refusal_is_a_400_naming_its_field(client, path, body, field, status):
    """A TEI body gets TEI's own statuses and error shape: 422 for a refused input, 413 for one over the limit with
    `truncate: false` (TEI's words: "`inputs` must have less than N tokens")."""
    response = client.post(path, json={"model": V3_ID, "query": QUERY, **body})
    assert response.status_code == status, response.text
    assert f"`{field}`" in response.text or f"'{field}'" in response.text or f'"{field}"' in response.text


def test_concurrent_mixed_requests_equal_their_sequential_answers(stored):
    """On an engine without the result cache (the module's would answer the concurrent requests from the sequential
    ones' entries): listwise lists and cross-encoder pairs scored together by the batcher equal their answers alone."""
    requests = [
        {"model": V3_ID if i % 2 == 0 else FIXTURE_MODEL_ID, "query": f"{QUERY} {i}", "documents": SHORT[: 3 + i % 3]}
        for i in range(8)
    ]
    with scoring_engine(max_list_pass_tokens=V35_CONTEXT) as uncached, routes_client(uncached) as client:
        assert uncached.cache is None
        sequential = [client.post("/v1/rerank", json=body).json()["results"] for body in requests]
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(lambda body: client.post("/v1/rerank", json=body).json()["results"], requests))
    for alone, together in zip(sequential, concurrent, strict=True):
        assert [r["index"] for r in together] == [r["index"] for r in alone]
        assert scores_by_index(together) == pytest.approx(scores_by_index(alone), abs=1e-6)


def test_a_load_reports_only_what_does_not_match(tmp_path, capfd, caplog) -> None:
    """The projector is read apart from the backbone's checkpoint: transformers' load report would call it unexpected at
    every load. It says nothing then, and a real mismatch is still one warning line."""
    import torch
    from safetensors.torch import load_file, save_file

    from rerank_server.backends.listwise import ListwiseBackbone

    folder = build_jina_reranker(tmp_path / "v3")
    ListwiseBackbone(folder, device="cpu", dtype=torch.float32)
    assert "LOAD REPORT" not in capfd.readouterr().err and not caplog.records
    state = load_file(folder / "model.safetensors")
    del state["model.norm.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    ListwiseBackbone(folder, device="cpu", dtype=torch.float32)
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 1 and "norm.weight initialised at random, nothing not used" in warned[0]
