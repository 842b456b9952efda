"""A listwise reranker against a pairwise LLM reranker of the same backbone, on the same documents, in-process.

    python -m benchmarks.listwise                                   # the real shapes: 20 and 100 documents (slow)
    python -m benchmarks.listwise --shape tiny --docs 5,20 --repeats 1    # a quick check that it runs

jina-reranker-v3's shape (Qwen3 0.6B backbone: 28 layers, hidden 1024, 151,672-row embedding, the 1024-512-512
projector) reads the query and all documents in one context (passes of at most 125 documents, as its `rerank()`);
Qwen3-Reranker-0.6B's shape (the same backbone with the real 151,936-row embedding) reads each document in a prompt
of its own with the query and the template repeated, in the server's length-sorted passes under the CPU token budget.
Both have random weights: a forward costs what the real model's costs. Both use the tests' small byte-level BPE
tokenizers; documents are sized in their tokens (--min-tokens to --max-tokens). Each request goes through what the
server runs on its model thread (`LoadedReranker.encode`, then `run_passes`), without HTTP or the queue.

Prints a table: tokens the model reads per request, passes, median latency per request and documents per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.workload import documents  # noqa: E402
from rerank_server.cpu import usable_cpus  # noqa: E402
from rerank_server.engine.passes import run_passes  # noqa: E402
from rerank_server.models.loaded import LoadedReranker, load_folder  # noqa: E402
from tests.fixture_listwise import build_jina_reranker  # noqa: E402
from tests.fixture_models import build_qwen3_reranker  # noqa: E402

QUERY = "how does a listwise reranker read the candidate passages of a retrieval augmented generation system?"


def models(shape: str, cache: Path) -> dict[str, LoadedReranker]:
    """Both models of `shape`, built once into `cache` and loaded in float32 on the CPU."""
    jina, qwen3 = cache / f"jina-v3-{shape}", cache / f"qwen3-{shape}"
    if not (jina / "config.json").exists():
        build_jina_reranker(jina, shape=shape)
    if not (qwen3 / "config.json").exists():
        build_qwen3_reranker(qwen3, shape=shape)
    return {
        "jina-reranker-v3 (listwise)": load_folder(jina, recipe="jina-v3", max_length=131_072, dtype="float32"),
        "Qwen3-Reranker-0.6B (pairwise)": load_folder(
            qwen3, recipe="qwen3", max_length=8192, causal=True, dtype="float32"
        ),
    }


def measure(model: LoadedReranker, docs: list[str], repeats: int) -> tuple[int, int, float]:
    """Tokens the model reads per request, its passes, and the median seconds of a request (tokenizing included)."""
    encoded = model.encode([QUERY] * len(docs), docs)
    passes = sum(len(one.passes) for one in encoded.lists) if encoded.lists is not None else 0
    run_passes(model, encoded)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run_passes(model, model.encode([QUERY] * len(docs), docs))
        times.append(time.perf_counter() - started)
    return sum(encoded.lengths), passes, statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    """Print the table: each model on the same documents, per list length."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("0.6B", "tiny"), default="0.6B")
    parser.add_argument("--docs", type=lambda s: [int(n) for n in s.split(",")], default=[20, 100])
    parser.add_argument("--min-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=160, help="longest document, in tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed requests per cell (the median is shown)")
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-listwise"))
    args = parser.parse_args(argv)
    torch.set_num_threads(usable_cpus())
    loaded = models(args.shape, Path(args.model_cache))
    tokenizer = next(iter(loaded.values())).recipe.tokenizer
    print(f"{args.shape} shapes, float32, {usable_cpus()} CPU threads, torch {torch.__version__}")
    print("| model | documents | tokens read | passes | latency per request (ms) | documents/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for count in args.docs:
        docs = documents(count, tokenizer, seed=count, low=args.min_tokens, high=args.max_tokens)
        for name, model in loaded.items():
            tokens, passes, seconds = measure(model, docs, args.repeats)
            shown = str(passes) if passes else "-"
            print(f"| {name} | {count} | {tokens:,} | {shown} | {seconds * 1e3:,.0f} | {count / seconds:,.1f} |")


if __name__ == "__main__":
    main()
