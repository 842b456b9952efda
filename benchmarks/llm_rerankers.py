"""LLM rerankers: a Qwen3-Reranker-shaped model through our server against its published recipe in-process.

    python -m benchmarks.llm_rerankers --write                           # this CPU: the 0.6B shape, 10 documents
    python -m benchmarks.llm_rerankers --shapes 0.6B,4B --docs 100 --requests 20 --concurrency 1,8,32 \\
        --reference-batch 16 --write                                     # a GPU host (bfloat16)

The models have the real shapes (28 layers and hidden 1024 for 0.6B, 36 and 2560 for 4B; the real 151,936-row
embedding) and random weights: a forward costs what the real model's costs. The tokenizer is the test fixture's small
byte-level BPE; documents are sized in its tokens.

  reference  the transformers code of the Qwen3-Embedding README (tests/llm_references.py), in-process, in batches of
             --reference-batch pairs: as published it computes the logits of every position over the whole
             vocabulary (151,936 floats per token), so larger batches run out of memory
  ours       `bentoml serve` with the model imported as Qwen/Qwen3-Reranker-0.6B: the same prompt and score, the last
             position only, length-sorted passes under the token budget, continuous batching

Prints a table; --write records it in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.rerank_bench import http_latency_ms, import_into_store, machine, measure_http, serve_ours, write  # noqa: E402
from benchmarks.workload import documents  # noqa: E402
from tests.fixture_models import build_qwen3_reranker  # noqa: E402
from tests.llm_references import Qwen3Reference, qwen3_format_instruction  # noqa: E402

QUERY = "how does a cross encoder rerank passages for retrieval augmented generation?"
MODEL_ID = "Qwen/Qwen3-Reranker-0.6B"


class Reference:
    """The published recipe, run the way its README runs it, in batches of `batch` pairs."""

    def __init__(self, folder: Path, device: str, batch: int) -> None:
        self.recipe = Qwen3Reference(folder)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.recipe.model = self.recipe.model.to(device=device, dtype=dtype)
        self.device, self.batch = device, batch

    def score(self, query: str, docs: list[str]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(docs), self.batch):
            chunk = docs[start : start + self.batch]
            inputs = self.recipe.process_inputs([qwen3_format_instruction(None, query, d) for d in chunk])
            scores += self.recipe.compute_logits({k: v.to(self.device) for k, v in inputs.items()})
        if self.device == "cuda":
            torch.cuda.synchronize()
        return scores


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def bench_reference(folder: Path, shape: str, payloads: list[dict], args: argparse.Namespace, device: str) -> list[str]:
    reference = Reference(folder, device, args.reference_batch)
    reference.score(QUERY, payloads[0]["documents"][:2])  # warm-up
    first = payloads[0]["documents"]
    latency = [_timed(lambda: reference.score(QUERY, first)) for _ in range(args.latency_requests)]
    started = time.perf_counter()
    for payload in payloads[: args.requests]:
        reference.score(QUERY, payload["documents"])
    rate = args.docs * args.requests / (time.perf_counter() - started)
    system = f"reference: README recipe, batches of {args.reference_batch}"
    return [shape, system, f"{statistics.median(latency):,.0f}", f"{rate:,.2f}", *["–"] * (len(args.concurrency) - 1)]


def bench_shape(shape: str, args: argparse.Namespace, work: Path, device: str) -> list[list[str]]:
    folder = Path(args.model_cache) / f"qwen3-reranker-{shape}"
    if not (folder / "config.json").exists():
        build_qwen3_reranker(folder, shape=shape)
    tokenizer = AutoTokenizer.from_pretrained(folder)  # documents are sized in the model's own tokens
    payloads = [
        {"model": MODEL_ID, "query": QUERY, "documents": documents(args.docs, tokenizer, seed=i, high=args.max_tokens)}
        for i in range(max(args.requests, max(args.concurrency)))
    ]
    rows = [bench_reference(folder, shape, payloads, args, device)]
    env = {
        "BENTOML_HOME": str(work / f"bentoml-{shape}"),
        "RERANK_DEFAULT_MODEL": MODEL_ID,
        "RERANK_REQUEST_TIMEOUT_S": str(args.request_timeout_s),
    }
    import_into_store(MODEL_ID, folder, env)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serve_ours(env, work / f"ours-{shape}.log"))
        http_latency_ms(server, payloads[0])  # warm-up
        latency = [http_latency_ms(server, payloads[0]) for _ in range(args.latency_requests)]
        rates = []
        for clients in args.concurrency:
            count = max(clients, args.requests)
            rates.append(asyncio.run(measure_http(server, payloads[:count], clients, 0))[0])
    rows.append([shape, f"ours: bentoml serve (ready in {server.ready_s:.0f} s)", f"{statistics.median(latency):,.0f}",
                 *[f"{rate:,.2f}" for rate in rates]])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=lambda s: s.split(","), default=["0.6B"])
    parser.add_argument("--docs", type=int, default=10, help="documents per request")
    parser.add_argument("--max-tokens", type=int, default=240, help="longest document, in tokens (shortest: 32)")
    parser.add_argument("--requests", type=int, default=4, help="requests per throughput level (at least clients)")
    parser.add_argument("--latency-requests", type=int, default=3)
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4])
    parser.add_argument("--reference-batch", type=int, default=4, help="pairs per forward of the reference")
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--request-timeout-s", type=int, default=3600)
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="rerank-llm-bench-"))
    rows = [row for shape in args.shapes for row in bench_shape(shape, args, work, device)]
    head = ["shape", "system", f"1 request ({args.docs} docs) p50 ms"] + [
        f"{c} client{'s' if c > 1 else ''}: pairs/s" for c in args.concurrency
    ]
    table = "\n".join(
        ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(row) + " |" for row in rows]
    )
    command = "python -m benchmarks.llm_rerankers " + " ".join(argv if argv is not None else sys.argv[1:])
    dtype = "bfloat16" if device == "cuda" else "float32"
    markdown = (
        f"### {machine()} — {date.today().isoformat()}\n\n`{command.strip()}`\n\n"
        f"Qwen3-Reranker shapes with random weights, {dtype}; {args.docs} documents of 32–{args.max_tokens} tokens per "
        f"request, the default instruction.\n\n{table}"
    )
    print(markdown)
    if args.write:
        write(markdown, "llm-" + device)


if __name__ == "__main__":
    main()
