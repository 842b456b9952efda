"""The host-side ceiling: how many pairs/s the server's own path sustains with the model forward made free.

    python -m benchmarks.host_ceiling                                   # 1 worker; 1, 8 and 32 clients
    python -m benchmarks.host_ceiling --workers 1,2 --write             # also RERANK_WORKERS=2

`bentoml serve service:Reranker` runs as users run it, except that `benchmarks/standin/sitecustomize.py` (put on the
server's PYTHONPATH) replaces the model forward with a zero-cost stand-in. Everything else is real: HTTP, JSON,
validation, tokenization, the queue, batching, padding, the response. Requests are 100 documents whose pairs are
~256 tokens (the shape the H100 forward was measured on), with the GPU's token budget and batch size. Besides pairs/s,
the server's CPU time over the run gives the cost per pair on one core: `pairs per CPU-second` is what one core of a
GPU host can feed, and what the projection to a bigger host multiplies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.rerank_bench import import_into_store, machine, serve_ours, write  # noqa: E402
from benchmarks.workload import QUERY, build_model, documents  # noqa: E402
from rerank_server.cpu import usable_cpus  # noqa: E402

MODEL_ID = "bench/minilm"
# The padded fp16 forward of the bge-reranker-base shape at 256 tokens on one H100 (docs/benchmarks.md).
H100_FORWARD_PAIRS_PER_S = 6_897


@dataclass
class Level:
    workers: int
    clients: int
    pairs_per_s: float
    p50_ms: float
    server_cpu_s: float
    pairs: int

    @property
    def pairs_per_cpu_s(self) -> float:
        return self.pairs / self.server_cpu_s


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants (the BentoML supervisor and its workers)."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


async def drive(url: str, body: bytes, requests: int, clients: int) -> tuple[float, list[float]]:
    """Send `requests` copies of `body` from `clients` concurrent clients; seconds taken and each latency."""
    latencies: list[float] = []
    left = requests
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                started = time.perf_counter()
                response = await http.post("/v1/rerank", content=body, headers={"content-type": "application/json"})
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - started, latencies


def measure(url: str, pid: int, body: bytes, docs: int, requests: int, clients: int, workers: int) -> Level:
    asyncio.run(drive(url, body, max(clients, 4), clients))  # warm-up: connections, first allocations
    before = cpu_seconds(pid)
    seconds, latencies = asyncio.run(drive(url, body, requests, clients))
    used = cpu_seconds(pid) - before
    return Level(workers, clients, requests * docs / seconds, statistics.median(latencies) * 1e3, used, requests * docs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[1])
    parser.add_argument("--clients", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=96, help="requests per level")
    parser.add_argument("--docs", type=int, default=100, help="documents per request")
    parser.add_argument("--pair-tokens", type=int, default=256, help="tokens per (query, document) pair")
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    model_dir = build_model("minilm", Path(args.model_cache) / "minilm")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    query_tokens = len(tokenizer(QUERY, add_special_tokens=False)["input_ids"])
    room = args.pair_tokens - query_tokens - 3  # [CLS] query [SEP] document [SEP]
    docs = documents(args.docs, tokenizer, seed=1, low=room, high=room)
    body = json.dumps({"query": QUERY, "documents": docs, "model": MODEL_ID}).encode()
    tokens = sum(len(tokenizer(QUERY, d)["input_ids"]) for d in docs) / len(docs)

    work = Path(tempfile.mkdtemp(prefix="rerank-host-ceiling-"))
    env = {
        "BENTOML_HOME": str(work / "bentoml"),
        "RERANK_DEFAULT_MODEL": MODEL_ID,
        "RERANK_TOKEN_BUDGET": "16384",  # the GPU's default: the host path as it runs in front of a GPU
        "RERANK_REQUEST_TIMEOUT_S": "600",
    }
    import_into_store(MODEL_ID, model_dir, env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "benchmarks" / "standin"), str(REPO)])
    levels: list[Level] = []
    for workers in args.workers:
        with serve_ours({**env, "RERANK_WORKERS": str(workers)}, work / f"serve-{workers}.log") as server:
            for clients in args.clients:
                levels.append(measure(server.url, server.process.pid, body, args.docs, args.requests, clients, workers))
                print(levels[-1], flush=True)

    cores = usable_cpus()
    lines = [
        "| workers | clients | pairs/s | request p50 ms | server CPU s per 1,000 pairs | pairs per CPU-second |",
        "|---|---|---|---|---|---|",
    ]
    for level in levels:
        lines.append(
            f"| {level.workers} | {level.clients} | {level.pairs_per_s:,.0f} | {level.p50_ms:,.0f} "
            f"| {1000 * level.server_cpu_s / level.pairs:.3f} | {level.pairs_per_cpu_s:,.0f} |"
        )
    best = max(level.pairs_per_cpu_s for level in levels)
    command = "python -m benchmarks.host_ceiling " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = (
        f"### {machine()} — {date.today().isoformat()}\n\n`{command.strip()}`\n\n"
        f"{args.docs}-document requests of {tokens:.0f}-token pairs, model forward replaced by a zero-cost stand-in, "
        f"{cores} cores shared by the server and the load generator. Server CPU time counts the supervisor and all "
        f"workers.\n\n" + "\n".join(lines) + "\n\n"
        f"Per core: {best:,.0f} pairs per CPU-second. On a 16-core GPU host with one core left to the model threads "
        f"and the load balancer, 15 × {best:,.0f} = {15 * best:,.0f} pairs/s of host path, "
        f"{15 * best / H100_FORWARD_PAIRS_PER_S:.1f}× the H100's {H100_FORWARD_PAIRS_PER_S:,} pairs/s forward "
        f"(bge-reranker-base shape, fp16, 256 tokens), when as many workers run as the cores can feed."
    )
    print(markdown)
    if args.write:
        write(markdown, "host-ceiling")


if __name__ == "__main__":
    main()
