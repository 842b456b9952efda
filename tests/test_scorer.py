"""The scoring hot path against sentence-transformers' CrossEncoder on the same weights."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from rerank_server.backends.torch_backend import resolve_device, resolve_dtype
from rerank_server.engine.passes import plan_passes, score_directly
from rerank_server.models.loaded import LoadedReranker, load_folder
from tests.conftest import REPO_ROOT

QUERY = "what is machine learning?"
WORDS = "machine learning models learn patterns from data while python programs run on computers".split()


def mixed_documents(count: int, seed: int = 1) -> list[str]:
    """Documents from a few tokens up to far beyond 512, so truncation and length packing are exercised."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.choice([0, 3, 20, 90, 300, 700]))) for _ in range(count)]


@pytest.fixture(scope="module")
def scorer(fixture_model_dir) -> LoadedReranker:
    return load_folder(fixture_model_dir, max_length=512, device="cpu", dtype="float32")


def test_scores_equal_the_reference_cross_encoder(scorer, reference_encoder) -> None:
    documents = mixed_documents(40) + ["深度学习使用多层神经网络", "", "Python is a programming language"]
    scored = score_directly(scorer, [QUERY] * len(documents), documents)
    reference = reference_encoder.predict([(QUERY, d) for d in documents])
    np.testing.assert_allclose(scored.scores, reference, atol=1e-5, rtol=0)
    assert np.ptp(reference) > 0.3, "the fixture model must separate documents for this test to mean anything"
    logits = np.log(np.array(scored.scores) / (1 - np.array(scored.scores)))
    np.testing.assert_allclose(scored.logits, logits, atol=1e-3)


def test_token_counts_are_what_the_model_saw(scorer, reference_encoder) -> None:
    documents = ["short", " ".join(["word"] * 2000)]
    scored = score_directly(scorer, [QUERY, QUERY], documents)
    tokenizer = reference_encoder.tokenizer
    expected = [len(tokenizer(QUERY, d, truncation=True, max_length=512)["input_ids"]) for d in documents]
    assert scored.tokens == expected
    assert scored.tokens[1] == 512


def test_an_empty_call_scores_nothing(scorer) -> None:
    assert score_directly(scorer, [], []).scores == []


@pytest.mark.parametrize("budget", [1, 64, 1000, 10**6])
def test_packing_keeps_every_pair_once_and_respects_the_budget(budget: int) -> None:
    lengths = [random.Random(budget).randint(1, 300) for _ in range(257)]
    batches = list(plan_passes(lengths, budget))
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        padded = max(lengths[i] for i in batch) * len(batch)
        assert padded <= budget or len(batch) == 1
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(flat, reverse=True), "pairs go longest first so each batch pads to its first pair"


def test_half_precision_runs_on_cpu_and_stays_close(fixture_model_dir, scorer) -> None:
    half = load_folder(fixture_model_dir, max_length=512, device="cpu", dtype="bfloat16")
    assert next(half.backend.model.parameters()).dtype == torch.bfloat16
    documents = mixed_documents(12, seed=3)
    full = score_directly(scorer, [QUERY] * 12, documents).scores
    reduced = score_directly(half, [QUERY] * 12, documents).scores
    assert all(isinstance(s, float) for s in reduced)
    np.testing.assert_allclose(reduced, full, atol=0.05)


def test_device_and_dtype_defaults() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cuda") == torch.bfloat16


def test_huge_documents_are_cut_before_tokenizing_with_the_same_score(scorer, reference_encoder) -> None:
    huge = " ".join(WORDS * 20_000)  # ~1.6 million characters
    scored = score_directly(scorer, [QUERY, QUERY], [huge, "short"])
    reference = reference_encoder.predict([(QUERY, huge), (QUERY, "short")])
    np.testing.assert_allclose(scored.scores, reference, atol=1e-5)
    assert scored.tokens[0] == 512


# Texts that a characters-per-token cut gets wrong: whitespace and zero-width characters make no tokens, and a word
# of over 100 characters is one [UNK] (scraped HTML and Markdown with indentation or inline base64 look like this).
SENTENCE = "Machine learning models learn patterns from data."
HARD_DOCUMENTS = [
    " " * 70_000 + SENTENCE,
    "\u200b" * 70_000 + " " + SENTENCE,
    " ".join(["x" * 200] * 400) + " " + SENTENCE,
    "\n\n".join(["    " * 30 + "<div>"] * 3000) + SENTENCE,
    SENTENCE + " " * 70_000,
]


def test_long_texts_score_exactly_as_the_reference_whatever_they_are_made_of(client, reference_encoder) -> None:
    response = client.post("/v1/rerank", json={"query": QUERY, "documents": HARD_DOCUMENTS}).json()
    reference = reference_encoder.predict([(QUERY, d) for d in HARD_DOCUMENTS])
    for result in response["results"]:
        assert result["relevance_score"] == pytest.approx(float(reference[result["index"]]), abs=1e-5), result["index"]
    tokenizer = reference_encoder.tokenizer
    tokens = sum(len(tokenizer(QUERY, d, truncation=True, max_length=512)["input_ids"]) for d in HARD_DOCUMENTS)
    assert response["usage"]["prompt_tokens"] == tokens


def _random_long_text(rng: random.Random, words: int) -> str:
    pieces = []
    for _ in range(words):
        kind = rng.random()
        if kind < 0.55:
            pieces.append(rng.choice(WORDS))
        elif kind < 0.65:
            pieces.append(rng.choice(["\u200b", "\u00ad", "\ufeff"]) * rng.randint(1, 40))
        elif kind < 0.75:
            pieces.append("y" * rng.randint(90, 400))
        elif kind < 0.85:
            pieces.append(rng.choice([".", ",!?", "...", "\u4e2d\u6587", "caf\u00e9", "na\u0301ive"]))
        else:
            pieces.append(rng.choice([" ", "\n", "\t", "\u3000"]) * rng.randint(1, 300))
    return rng.choice([" ", "", "\n"]).join(pieces)


@pytest.mark.parametrize("side", ["right", "left"])
def test_cutting_long_texts_never_changes_a_token(scorer, reference_encoder, side) -> None:
    """Token ids, not just scores: random long queries and documents, cut from either end, against the tokenizer's
    own truncation of the whole texts (longest first, which depends on which of the two is longer)."""
    from rerank_server.recipes import TextOptions

    tokenizer = reference_encoder.tokenizer
    rng = random.Random(7)
    queries, documents = [], []
    for _ in range(16):
        queries.append(_random_long_text(rng, rng.choice([3, 40, 900, 2000])))
        documents.append(_random_long_text(rng, rng.choice([5, 700, 2000, 5000])))
    for limit in (512, 129):
        encoded = scorer.encode(queries, documents, TextOptions(max_length=limit, side=side))
        tokenizer.truncation_side = side
        try:
            expected = tokenizer(queries, documents, truncation="longest_first", max_length=limit)["input_ids"]
        finally:
            tokenizer.truncation_side = "right"
        assert encoded.input_ids == expected, f"limit {limit}"


def test_a_long_query_with_long_documents_costs_no_quadratic_memory(fixture_model_dir, tmp_path) -> None:
    """tokenizers' own pair truncation builds windows1 × windows2 overflow windows (20,000 × 60,000 tokens cut to 16:
    tens of millions of windows, gigabytes); pairs are assembled without them. In a subprocess capped at 3 GiB."""
    script = tmp_path / "long_pairs.py"
    script.write_text(
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))\n"
        "from rerank_server.recipes import TextOptions\n"
        "from rerank_server.models.loaded import load_folder\n"
        f"scorer = load_folder({str(fixture_model_dir)!r}, max_length=512, dtype='float32')\n"
        "query, document = 'word ' * 20_000, 'text ' * 60_000\n"
        "encoded = scorer.encode([query] * 3, [document] * 3, TextOptions(max_length=16))\n"
        "print(encoded.lengths)\n"
    )
    run = subprocess.run(
        [sys.executable, str(script)], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[16, 16, 16]"
