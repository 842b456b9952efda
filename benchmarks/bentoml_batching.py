"""What a lone request pays through BentoML's adaptive batching: the batchable `/score_pairs` against `/v1/rerank` on
the same pairs (the route goes straight to the continuous batcher), at rest and right after a burst, for several
`max_batch_size` / `max_latency_ms` / wait-cap choices (RERANK_API_MAX_BATCH_PAIRS / RERANK_API_MAX_LATENCY_MS /
RERANK_API_MAX_WAIT_MS; a cap of 60000 ms leaves BentoML's learned wait as BentoML has it).

    python -m benchmarks.bentoml_batching                     # MiniLM fixture, 20 pairs per lone request
    python -m benchmarks.bentoml_batching --model bge-base-shape --write

BentoML's dispatcher holds one hand-over at a time and learns how long to wait for partners from the waits it saw;
after a burst (calls queued behind a running batch) it has seen long waits, and a lone call may wait for partners
that never come. The table shows how much, and what the cap (rerank_server/serving/dispatcher.py) leaves of it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.rerank_bench import import_into_store, machine, serve_ours, write  # noqa: E402
from benchmarks.workload import QUERY, build_model, documents  # noqa: E402

MODEL_ID = "bench/batching-model"


def _lone(url: str, route: str, payload: dict, count: int) -> list[float]:
    """Milliseconds of `count` requests sent one after another."""
    seconds = []
    with httpx.Client(base_url=url, timeout=600) as http:
        for _ in range(count):
            started = time.perf_counter()
            http.post(route, json=payload).raise_for_status()
            seconds.append((time.perf_counter() - started) * 1000)
    return seconds


async def _burst(url: str, payload: dict, calls: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        answers = await asyncio.gather(*(http.post("/score_pairs", json=payload) for _ in range(calls)))
    assert all(a.status_code == 200 for a in answers), {a.status_code for a in answers}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--pairs", type=int, default=20, help="pairs per lone request")
    parser.add_argument("--burst", type=int, default=32, help="concurrent calls in the burst")
    parser.add_argument("--lone", type=int, default=15, help="lone requests per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="bursts, each followed by 5 lone calls")
    parser.add_argument(
        "--configs", type=lambda s: [tuple(int(v) for v in c.split(":")) for c in s.split(",")],
        default=[(1024, 60000, 60000), (1024, 60000, 10), (256, 60000, 10), (1024, 2000, 10)],
        help="max_batch_size:max_latency_ms:max_wait_ms,...",
    )  # fmt: skip
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rerank-bentoml-batching-"))
    env = {"BENTOML_HOME": str(work / "bentoml"), "RERANK_DEFAULT_MODEL": MODEL_ID}
    model_dir = build_model(args.model, Path(args.model_cache) / args.model)
    import_into_store(MODEL_ID, model_dir, env)
    from transformers import AutoTokenizer

    docs = documents(args.pairs, AutoTokenizer.from_pretrained(str(model_dir)), seed=11)
    route_payload = {"query": QUERY, "documents": docs}
    api_payload = {"pairs": [{"model": MODEL_ID, "query": QUERY, "document": d} for d in docs]}
    lines = [
        "| max_batch_size | max_latency_ms | wait cap, ms | `/v1/rerank` lone, p50 ms | `/score_pairs` lone, p50 ms "
        "| overhead | after each burst: 5 calls, mean ms | after a burst: overhead | refused in the bursts |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for max_batch, max_latency, max_wait in args.configs:
        config = {
            "RERANK_API_MAX_BATCH_PAIRS": str(max_batch),
            "RERANK_API_MAX_LATENCY_MS": str(max_latency),
            "RERANK_API_MAX_WAIT_MS": str(max_wait),
        }
        with serve_ours({**env, **config}, work / f"serve-{max_batch}-{max_latency}-{max_wait}.log") as server:
            _lone(server.url, "/v1/rerank", route_payload, 3)  # warm-up
            _lone(server.url, "/score_pairs", api_payload, 10)  # BentoML's dispatcher trains on its first calls
            route = statistics.median(_lone(server.url, "/v1/rerank", route_payload, args.lone))
            api = statistics.median(_lone(server.url, "/score_pairs", api_payload, args.lone))
            refused = "none"
            after: list[float] = []
            for _ in range(args.rounds):
                try:
                    asyncio.run(_burst(server.url, api_payload, args.burst))
                except AssertionError as exc:
                    refused = f"statuses {exc}"
                after += _lone(server.url, "/score_pairs", api_payload, 5)
            mean_after = statistics.mean(after)
        lines.append(
            f"| {max_batch} | {max_latency} | {max_wait} | {route:.0f} | {api:.0f} | {api - route:+.0f} ms "
            f"| {mean_after:.0f} | {mean_after - route:+.0f} ms | {refused} |"
        )
        print(lines[-1], flush=True)
    command = "python -m benchmarks.bentoml_batching " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = (
        f"### {machine()} — {date.today().isoformat()}\n\n`{command.strip()}` ({args.model}, {args.pairs} pairs per "
        f"lone request, {args.rounds} bursts of {args.burst} calls)\n\n" + "\n".join(lines)
    )
    print(markdown)
    if args.write:
        write(markdown, "bentoml-batching-" + ("cuda" if machine().startswith("NVIDIA") else "cpu"))


if __name__ == "__main__":
    main()
