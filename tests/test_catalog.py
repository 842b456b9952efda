import itertools

from rerank_server.catalog import (
    BGE_MODELS,
    KNOWN_MODELS,
    canonical_id,
    is_valid_model_id,
    known_model,
    model_id_problem,
    non_commercial,
    store_name,
)


def test_short_names_and_ids_name_the_same_model() -> None:
    assert canonical_id("bge-reranker-base") == "BAAI/bge-reranker-base"
    assert canonical_id("BAAI/BGE-Reranker-Large") == "BAAI/bge-reranker-large"
    assert canonical_id("qwen3-reranker-0.6b") == "Qwen/Qwen3-Reranker-0.6B"
    assert known_model("bge-reranker-v2-m3").max_length == 8192
    assert [m.max_length for m in BGE_MODELS] == [512, 512, 8192]


def test_the_catalogue_names_each_models_recipe() -> None:
    recipes = {m.model_id: m.recipe for m in KNOWN_MODELS}
    assert {recipes[m.model_id] for m in BGE_MODELS} == {"cross-encoder"}
    assert recipes["BAAI/bge-reranker-v2-gemma"] == "bge-gemma"
    assert {recipes[f"Qwen/Qwen3-Reranker-{size}"] for size in ("0.6B", "4B", "8B")} == {"qwen3"}
    assert known_model("Qwen3-Reranker-8B").max_length == 8192


def test_unknown_ids_are_kept_as_given() -> None:
    assert canonical_id(" cross-encoder/ms-marco-MiniLM-L-6-v2 ") == "cross-encoder/ms-marco-MiniLM-L-6-v2"
    assert known_model("cross-encoder/ms-marco-MiniLM-L-6-v2") is None


def test_store_names_are_valid_bentoml_names() -> None:
    assert store_name("BAAI/bge-reranker-base") == "baai--bge-reranker-base"
    assert store_name("bge-reranker-base") == "baai--bge-reranker-base"
    assert store_name("cross-encoder/ms-marco-MiniLM-L-6-v2") == "cross-encoder--ms-marco-minilm-l-6-v2"


def test_model_ids_reject_paths_and_urls() -> None:
    assert is_valid_model_id("my-org/my-reranker")
    assert is_valid_model_id("local-model")
    for bad in ("../../etc/passwd", "a/b/c", "https://evil.example/x", "/abs", "org/..", "", "org/"):
        assert not is_valid_model_id(bad), bad


def test_two_valid_ids_never_share_a_store_name_unless_they_differ_only_in_case() -> None:
    # The Hub's rules ('--' and '..' nowhere, no '-' or '.' at either end) leave '--' in a store name to the '/'.
    for bad in ("my-org--other", "org/a--b", "org/name.", "org/-name", "org./name", "org/na..me"):
        assert model_id_problem(bad), bad
    ids = ["my-org/other", "my-org-other", "my/org-other", "my.org/other", "My-Org/Other", "a/b", "a-b", "a_b/c"]
    for first, second in itertools.combinations(ids, 2):
        if first.lower() != second.lower():
            assert store_name(first) != store_name(second), (first, second)


def test_the_catalogue_holds_the_rerankers_of_2025_26() -> None:
    mxbai = known_model("mxbai-rerank-large-v2")
    assert (mxbai.model_id, mxbai.recipe, mxbai.max_length) == ("mixedbread-ai/mxbai-rerank-large-v2", "mxbai-v2", 8192)
    assert known_model("gte-reranker-modernbert-base").max_length == 8192
    ettin = [m for m in KNOWN_MODELS if m.model_id.startswith("cross-encoder/ettin-reranker-")]
    assert [m.short_name for m in ettin] == [
        f"ettin-reranker-{size}-v1" for size in ("17m", "32m", "68m", "150m", "400m", "1b")
    ]
    assert all(m.max_length == 7999 and m.size and m.recipe == "cross-encoder" for m in ettin)
    jina = known_model("jina-reranker-v2-base-multilingual")
    assert jina.remote_code and jina.license == "cc-by-nc-4.0" and non_commercial(jina.license), "said where chosen"
    assert known_model("gte-multilingual-reranker-base").remote_code
    assert [m.model_id for m in BGE_MODELS] == [
        "BAAI/bge-reranker-base",
        "BAAI/bge-reranker-large",
        "BAAI/bge-reranker-v2-m3",
    ]
