"""Tokenized pairs per second: one tokenizer behind a lock (what the server had) against a pool of tokenizer copies,
at 1, 2 and 4 threads, for the cross-encoder recipe (BERT WordPiece) and the Qwen3 recipe (byte-level BPE).

    python -m benchmarks.tokenization                  # 256-token pairs, requests of 32 pairs, 5 s per cell
    python -m benchmarks.tokenization --write          # also record the table in docs/benchmarks.md
    TOKENIZERS_PARALLELISM=false python -m benchmarks.tokenization --write    # one core per tokenizing thread

With TOKENIZERS_PARALLELISM unset (the default) the Rust tokenizer also spreads one `encode_batch` over every core
(rayon); set to false, each tokenizing thread uses one core, which shows what the pool alone gives.

Each thread tokenizes requests of `--pairs` pairs (one query, documents of ~`--tokens` tokens) as the engine's
preparation threads do: `LoadedReranker.encode`, which borrows a recipe copy from the pool. A GPU forwards
bge-reranker-base at several thousand pairs/s, so tokenizing must keep up.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.rerank_bench import machine, write  # noqa: E402
from benchmarks.workload import QUERY, build_model, documents  # noqa: E402
from rerank_server.models.loaded import RecipePool, load_tokenizer  # noqa: E402
from rerank_server.recipes import DEFAULT_OPTIONS, RECIPES  # noqa: E402


def _recipes(name: str, cache: Path) -> tuple[str, Path, int]:
    if name == "cross-encoder":
        return "cross-encoder", build_model("minilm", cache / "minilm"), 512
    from tests.fixture_models import build_qwen3_reranker

    folder = cache / "qwen3-tokenizer"
    if not (folder / "config.json").exists():
        build_qwen3_reranker(folder)
    return "qwen3", folder, 8192


def measure(pool: RecipePool, threads: int, requests: list[list[str]], seconds: float) -> float:
    """Pairs tokenized per second by `threads` threads borrowing from `pool` for `seconds`."""
    done = [0] * threads
    stop = threading.Event()

    def work(slot: int) -> None:
        i = slot
        while not stop.is_set():
            docs = requests[i % len(requests)]
            with pool.borrow() as recipe:
                recipe.encode([QUERY] * len(docs), docs, DEFAULT_OPTIONS)
            done[slot] += len(docs)
            i += threads

    workers = [threading.Thread(target=work, args=(slot,)) for slot in range(threads)]
    for worker in workers:
        worker.start()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(done) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", type=lambda s: s.split(","), default=["cross-encoder", "qwen3"])
    parser.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--pairs", type=int, default=32, help="pairs per request")
    parser.add_argument("--tokens", type=int, default=240, help="document tokens (the query adds ~16)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per cell")
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    lines = [
        "| recipe (tokenizer) | threads | one tokenizer + lock, pairs/s | pool of copies, pairs/s | pool / lock |",
        "|---|---|---|---|---|",
    ]
    for name in args.recipes:
        recipe, folder, max_length = _recipes(name, Path(args.model_cache))
        tokenizer = load_tokenizer(folder)
        requests = [
            documents(args.pairs, tokenizer, seed=300 + i, low=args.tokens - 8, high=args.tokens) for i in range(8)
        ]
        kind = f"{recipe} ({type(tokenizer).__name__})"
        for threads in args.threads:

            def make(t, recipe=recipe, max_length=max_length):
                return RECIPES[recipe](t, max_length)

            locked = measure(RecipePool(make, tokenizer, 1), threads, requests, args.seconds)
            pooled = measure(RecipePool(make, tokenizer, threads), threads, requests, args.seconds)
            lines.append(f"| {kind} | {threads} | {locked:,.0f} | {pooled:,.0f} | {pooled / locked:.2f}× |")
            print(lines[-1], flush=True)
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM", "")
    prefix = f"TOKENIZERS_PARALLELISM={parallelism} " if parallelism else ""
    command = prefix + "python -m benchmarks.tokenization " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = f"### {machine()} — {date.today().isoformat()}\n\n`{command.strip()}`\n\n" + "\n".join(lines)
    print(markdown)
    if args.write:
        write(markdown, "tokenization-cpu" + ("-one-core-per-thread" if parallelism.lower() == "false" else ""))


if __name__ == "__main__":
    main()
