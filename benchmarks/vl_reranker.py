"""Multimodal reranking: a Qwen3-VL-Reranker-2B-shaped model through our server against the official recipe
in-process, on text documents and on image documents.

    python -m benchmarks.vl_reranker --write                                       # this CPU: few, small images
    python -m benchmarks.vl_reranker --docs 32 --image-size 768 --requests 8 --concurrency 1,4 --write   # a GPU host

The model has the real shape of Qwen3-VL-Reranker-2B (Qwen3-VL-2B-Instruct's config: 28 text layers of width 2048,
16 heads / 8 KV heads, the 151,936-row embedding; a 24-layer, 1024-wide vision tower with deepstack layers 5, 11, 17)
and random weights: a forward costs what the real model's costs. The tokenizer is the test fixture's small
byte-level BPE with Qwen's special tokens; text documents are sized in its tokens, image documents are PNGs of random
pixels, `--image-size` pixels square (resized by the recipe to multiples of 32: 256 px → 64 image tokens, 768 px →
576).

  reference  the official `Qwen3VLReranker.process` (tests/vl_references.py), in-process: one pair per forward, as
             published (its processor, image resizing, truncation, yes/no head)
  ours       `bentoml serve` with the model imported as Qwen/Qwen3-VL-Reranker-2B: the same messages and score, images
             prepared on the preparation threads, pairs sorted by length and packed under the token budget

Both run one after the other (never side by side: the fp32 weights take ~9 GB). Prints a table; --write records it
in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import io
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.rerank_bench import http_latency_ms, import_into_store, machine, measure_http, serve_ours, write  # noqa: E402
from benchmarks.workload import documents  # noqa: E402
from tests.fixture_models import build_qwen3_vl_reranker  # noqa: E402
from tests.vl_references import Qwen3VLRerankerReference  # noqa: E402

QUERY = "a chart of quarterly revenue by region, with the north region highest"
MODEL_ID = "Qwen/Qwen3-VL-Reranker-2B"


def picture(size: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def workloads(folder: Path, args: argparse.Namespace) -> dict[str, list[list[dict]]]:
    """Per kind ("text", "image"): requests, each a list of documents as {text} / {image: PNG bytes}."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    count = max(args.requests, max(args.concurrency))
    text = [[{"text": d} for d in documents(args.docs, tokenizer, seed=i, high=args.max_tokens)] for i in range(count)]
    image = [[{"image": picture(args.image_size, i * 1000 + j)} for j in range(args.docs)] for i in range(count)]
    return {"text": text, "image": image}


def wire(document: dict) -> dict | str:
    if "image" in document:
        return {"image": "data:image/png;base64," + base64.b64encode(document["image"]).decode()}
    return document["text"]


def for_reference(document: dict) -> dict:
    return {"image": Image.open(io.BytesIO(document["image"]))} if "image" in document else document


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def bench_reference(folder: Path, kinds: dict, args: argparse.Namespace, device: str) -> tuple[list, dict]:
    reference = Qwen3VLRerankerReference(folder)
    if device == "cuda":  # the README's torch_dtype=torch.bfloat16
        reference.model.to(device=device, dtype=torch.bfloat16)
        reference.score_linear.to(device=device, dtype=torch.bfloat16)

    def score(docs: list[dict]) -> list[float]:
        inputs = {"query": {"text": QUERY}, "documents": [for_reference(d) for d in docs]}
        if device == "cuda":
            scores = []
            for pair in reference.pairs(inputs):
                tokenized = {k: v.to(device) for k, v in reference.tokenize([pair]).items()}
                scores += reference.compute_scores(tokenized)
            torch.cuda.synchronize()
            return scores
        return reference.process(inputs)

    rows, expected = [], {}
    for kind, requests in kinds.items():
        score(requests[0][:1])  # warm-up
        expected[kind] = score(requests[0])
        latency = [_timed(lambda r=requests[0]: score(r)) for _ in range(args.latency_requests)]
        started = time.perf_counter()
        for docs in requests[: args.requests]:
            score(docs)
        rate = args.docs * args.requests / (time.perf_counter() - started)
        spread = f"{min(expected[kind]):.3f}–{max(expected[kind]):.3f}"
        rows.append([kind, "reference: official recipe, one pair per forward", f"{statistics.median(latency):,.0f}",
                     f"{rate:,.2f}", *["–"] * (len(args.concurrency) - 1), spread, "–"])  # fmt: skip
    return rows, expected


def bench_ours(folder: Path, kinds: dict, expected: dict, args: argparse.Namespace, work: Path) -> list:
    env = {
        "BENTOML_HOME": str(work / "bentoml"),
        "RERANK_DEFAULT_MODEL": MODEL_ID,
        "RERANK_REQUEST_TIMEOUT_S": str(args.request_timeout_s),
    }
    import_into_store(MODEL_ID, folder, env)
    rows = []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serve_ours(env, work / "ours.log"))
        for kind, requests in kinds.items():
            payloads = [{"model": MODEL_ID, "query": QUERY, "documents": [wire(d) for d in docs]} for docs in requests]
            http_latency_ms(server, {**payloads[0], "documents": payloads[0]["documents"][:1]})  # warm-up
            answer = httpx.post(f"{server.url}/v1/rerank", json=payloads[0], timeout=3600).json()
            scores = [s for _, s in sorted((r["index"], r["relevance_score"]) for r in answer["results"])]
            gap = max(abs(a - b) for a, b in zip(scores, expected[kind], strict=True))
            latency = [http_latency_ms(server, payloads[0]) for _ in range(args.latency_requests)]
            rates = []
            for clients in args.concurrency:
                count = max(clients, args.requests)
                rates.append(asyncio.run(measure_http(server, payloads[:count], clients, 0))[0])
            system = f"ours: bentoml serve (ready in {server.ready_s:.0f} s)"
            rates_cells = [f"{rate:,.2f}" for rate in rates]
            rows.append([kind, system, f"{statistics.median(latency):,.0f}", *rates_cells, "–", f"{gap:.1e}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="2B", help="2B (the real shape) or tiny (the test fixture's)")
    parser.add_argument("--docs", type=int, default=4, help="documents per request")
    parser.add_argument("--max-tokens", type=int, default=240, help="longest text document, in tokens (shortest: 32)")
    parser.add_argument("--image-size", type=int, default=256, help="side of the square image documents, in pixels")
    parser.add_argument("--requests", type=int, default=2, help="requests per throughput level (at least clients)")
    parser.add_argument("--latency-requests", type=int, default=2)
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1])
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--request-timeout-s", type=int, default=3600)
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    folder = Path(args.model_cache) / f"qwen3-vl-reranker-{args.shape}"
    if not (folder / "config.json").exists():
        build_qwen3_vl_reranker(folder, shape=args.shape)
    kinds = workloads(folder, args)
    reference_rows, expected = bench_reference(folder, kinds, args, device)
    gc.collect()  # the reference's weights go before the server loads its own
    ours = bench_ours(folder, kinds, expected, args, Path(tempfile.mkdtemp(prefix="rerank-vl-bench-")))
    rows = [row for pair in zip(reference_rows, ours, strict=True) for row in pair]
    head = ["documents", "system", f"1 request ({args.docs} docs) p50 ms"]
    head += [f"{c} client{'s' if c > 1 else ''}: pairs/s" for c in args.concurrency]
    head += ["scores of the first request", "largest difference from the reference"]
    table = "\n".join(
        ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(row) + " |" for row in rows]
    )
    command = "python -m benchmarks.vl_reranker " + " ".join(argv if argv is not None else sys.argv[1:])
    dtype = "bfloat16" if device == "cuda" else "float32"
    tokens = (args.image_size // 32) ** 2
    markdown = (
        f"### {machine()} — {date.today().isoformat()}\n\n`{command.strip()}`\n\n"
        f"Qwen3-VL-Reranker-{args.shape} shape with random weights, {dtype}; per request {args.docs} text documents "
        f"of 32–{args.max_tokens} tokens, or {args.docs} images of {args.image_size}×{args.image_size} pixels "
        f"({tokens} image tokens each); a text query, the default instruction.\n\n{table}"
    )
    print(markdown)
    if args.write:
        write(markdown, "vl-" + device)


if __name__ == "__main__":
    main()
