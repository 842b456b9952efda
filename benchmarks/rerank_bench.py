"""Rerank throughput and latency, three ways in one run, on the same pairs:

  reference  in-process `sentence_transformers.CrossEncoder.predict` (batch_size 32), no HTTP
  baseline   the original design: FastAPI calling predict per request (benchmarks/baseline_server.py)
  ours       `bentoml serve service:Reranker` (continuous batching, length-packed sub-batches)
  forward    (GPU only) the raw padded model forward on the same pairs: the bound

    python -m benchmarks.rerank_bench                         # MiniLM fixture + bge-base shape, CPU-sized
    python -m benchmarks.rerank_bench --models bge-base-shape --requests 20 --concurrency 1,8,32 --write

Prints a table; --write puts it into docs/benchmarks.md (between markers for this device, notes kept).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
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

from benchmarks.workload import QUERY, build_model, documents  # noqa: E402


@dataclass
class Row:
    model: str
    system: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput: dict[int, tuple[float, float]] = field(default_factory=dict)  # clients -> (pairs/s, tokens/s)
    after_burst_ms: float | None = None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server subprocess on a loopback port, stopped on exit."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log.open("wb")
        self.process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **env}, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.started = time.perf_counter()
        self.ready_s = self._wait()

    def _wait(self) -> float:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: see {self.log.name}")
            for path in ("/readyz", "/docs"):
                try:
                    if httpx.get(self.url + path, timeout=2).status_code == 200:
                        return time.perf_counter() - self.started
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        raise TimeoutError("server not ready")

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_: object) -> None:
        os.killpg(self.process.pid, 15)
        self.process.wait(timeout=60)
        self.log.close()


def import_into_store(model_id: str, model_dir: Path, env: dict[str, str]) -> None:
    """Import `model_dir` as `model_id` into the model store of `env`'s BENTOML_HOME, as a user would."""
    subprocess.run([sys.executable, "import_models.py", model_id, "--from-dir", str(model_dir)],
                   cwd=REPO, env={**os.environ, **env}, check=True, capture_output=True)  # fmt: skip


def serve_ours(env: dict[str, str], log: Path) -> Server:
    """`bentoml serve service:Reranker` on a free loopback port with `env`, ready when returned."""
    port = free_port()
    return Server([sys.executable, "-m", "bentoml", "serve", "service:Reranker", "--port", str(port)], env, port, log)


async def measure_http(url: str, payloads: list[dict], clients: int, tokens_per_request: int) -> tuple[float, float]:
    """(pairs/s, tokens/s) with `clients` concurrent clients sending every payload once; any failure stops the run."""
    queue = list(payloads)
    async with httpx.AsyncClient(base_url=url, timeout=3600) as http:

        async def worker() -> None:
            while queue:
                response = await http.post("/v1/rerank", json=queue.pop())
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code} {response.text[:200]} at {clients} clients")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    pairs = sum(len(p["documents"]) for p in payloads)
    return pairs / elapsed, tokens_per_request * len(payloads) / elapsed


class Encoder:
    """The reference, in-process: `CrossEncoder.predict` with its default batch size."""

    def __init__(self, model_dir: Path, device: str) -> None:
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(str(model_dir), device=device, model_kwargs={"dtype": dtype_for(device)})

    def latency_ms(self, payload: dict) -> float:
        started = time.perf_counter()
        self.model.predict([(payload["query"], d) for d in payload["documents"]])
        return (time.perf_counter() - started) * 1000

    def throughput(self, payloads: list[dict], tokens: int) -> tuple[float, float]:
        started = time.perf_counter()
        for payload in payloads:
            self.model.predict([(payload["query"], d) for d in payload["documents"]])
        elapsed = time.perf_counter() - started
        return sum(len(p["documents"]) for p in payloads) / elapsed, tokens * len(payloads) / elapsed


def http_latency_ms(url: str, payload: dict) -> float:
    started = time.perf_counter()
    httpx.post(f"{url}/v1/rerank", json=payload, timeout=3600).raise_for_status()
    return (time.perf_counter() - started) * 1000


def compare(name: str, encoder: Encoder, servers: dict[str, str], payloads: list[dict], args, tokens: int) -> list[Row]:
    """Every system measured in turn, request by request and level by level, so that a slow spell of a shared
    machine falls on all of them alike rather than on whichever ran at that moment."""
    rows = {"reference": Row(name, "reference: CrossEncoder.predict")}
    rows.update({system: Row(name, system) for system in servers})
    lat: dict[str, list[float]] = {system: [] for system in rows}
    encoder.latency_ms(payloads[0])
    for url in servers.values():
        http_latency_ms(url, payloads[0])  # warm-up
    for _ in range(args.latency_requests):
        lat["reference"].append(encoder.latency_ms(payloads[0]))
        for system, url in servers.items():
            lat[system].append(http_latency_ms(url, payloads[0]))
    for system, row in rows.items():
        row.p50_ms, row.p99_ms = statistics.median(lat[system]), percentile(lat[system], 0.99)
    rows["reference"].throughput[1] = encoder.throughput(payloads[: args.requests], tokens)
    for clients in args.concurrency:
        count = max(clients, args.requests)
        for system, url in servers.items():
            rows[system].throughput[clients] = asyncio.run(measure_http(url, payloads[:count], clients, tokens))
    for system, url in servers.items():
        rows[system].after_burst_ms = statistics.median(
            [http_latency_ms(url, payloads[0]) for _ in range(args.latency_requests)]
        )
    return list(rows.values())


def bench_forward(name: str, model_dir: Path, payloads: list[dict], args, tokens: int, device: str) -> Row:
    """The padded model forward alone, batch 100, tokens prepared in advance: what the hardware can do."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=dtype_for(device))
    model = model.to(device).eval()
    features = tokenizer([payloads[0]["query"]] * len(payloads[0]["documents"]), payloads[0]["documents"],
                         padding=True, truncation=True, max_length=512, return_tensors="pt").to(device)  # fmt: skip
    with torch.inference_mode():
        model(**features)
        torch.cuda.synchronize()
        started = time.perf_counter()
        runs = max(args.requests, 10)
        for _ in range(runs):
            model(**features)
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    row = Row(name, "forward: padded model call (bound)")
    row.throughput[1] = (len(payloads[0]["documents"]) * runs / elapsed, tokens * runs / elapsed)
    return row


def dtype_for(device: str) -> torch.dtype:
    return torch.float16 if device.startswith("cuda") else torch.float32


def run(args: argparse.Namespace) -> list[Row]:
    from transformers import AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="rerank-bench-"))
    rows: list[Row] = []
    for name in args.models:
        model_dir = build_model(name, Path(args.model_cache) / name)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        docs = [documents(args.docs, tokenizer, seed=i) for i in range(max(args.requests, max(args.concurrency)))]
        payloads = [{"query": QUERY, "documents": d, "model": f"bench/{name}"} for d in docs]
        tokens = sum(len(tokenizer(QUERY, d, truncation=True, max_length=512)["input_ids"]) for d in docs[0])
        env = {
            "BENTOML_HOME": str(work / "bentoml"),
            "RERANK_DEFAULT_MODEL": f"bench/{name}",
            # Throughput is measured with every request admitted: on a CPU, 32 queued 100-document requests take
            # longer than the default one-minute request timeout.
            "RERANK_REQUEST_TIMEOUT_S": str(args.request_timeout_s),
        }
        import_into_store(f"bench/{name}", model_dir, env)
        with contextlib.ExitStack() as stack:
            # Both servers stay up (idle while the other is measured).
            ours = stack.enter_context(serve_ours(env, work / f"ours-{name}.log"))
            baseline_port = free_port()
            baseline = stack.enter_context(Server(
                [sys.executable, "-m", "uvicorn", "benchmarks.baseline_server:app", "--port", str(baseline_port)],
                {"BASELINE_MODEL_DIR": str(model_dir), "BASELINE_DEVICE": device}, baseline_port,
                work / f"baseline-{name}.log",
            ))  # fmt: skip
            servers = {
                "baseline: original design": baseline.url,
                f"ours: bentoml serve (ready in {ours.ready_s:.1f} s)": ours.url,
            }
            rows += compare(name, Encoder(model_dir, device), servers, payloads, args, tokens)
        if device == "cuda":
            rows.append(bench_forward(name, model_dir, payloads, args, tokens, device))
    return rows


def table(rows: list[Row], concurrency: list[int]) -> str:
    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:,.0f}"

    head = "| model | system | 1 request p50 ms | p99 ms | p50 after burst ms | " + " | ".join(
        f"{c} client{'s' if c > 1 else ''}: pairs/s (tokens/s)" for c in concurrency
    )
    lines = [head + " |", "|" + "---|" * (5 + len(concurrency))]
    for row in rows:
        cells = [row.model, row.system, fmt(row.p50_ms), fmt(row.p99_ms), fmt(row.after_burst_ms)]
        for c in concurrency:
            pairs, tokens = row.throughput.get(c, (None, None))
            cells.append("–" if pairs is None else f"{pairs:,.1f} ({tokens:,.0f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"CPU ({os.cpu_count()} cores, {cpu}), torch {torch.__version__}"


def write(markdown: str, key: str) -> None:
    path = REPO / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- results:{key} -->", f"<!-- /results:{key} -->"
    block = f"{start}\n{markdown}\n{end}"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=lambda s: s.split(","), default=["minilm"])
    parser.add_argument("--docs", type=int, default=100, help="documents per request")
    parser.add_argument("--requests", type=int, default=8, help="requests per throughput level (at least clients)")
    parser.add_argument("--latency-requests", type=int, default=5, help="sequential requests for p50/p99")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8])
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--request-timeout-s", type=int, default=3600, help="RERANK_REQUEST_TIMEOUT_S of our server")
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    rows = run(args)
    command = "python -m benchmarks.rerank_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = (
        f"### {machine()} — {date.today().isoformat()}\n\n`{command.strip()}`\n\n"
        f"{args.docs} documents per request (32–480 tokens each, ~16-token query).\n\n{table(rows, args.concurrency)}"
    )
    print(markdown)
    if args.write:
        write(markdown, "cuda" if torch.cuda.is_available() else "cpu-" + "-".join(args.models))


if __name__ == "__main__":
    main()
