from rerank_server.catalog import KNOWN_MODELS, canonical_id, is_valid_model_id, known_model, store_name


def test_short_names_and_ids_name_the_same_model() -> None:
    assert canonical_id("bge-reranker-base") == "BAAI/bge-reranker-base"
    assert canonical_id("BAAI/BGE-Reranker-Large") == "BAAI/bge-reranker-large"
    assert known_model("bge-reranker-v2-m3").max_length == 8192
    assert [m.max_length for m in KNOWN_MODELS] == [512, 512, 8192]


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
