"""ColBERT against a cross-encoder, and what the document-embedding cache buys (issue #29).

    .venv/bin/python benchmarks/colbert.py [--requests 32] [--clients 8]

Models, random weights of the real shapes (a forward pass costs the same whatever the weights): the
answerai-colbert-small-v1 shape (BERT, 12 layers, hidden 384, 33M; Dense 384 → 96; query 32, document 300 tokens) and
the bge-reranker-base shape (XLM-R, 278M). Workload: 20-document requests from `--clients` clients at once, documents
of 100-300 tokens (RAG chunks), a new query each time (so only the embedding cache can help, never the result
cache). ColBERT runs cold (every document new), then with 50 % and 90 % of each request's documents seen before.
Prints pairs/s per row, the cache's bytes per token, and how far float16 storage would move scores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="rerank-colbert-bench-"))

import torch  # noqa: E402
import transformers  # noqa: E402

from benchmarks.workload import WORDS, build_model, documents  # noqa: E402
from tests.fixture_models import minilm_source  # noqa: E402

COLBERT_ID = "bench/answerai-colbert-small-shape"
BGE_ID = "bench/bge-reranker-base-shape"
DOCUMENTS_PER_REQUEST = 20


def build_colbert_small(target: Path) -> Path:
    """The answerai-colbert-small-v1 shape as PyLate saves it."""
    if (target / "modules.json").exists():
        return target
    from safetensors.torch import save_file

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_source()))
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536,
        architectures=["BertModel"],
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "1_Dense").mkdir()
    save_file({"linear.weight": torch.randn(96, 384) * 0.05}, target / "1_Dense" / "model.safetensors")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ]
    (target / "modules.json").write_text(json.dumps(modules))
    (target / "config_sentence_transformers.json").write_text(json.dumps({
        "model_type": "ColBERT", "query_prefix": "[unused0]", "document_prefix": "[unused1]", "query_length": 32,
        "document_length": 300, "attend_to_expansion_tokens": False, "do_query_expansion": True,
        "skiplist_words": list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    }))  # fmt: skip
    return target


def _queries(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(6, 14))) + "?" for _ in range(count)]


async def _run(engine, model: str, requests: list[tuple[str, list[str]]], clients: int) -> float:
    """Pairs per second of `requests` sent by `clients` at once."""
    pending = iter(requests)

    async def client() -> None:
        for query, docs in pending:
            await engine.score(model, [query] * len(docs), docs)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return sum(len(docs) for _, docs in requests) / (time.perf_counter() - started)


def workload(
    pool: list[str], fresh: list[str], count: int, seen_share: float, seed: int
) -> list[tuple[str, list[str]]]:
    """`count` requests of 20 documents, `seen_share` of them drawn from `pool` (already cached), the rest new."""
    rng = random.Random(seed)
    queries = _queries(count, seed)
    fresh_iter = iter(fresh)
    seen = round(DOCUMENTS_PER_REQUEST * seen_share)
    return [
        (query, rng.sample(pool, seen) + [next(fresh_iter) for _ in range(DOCUMENTS_PER_REQUEST - seen)])
        for query in queries
    ]


def fp16_drift(engine, stored_id: str, requests: list[tuple[str, list[str]]]) -> tuple[float, bool]:
    """The largest MaxSim change if cached document embeddings were float16, and whether every order held."""
    from rerank_server.recipes.colbert import maxsim

    model = engine.registry.get(stored_id)
    worst, orders_held = 0.0, True
    for query, docs in requests[:8]:
        encoded = model.encode([query] * len(docs), docs)
        pairs = encoded.late
        q_ids = torch.tensor([pairs[0].query])
        q_mask = torch.zeros_like(q_ids)
        q_mask[0, : pairs[0].attended] = 1
        q = model.backend.embed(q_ids.numpy(), q_mask.numpy())[0]
        full, half = [], []
        for pair in pairs:
            ids = torch.tensor([pair.document])
            d = model.backend.embed(ids.numpy(), torch.ones_like(ids).numpy())[0][torch.tensor(pair.kept)]
            full.append(float(maxsim(q, d)))
            half.append(float(maxsim(q, d.half())))
        worst = max(worst, max(abs(a - b) for a, b in zip(full, half, strict=True)))
        orders_held &= sorted(range(len(full)), key=full.__getitem__) == sorted(range(len(half)), key=half.__getitem__)
    return worst, orders_held


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    from rerank_server.engine.engine import RerankEngine
    from rerank_server.importer.sources import import_from_folder
    from rerank_server.settings import Settings

    work = Path(os.environ["BENTOML_HOME"]).parent / "rerank-colbert-bench-models"
    import_from_folder(COLBERT_ID, build_colbert_small(work / "colbert-small"))
    import_from_folder(BGE_ID, build_model("bge-base-shape", work / "bge-base"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_source()))
    needed = args.requests * DOCUMENTS_PER_REQUEST
    texts = documents(needed * 6 + 200, tokenizer, seed=1, low=100, high=300)
    pool, fresh = texts[:200], iter(texts[200:])
    engine = RerankEngine(Settings(default_model=BGE_ID))
    try:
        engine.registry.get(COLBERT_ID)
        engine.registry.get(BGE_ID)
        for doc_chunk in range(0, len(pool), DOCUMENTS_PER_REQUEST):  # the seen documents, encoded once
            chunk = pool[doc_chunk : doc_chunk + DOCUMENTS_PER_REQUEST]
            await engine.score(COLBERT_ID, ["warm-up query"] * len(chunk), chunk)
        rows = []
        warm = workload(pool, [next(fresh) for _ in range(needed)], 4, 0.0, seed=9)
        await _run(engine, BGE_ID, warm, args.clients)
        measured = workload(pool, [next(fresh) for _ in range(needed)], args.requests, 0.0, seed=2)
        bge_rate = await _run(engine, BGE_ID, measured, args.clients)
        rows.append(("bge-reranker-base shape", bge_rate))
        for label, share, seed in (("ColBERT cold (every document new)", 0.0, 3), ("ColBERT, 50 % seen before", 0.5, 6),
                                   ("ColBERT, 90 % seen before", 0.9, 7)):  # fmt: skip
            # A seed per row: each row's queries are new too, so no row reuses another's encoded queries.
            requests = workload(pool, [next(fresh) for _ in range(needed)], args.requests, share, seed=seed)
            rows.append((label, await _run(engine, COLBERT_ID, requests, args.clients)))
        cache = engine.registry.embeddings
        drift, held = fp16_drift(engine, COLBERT_ID, workload(pool, texts[: 8 * DOCUMENTS_PER_REQUEST], 8, 0.0, seed=5))
    finally:
        engine.close()
    print(f"{args.requests} requests of {DOCUMENTS_PER_REQUEST} documents (100-300 tokens), {args.clients} clients, "
          f"{torch.get_num_threads()} torch threads\n")  # fmt: skip
    print(f"{'model':40} {'pairs/s':>8} {'× bge-base':>10}")
    for label, rate in rows:
        print(f"{label:40} {rate:8.1f} {rate / bge_rate:10.2f}")
    per_token = 96 * 4
    print(f"\nembedding cache: {per_token} bytes per kept token at 96 dimensions (512 at 128), held now "
          f"{cache.bytes_held / 2**20:.1f} MiB in {len(cache)} documents")  # fmt: skip
    print(f"100,000 cached 300-token chunks: {100_000 * 300 * per_token / 2**30:.1f} GiB at 96 dimensions, "
          f"{100_000 * 300 * 512 / 2**30:.1f} GiB at 128 (float16 would halve both)")  # fmt: skip
    print(f"float16 storage: largest MaxSim change {drift:.2e} (of sums up to 32), every ranking kept: {held}")


if __name__ == "__main__":
    asyncio.run(main())
