"""Rerankers beside their published reference code: a model of the real shape through our server against the
family's own scoring code in-process.

    python -m benchmarks.llm_rerankers --write                           # this CPU: Qwen3-Reranker-0.6B, 10 documents
    python -m benchmarks.llm_rerankers --models mxbai:base-v2,modernbert:base --write --key new-rerankers-cpu
    python -m benchmarks.llm_rerankers --models qwen3:0.6B,qwen3:4B,mxbai:base-v2,mxbai:large-v2,modernbert:base \\
        --docs 100 --requests 20 --concurrency 1,8,32 --reference-batch 16 --write     # a GPU host (bfloat16)

The models have the real shapes (Qwen3-Reranker 0.6B: 28 layers, hidden 1024; mxbai-rerank-base-v2: Qwen2 0.5B, 24
layers, hidden 896; both with the real 151,936-row embedding; gte-reranker-modernbert-base: ModernBERT-base) and
random weights: a forward costs what the real model's costs. The LLMs' tokenizer is the test fixture's small
byte-level BPE, ModernBERT's a WordPiece one; documents are sized in the model's own tokens.

  reference  qwen3: the transformers code of the Qwen3-Embedding README; mxbai: mixedbread's `mxbai-rerank` package
             code (both in tests/llm_references.py); modernbert: `sentence_transformers.CrossEncoder.predict`. The
             LLM references run in batches of --reference-batch pairs: as published they compute the logits of every
             position over the whole vocabulary (151,936 floats per token), so larger batches run out of memory
  ours       `bentoml serve` with the model imported under its Hub id: the same prompt and score, the last position
             only, length-sorted passes under the token budget, continuous batching

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
from benchmarks.workload import build_model, documents  # noqa: E402
from tests.fixture_models import build_mxbai_v2_reranker, build_qwen3_reranker  # noqa: E402
from tests.llm_references import MxbaiV2Reference, Qwen3Reference, qwen3_format_instruction  # noqa: E402

QUERY = "how does a cross encoder rerank passages for retrieval augmented generation?"
MODEL_IDS = {
    ("qwen3", "0.6B"): "Qwen/Qwen3-Reranker-0.6B",
    ("qwen3", "4B"): "Qwen/Qwen3-Reranker-4B",
    ("qwen3", "8B"): "Qwen/Qwen3-Reranker-8B",
    ("mxbai", "base-v2"): "mixedbread-ai/mxbai-rerank-base-v2",
    ("mxbai", "large-v2"): "mixedbread-ai/mxbai-rerank-large-v2",
    ("modernbert", "base"): "Alibaba-NLP/gte-reranker-modernbert-base",
}


def build(family: str, shape: str, folder: Path) -> Path:
    if (folder / "config.json").exists():
        return folder
    if family == "qwen3":
        return build_qwen3_reranker(folder, shape=shape)
    if family == "mxbai":
        return build_mxbai_v2_reranker(folder, shape=shape)
    return build_model("modernbert-base-shape", folder)


class Reference:
    """The family's published scoring code, in-process, in batches of `batch` pairs."""

    def __init__(self, family: str, folder: Path, device: str, batch: int) -> None:
        self.family, self.device, self.batch = family, device, batch
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        if family == "modernbert":
            from sentence_transformers import CrossEncoder

            self.cross_encoder = CrossEncoder(str(folder), device=device, model_kwargs={"dtype": dtype})
            return
        self.recipe = Qwen3Reference(folder) if family == "qwen3" else MxbaiV2Reference(folder)
        self.recipe.model = self.recipe.model.to(device=device, dtype=dtype)

    def score(self, query: str, docs: list[str]) -> list[float]:
        if self.family == "modernbert":
            return self.cross_encoder.predict([(query, d) for d in docs], batch_size=self.batch).tolist()
        scores: list[float] = []
        for start in range(0, len(docs), self.batch):
            chunk = docs[start : start + self.batch]
            if self.family == "qwen3":
                inputs = self.recipe.process_inputs([qwen3_format_instruction(None, query, d) for d in chunk])
                scores += self.recipe.compute_logits({k: v.to(self.device) for k, v in inputs.items()})
            else:
                scores += self._mxbai(query, chunk)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return scores

    @torch.no_grad()
    def _mxbai(self, query: str, chunk: list[str]) -> list[float]:
        inputs = self.recipe.prepare_inputs([query] * len(chunk), chunk)  # the package's batch, padded as it pads
        logits = self.recipe.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits[:, -1]
        return (logits[:, self.recipe.yes_loc] - logits[:, self.recipe.no_loc]).float().tolist()


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def bench_reference(
    family: str, folder: Path, shape: str, payloads: list[dict], args: argparse.Namespace, device: str
) -> list[str]:
    reference = Reference(family, folder, device, args.reference_batch)
    reference.score(QUERY, payloads[0]["documents"][:2])  # warm-up
    first = payloads[0]["documents"]
    latency = [_timed(lambda: reference.score(QUERY, first)) for _ in range(args.latency_requests)]
    started = time.perf_counter()
    for payload in payloads[: args.requests]:
        reference.score(QUERY, payload["documents"])
    rate = args.docs * args.requests / (time.perf_counter() - started)
    system = {
        "qwen3": "reference: README recipe",
        "mxbai": "reference: mixedbread's package code",
        "modernbert": "reference: CrossEncoder.predict",
    }[family] + f", batches of {args.reference_batch}"
    return [shape, system, f"{statistics.median(latency):,.0f}", f"{rate:,.2f}", *["–"] * (len(args.concurrency) - 1)]


def bench_shape(model: str, args: argparse.Namespace, work: Path, device: str) -> list[list[str]]:
    family, _, shape = model.partition(":")
    model_id = MODEL_IDS[(family, shape)]
    folder = build(family, shape, Path(args.model_cache) / f"{family}-reranker-{shape}")
    tokenizer = AutoTokenizer.from_pretrained(folder)  # documents are sized in the model's own tokens
    payloads = [
        {"model": model_id, "query": QUERY, "documents": documents(args.docs, tokenizer, seed=i, high=args.max_tokens)}
        for i in range(max(args.requests, max(args.concurrency)))
    ]
    shape = model_id.split("/")[-1] + " shape"
    rows = [bench_reference(family, folder, shape, payloads, args, device)]
    env = {
        "BENTOML_HOME": str(work / f"bentoml-{family}-{shape}"),
        "RERANK_DEFAULT_MODEL": model_id,
        "RERANK_REQUEST_TIMEOUT_S": str(args.request_timeout_s),
    }
    import_into_store(model_id, folder, env)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serve_ours(env, work / f"ours-{family}.log"))
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
    parser.add_argument(
        "--models", type=lambda s: s.split(","), default=["qwen3:0.6B"],
        help="family:shape, of qwen3:0.6B|4B|8B, mxbai:base-v2|large-v2, modernbert:base",
    )  # fmt: skip
    parser.add_argument("--docs", type=int, default=10, help="documents per request")
    parser.add_argument("--max-tokens", type=int, default=240, help="longest document, in tokens (shortest: 32)")
    parser.add_argument("--requests", type=int, default=4, help="requests per throughput level (at least clients)")
    parser.add_argument("--latency-requests", type=int, default=3)
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4])
    parser.add_argument("--reference-batch", type=int, default=4, help="pairs per forward of the reference")
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--request-timeout-s", type=int, default=3600)
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    parser.add_argument("--key", default="", help="the table's place in docs/benchmarks.md (default: llm-<device>)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="rerank-llm-bench-"))
    rows = [row for model in args.models for row in bench_shape(model, args, work, device)]
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
        f"Real shapes with random weights, {dtype}; {args.docs} documents of 32–{args.max_tokens} tokens per request, "
        f"the default instruction.\n\n{table}"
    )
    print(markdown)
    if args.write:
        write(markdown, args.key or "llm-" + device)


if __name__ == "__main__":
    main()
