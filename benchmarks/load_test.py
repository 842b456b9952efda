"""Load test on loopback: many requests of mixed sizes from many concurrent clients, every answer checked.

    python -m benchmarks.load_test                                    # 20,000 requests, 64 clients, own server
    python -m benchmarks.load_test --requests 1000 --concurrency 32   # the size CI runs (tests/test_load.py)
    python -m benchmarks.load_test --requests 3000 --concurrency 32 --cache-sizes 0,100000     # the cache's effect
    python -m benchmarks.load_test --url http://127.0.0.1:8000 --model BAAI/bge-reranker-base  # a running server

Requests are drawn from a pool of distinct payloads (1 to --max-docs documents of --words words) whose scores are
computed beforehand with `sentence_transformers.CrossEncoder.predict`: every 200 answer must rank the documents by
those scores and match them within --tolerance. Without --url the script starts `bentoml serve` on the MiniLM fixture
model (result cache off unless --cache-sizes says otherwise, so every request reaches the model) and stops it
afterwards. The payload pool is drawn from again and again: a repeated-query workload, on which the result cache's
effect shows (`--cache-sizes 0,100000`). Exit status 1 when any request failed (5xx, connection error, wrong
answer); --write records the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.rerank_bench import import_into_store, machine, percentile, serve_ours, write  # noqa: E402
from benchmarks.workload import WORDS, build_model  # noqa: E402

MODEL_ID = "bench/minilm"


@dataclass
class Payload:
    body: dict
    scores: list[float]


@dataclass
class Outcome:
    """What the run saw, counted by kind."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    connection_errors: int = 0
    wrong_answers: list[str] = field(default_factory=list)
    pairs: int = 0
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    @property
    def failed(self) -> bool:
        return bool(self.server_errors or self.connection_errors or self.wrong_answers)


def make_payloads(
    model_dir: Path, model_id: str, distinct: int, max_docs: int, words: tuple[int, int] = (2, 16), seed: int = 0
) -> list[Payload]:
    """`distinct` requests of mixed sizes with their reference scores (CrossEncoder.predict on the same weights)."""
    from sentence_transformers import CrossEncoder

    rng = random.Random(seed)
    reference = CrossEncoder(str(model_dir), device="cpu")
    payloads = []
    for i in range(distinct):
        query = " ".join(rng.choices(WORDS, k=rng.randint(3, 16))) + f" #{i}"
        docs = [" ".join(rng.choices(WORDS, k=rng.randint(*words))) for _ in range(rng.randint(1, max_docs))]
        scores = [float(s) for s in reference.predict([(query, d) for d in docs], batch_size=64)]
        payloads.append(Payload({"model": model_id, "query": query, "documents": docs}, scores))
    return payloads


def check(payload: Payload, body: dict, tolerance: float) -> str | None:
    """Why an answer is wrong, or None."""
    results = body.get("results", [])
    if sorted(r["index"] for r in results) != list(range(len(payload.scores))):
        return "the results do not cover every document once"
    for result in results:
        if abs(result["relevance_score"] - payload.scores[result["index"]]) > tolerance:
            return f"document {result['index']}: {result['relevance_score']} != {payload.scores[result['index']]}"
    ranked = [r["relevance_score"] for r in results]
    if ranked != sorted(ranked, reverse=True):
        return "the results are not sorted by score"
    return None


async def run_load(
    url: str, payloads: list[Payload], requests: int, concurrency: int, tolerance: float = 1e-4, seed: int = 1
) -> Outcome:
    """Send `requests` payloads drawn from `payloads` with `concurrency` clients; check every answer."""
    rng = random.Random(seed)
    plan = [rng.choice(payloads) for _ in range(requests)]
    outcome = Outcome()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while plan:
                payload = plan.pop()
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/rerank", json=payload.body)
                except httpx.TransportError:
                    outcome.connection_errors += 1
                    continue
                outcome.latencies_ms.append((time.perf_counter() - started) * 1000)
                outcome.statuses[response.status_code] = outcome.statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    outcome.pairs += len(payload.scores)
                    problem = check(payload, response.json(), tolerance)
                    if problem:
                        outcome.wrong_answers.append(problem)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        outcome.seconds = time.perf_counter() - started
    return outcome


def cache_counts(url: str) -> tuple[float, float]:
    """(hits, misses) of the server's result cache, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = {"rerank_cache_hits_total": 0.0, "rerank_cache_misses_total": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name in counts:
                counts[sample.name] += sample.value
    return counts["rerank_cache_hits_total"], counts["rerank_cache_misses_total"]


def measured_load(url: str, payloads: list[Payload], args: argparse.Namespace) -> tuple[Outcome, float | None]:
    """The load's outcome and the cache hit rate during it (None when nothing was looked up)."""
    hits_before, misses_before = cache_counts(url)
    outcome = asyncio.run(run_load(url, payloads, args.requests, args.concurrency, args.tolerance))
    hits, misses = cache_counts(url)
    lookups = (hits - hits_before) + (misses - misses_before)
    return outcome, (hits - hits_before) / lookups if lookups else None


def table(requests: int, concurrency: int, runs: list[tuple[str, Outcome, float | None]]) -> str:
    head = (
        "| result cache | requests | clients | answers by status | 5xx | connection errors | wrong answers "
        "| cache hit rate | p50 ms | p99 ms | requests/s | pairs/s |"
    )
    lines = [head, "|" + "---|" * 12]
    for cache, outcome, hit_rate in runs:
        latencies = outcome.latencies_ms or [0.0]
        statuses = ", ".join(f"{status}: {count:,}" for status, count in sorted(outcome.statuses.items()))
        lines.append(
            f"| {cache} | {requests:,} | {concurrency} | {statuses} | {outcome.server_errors} "
            f"| {outcome.connection_errors} | {len(outcome.wrong_answers)} "
            f"| {'–' if hit_rate is None else f'{hit_rate:.0%}'} | {percentile(latencies, 0.5):,.0f} "
            f"| {percentile(latencies, 0.99):,.0f} | {requests / outcome.seconds:,.1f} "
            f"| {outcome.pairs / outcome.seconds:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--distinct", type=int, default=200, help="distinct payloads (each scored beforehand)")
    parser.add_argument("--max-docs", type=int, default=8, help="most documents in one request")
    parser.add_argument(
        "--words", type=lambda s: tuple(int(n) for n in s.split("-")), default=(2, 16), help="document length range"
    )
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest |score - reference| accepted")
    parser.add_argument("--url", help="a running server (default: start one on the MiniLM fixture)")
    parser.add_argument("--model", default=MODEL_ID, help="the model id the running server serves (with --url)")
    parser.add_argument("--model-dir", type=Path, help="its weights, for the reference scores (with --url)")
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument(
        "--cache-sizes", type=lambda s: [int(n) for n in s.split(",")], default=[0],
        help="RERANK_CACHE_SIZE of the started server, one run each (e.g. 0,100000: the cache's effect)",
    )  # fmt: skip
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)

    model_dir = args.model_dir or build_model("minilm", Path(args.model_cache) / "minilm")
    payloads = make_payloads(model_dir, args.model, args.distinct, args.max_docs, args.words)
    runs: list[tuple[str, Outcome, float | None]] = []
    if args.url:
        runs.append(("(the server's)", *measured_load(args.url, payloads, args)))
    for size in [] if args.url else args.cache_sizes:
        home = Path(tempfile.mkdtemp(prefix="rerank-load-")) / "bentoml"
        env = {"BENTOML_HOME": str(home), "RERANK_DEFAULT_MODEL": MODEL_ID, "RERANK_CACHE_SIZE": str(size)}
        import_into_store(MODEL_ID, model_dir, env)
        with serve_ours(env, home.parent / "serve.log") as server:
            runs.append((f"{size:,} entries" if size else "off", *measured_load(server.url, payloads, args)))
    command_line = "python -m benchmarks.load_test " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = (
        f"### {machine()} — {date.today().isoformat()}\n\n`{command_line.strip()}`\n\n"
        f"1–{args.max_docs} documents of {args.words[0]}–{args.words[1]} words per request, "
        f"{args.distinct} distinct payloads, "
        f"every answer checked against CrossEncoder.predict (±{args.tolerance:g}).\n\n"
        f"{table(args.requests, args.concurrency, runs)}"
    )
    print(markdown)
    for _, outcome, _ in runs:
        for problem in outcome.wrong_answers[:5]:
            print("wrong answer:", problem)
    if args.write:
        key = "load-" + ("cuda" if torch.cuda.is_available() else "cpu") + ("-cache" if any(args.cache_sizes) else "")
        write(markdown, key)
    return 1 if any(outcome.failed for _, outcome, _ in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
