"""CPU backends side by side on the same requests: speed and fidelity against torch fp32 (torch bf16 too: on a CPU
with AMX, bfloat16 matrix units make it the fastest).

    python -m benchmarks.cpu_backends                        # MiniLM fixture and the bge-reranker-base shape
    python -m benchmarks.cpu_backends --models minilm --write

Each backend is the server's own scorer (`import_models.py --backend ...` converts the model the same way), timed
in-process so that only the forward differs. Every request is one of several queries against 100 documents of
32–480 tokens. Fidelity against torch fp32 on every pair: Spearman's rank correlation over all pairs and for the
worst query, the largest |score difference|, and the overlap of the top 10. The MiniLM fixture is the harsh case
(its random classifier head has a wide spread that magnifies weight error); the bge shapes are random-weight
models whose scores are near-constant, so only their speed means something, but their fidelity is printed too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.rerank_bench import report  # noqa: E402
from benchmarks.workload import build_model, documents  # noqa: E402
from rerank_server.backends import BACKENDS, convert  # noqa: E402
from rerank_server.cpu import usable_cpus  # noqa: E402
from rerank_server.engine.passes import default_token_budget, score_directly  # noqa: E402
from rerank_server.models.loaded import LoadedReranker, load_folder  # noqa: E402

QUERIES = [
    "how does a cross encoder rerank passages for retrieval augmented generation?",
    "what is the difference between vector search and reranking",
    "why are embeddings computed separately for speed",
    "which index stores large collections of documents",
]


@dataclass
class Measured:
    seconds: list[float]
    scores: list[np.ndarray]  # one array per request


def load(model_dir: Path, spec: str, work: Path) -> LoadedReranker:
    """The model the server would run for `model_dir` imported with `--backend backend` (`torch:bfloat16`: torch
    with RERANK_DTYPE=bfloat16; `openvino-int8:bfloat16`: imported with `--precision bfloat16`, which is what
    `--backend auto` chooses on a CPU with AVX-512 bf16 and no AMX)."""
    backend, _, precision = spec.partition(":")
    folder = model_dir
    if backend != "torch":
        folder = work / f"{model_dir.name}-{backend}"
        if not folder.exists():
            shutil.copytree(model_dir, folder)
            convert(folder, backend)
        return load_folder(folder, max_length=512, backend=backend, cpu_precision=precision or "float32")
    return load_folder(folder, max_length=512, backend=backend, dtype=precision or "float32")


def measure(model: LoadedReranker, requests: list[tuple[str, list[str]]], token_budget: int) -> Measured:
    query, docs = requests[0]
    # Warm-up: first-call allocations and compilation are not the steady state.
    score_directly(model, [query] * 8, docs[:8], token_budget=token_budget)
    seconds, scores = [], []
    for query, docs in requests:
        started = time.perf_counter()
        scores.append(np.array(score_directly(model, [query] * len(docs), docs, token_budget=token_budget).scores))
        seconds.append(time.perf_counter() - started)
    return Measured(seconds, scores)


def fidelity(measured: Measured, reference: Measured) -> str:
    flat, ref = np.concatenate(measured.scores), np.concatenate(reference.scores)
    per_query = [spearmanr(s, r).statistic for s, r in zip(measured.scores, reference.scores, strict=True)]
    overlap = [
        len(set(np.argsort(-s)[:10]) & set(np.argsort(-r)[:10]))
        for s, r in zip(measured.scores, reference.scores, strict=True)
    ]
    return (
        f"{spearmanr(flat, ref).statistic:.4f} | {min(per_query):.4f} | {np.max(np.abs(flat - ref)):.4f} "
        f"| {min(overlap)}/10"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=lambda s: s.split(","), default=["minilm", "bge-base-shape"])
    parser.add_argument(
        "--backends", type=lambda s: s.split(","), default=["torch", "torch:bfloat16", *BACKENDS[1:]],
        help="import backends; torch:bfloat16 is torch with RERANK_DTYPE=bfloat16, BACKEND:bfloat16 a CPU runtime "
        "imported with --precision bfloat16",
    )  # fmt: skip
    parser.add_argument("--queries", type=int, default=len(QUERIES), help="requests per backend, one query each")
    parser.add_argument("--docs", type=int, default=100, help="documents per request")
    parser.add_argument("--token-budget", type=int, default=default_token_budget("cpu"), help="the server's default")
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    assert args.backends[0] == "torch", "torch fp32 is the reference and comes first"
    work = Path(args.model_cache) / "cpu-backends"
    work.mkdir(parents=True, exist_ok=True)
    lines = [
        f"| model | backend | {args.docs}-doc request, mean ms | pairs/s | vs torch fp32 | Spearman, all pairs "
        "| Spearman, worst query | max abs Δscore | top-10 overlap, worst query |",
        "|" + "---|" * 9,
    ]
    for name in args.models:
        model_dir = build_model(name, Path(args.model_cache) / name)
        tokenizer = load_folder(model_dir, max_length=512).recipe.tokenizer
        requests = [
            (QUERIES[i % len(QUERIES)], documents(args.docs, tokenizer, seed=100 + i)) for i in range(args.queries)
        ]
        reference: Measured | None = None
        for backend in args.backends:
            model = load(model_dir, backend, work)
            measured = measure(model, requests, args.token_budget)
            del model
            mean = sum(measured.seconds) / len(measured.seconds)
            pairs_per_s = args.docs / mean
            if reference is None:
                reference, base = measured, pairs_per_s
            compared = "– | – | – | –" if measured is reference else fidelity(measured, reference)
            row = f"{mean * 1e3:,.0f} | {pairs_per_s:,.1f} | {pairs_per_s / base:.2f}× | {compared}"
            lines.append(f"| {name} | {backend} | {row} |")
            print(lines[-1], flush=True)
    setup = (
        f"{args.queries} queries × {args.docs} documents (32–480 tokens each), {usable_cpus()} threads, the server's "
        "scorer in-process, fidelity against torch fp32 on the same pairs."
    )
    report("cpu_backends", argv, setup, lines, "cpu-backends" if args.write else None)


if __name__ == "__main__":
    main()
