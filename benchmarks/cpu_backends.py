"""CPU backends side by side on the same 100-document requests: torch fp32, ONNX Runtime fp32, ONNX Runtime int8.

    python -m benchmarks.cpu_backends                                  # MiniLM fixture and the bge-reranker-base shape
    python -m benchmarks.cpu_backends --models minilm --requests 3 --write

Each backend is the server's own scorer (`import_models.py --backend ...` chooses it per model), timed in-process so
that only the forward differs. Fidelity is measured against torch fp32 on every pair: the largest |score difference|
and Spearman's rank correlation (over all pairs, and the worst single request). On random-weight models (the bge
shapes) scores are near-constant, so only their speed means something; fidelity is read off the MiniLM fixture.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rerank_server.onnx_backend import Backend, OnnxScorer, export  # noqa: E402

from benchmarks.rerank_bench import machine, write  # noqa: E402
from benchmarks.workload import QUERY, build_model, documents  # noqa: E402
from rerank_server.scorer import CrossEncoderScorer, default_token_budget  # noqa: E402

BACKENDS: tuple[Backend, ...] = ("torch", "onnx", "onnx-int8")


def load(model_dir: Path, backend: Backend, work: Path, token_budget: int) -> CrossEncoderScorer:
    if backend == "torch":
        return CrossEncoderScorer(
            model_dir, max_length=512, device="cpu", dtype=torch.float32, token_budget=token_budget
        )
    copy = work / f"{model_dir.name}-{backend}"
    if not copy.exists():
        shutil.copytree(model_dir, copy)
        export(copy, backend)
    return OnnxScorer(copy, max_length=512, backend=backend, token_budget=token_budget)


def measure(scorer: CrossEncoderScorer, requests: list[list[str]]) -> tuple[list[float], list[list[float]]]:
    """Seconds per request and the scores of each request."""
    scorer.score([QUERY] * 4, requests[0][:4])  # warm-up: first-call allocations are not the steady state
    seconds, scores = [], []
    for docs in requests:
        started = time.perf_counter()
        scores.append(scorer.score([QUERY] * len(docs), docs).scores)
        seconds.append(time.perf_counter() - started)
    return seconds, scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=lambda s: s.split(","), default=["minilm", "bge-base-shape"])
    parser.add_argument("--requests", type=int, default=3, help="100-document requests per backend")
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--token-budget", type=int, default=default_token_budget("cpu"), help="the server's default")
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    work = Path(args.model_cache) / "cpu-backends"
    work.mkdir(parents=True, exist_ok=True)
    lines = [
        "| model | backend | 100-doc request p50 ms | pairs/s | speed-up vs torch fp32 | max abs Δscore "
        "| Spearman (all pairs) | Spearman (worst request) |",
        "|" + "---|" * 8,
    ]
    for name in args.models:
        model_dir = build_model(name, Path(args.model_cache) / name)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        requests = [documents(args.docs, tokenizer, seed=100 + i) for i in range(args.requests)]
        baseline: tuple[float, list[list[float]]] | None = None
        for backend in BACKENDS:
            scorer = load(model_dir, backend, work, args.token_budget)
            seconds, scores = measure(scorer, requests)
            p50 = statistics.median(seconds)
            pairs_per_s = sum(len(r) for r in requests) / sum(seconds)
            if baseline is None:
                baseline = (pairs_per_s, scores)
                lines.append(f"| {name} | {backend} | {p50 * 1e3:,.0f} | {pairs_per_s:,.1f} | 1.00× | – | – | – |")
                continue
            reference = np.concatenate(baseline[1])
            flat = np.concatenate(scores)
            worst = min(spearmanr(s, r).statistic for s, r in zip(scores, baseline[1], strict=True))
            lines.append(
                f"| {name} | {backend} | {p50 * 1e3:,.0f} | {pairs_per_s:,.1f} | {pairs_per_s / baseline[0]:.2f}× "
                f"| {np.max(np.abs(flat - reference)):.4f} | {spearmanr(flat, reference).statistic:.4f} "
                f"| {worst:.4f} |"
            )
            del scorer
    command = "python -m benchmarks.cpu_backends " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = (
        f"### {machine()} — {date.today().isoformat()}\n\n`{command.strip()}`\n\n"
        f"{args.docs} documents per request (32–480 tokens each), {torch.get_num_threads()} threads, "
        f"the server's scorer in-process.\n\n" + "\n".join(lines)
    )
    print(markdown)
    if args.write:
        write(markdown, "cpu-backends")


if __name__ == "__main__":
    main()
