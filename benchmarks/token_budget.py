"""RERANK_TOKEN_BUDGET: the server's model and passes on the same 100-document requests under several token budgets.

    python -m benchmarks.token_budget                                  # MiniLM fixture, budgets 2k-64k
    python -m benchmarks.token_budget --models bge-base-shape --requests 20 --write    # on a GPU host

The budget caps the padded tokens of one forward pass (pairs are sorted by length and packed under it): too small and
the device runs many small passes, too large and long and short pairs share a pass (more padding) and memory peaks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.rerank_bench import machine, write  # noqa: E402
from benchmarks.workload import QUERY, build_model, documents  # noqa: E402
from rerank_server.backends.torch_backend import resolve_device  # noqa: E402
from rerank_server.engine.passes import score_directly  # noqa: E402
from rerank_server.models.loaded import load_folder  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=lambda s: s.split(","), default=["minilm"])
    parser.add_argument(
        "--budgets", type=lambda s: [int(b) for b in s.split(",")], default=[2048, 4096, 8192, 16384, 32768, 65536]
    )
    parser.add_argument("--requests", type=int, default=2, help="100-document requests per budget")
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    device = resolve_device("auto")
    lines = [
        "| model | token budget | pairs/s | 100-doc request ms | peak device memory MiB |",
        "|---|---|---|---|---|",
    ]
    for name in args.models:
        model_dir = build_model(name, Path(args.model_cache) / name)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        requests = [documents(100, tokenizer, seed=200 + i) for i in range(args.requests)]
        model = load_folder(model_dir, max_length=512, device=device)
        score_directly(model, [QUERY] * 8, requests[0][:8])  # warm-up
        for budget in args.budgets:
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            for docs in requests:
                score_directly(model, [QUERY] * len(docs), docs, token_budget=budget)
            elapsed = time.perf_counter() - started
            peak = f"{torch.cuda.max_memory_allocated() / 2**20:,.0f}" if device.startswith("cuda") else "–"
            pairs = sum(len(docs) for docs in requests)
            lines.append(
                f"| {name} | {budget:,} | {pairs / elapsed:,.1f} | {elapsed / len(requests) * 1e3:,.0f} | {peak} |"
            )
    command = "python -m benchmarks.token_budget " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = f"### {machine()} — {date.today().isoformat()}\n\n`{command.strip()}`\n\n" + "\n".join(lines)
    print(markdown)
    if args.write:
        write(markdown, "token-budget-" + ("cuda" if device.startswith("cuda") else "cpu"))


if __name__ == "__main__":
    main()
