"""Rerank throughput and latency of several systems in one run, on the same pairs:

  reference  in-process `sentence_transformers.CrossEncoder.predict` (batch_size 32), no HTTP
  baseline   the original design: FastAPI calling predict per request (benchmarks/baseline_server.py)
  ours       `bentoml serve service:Reranker` (continuous batching, length-packed sub-batches), the model imported
             with each `--backends` choice
  infinity   (--peers infinity) Infinity 0.0.78, torch engine, in a virtualenv of its own that this script creates
             under --model-cache (never a dependency of this project)
  forward    (GPU only) the raw padded model forward on the same pairs: the bound

    python -m benchmarks.rerank_bench                         # MiniLM fixture, CPU-sized
    python -m benchmarks.rerank_bench --models bge-base-shape --backends torch,openvino-int8 --peers infinity \
        --docs 20 --latency-docs 100 --requests 16 --concurrency 8 --write      # the CPU peers table

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
from rerank_server.cpu import cpu_class as class_of_cpu  # noqa: E402
from rerank_server.cpu import usable_cpus  # noqa: E402


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
    """A server subprocess on a loopback port, stopped on exit; `route` is where it takes rerank requests."""

    def __init__(
        self, command: list[str], env: dict[str, str], port: int, log: Path, route: str = "/v1/rerank", cwd: Path = REPO
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.route = route
        self.log = log.open("wb")
        self.process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env}, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.started = time.perf_counter()
        self.ready_s = self._wait()

    def _wait(self) -> float:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: see {self.log.name}")
            for path in ("/readyz", "/docs", "/health"):
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


def import_into_store(model_id: str, model_dir: Path, env: dict[str, str], backend: str = "torch") -> str:
    """Import `model_dir` as `model_id` for `backend` into the model store of `env`'s BENTOML_HOME, as a user would;
    what `--backend auto` chose for this CPU ("" for a named backend).

    `auto` runs without its fidelity gate here: the benchmark's bge shapes have random weights whose scores are all
    nearly equal, so their rankings mean nothing; `auto` then stores the fastest path of this CPU's class, the one a
    real model that keeps its rankings gets (benchmarks/cpu_backends.py measures the fidelity on the MiniLM fixture)."""
    command = [sys.executable, "import_models.py", model_id, "--from-dir", str(model_dir), "--backend", backend]
    if backend == "auto":
        command += ["--min-spearman", "0"]
    run = subprocess.run(command, cwd=REPO, env={**os.environ, **env}, check=True, capture_output=True, text=True)
    chosen = [line for line in run.stdout.splitlines() if line.strip().startswith("for this CPU:")]
    return chosen[0].split(":", 2)[1].strip() if chosen and backend == "auto" else ""


INFINITY = "infinity-emb[server,torch]==0.0.78"


def infinity_venv(root: Path) -> Path:
    """A virtualenv holding Infinity (it pins transformers 4, sentence-transformers 3 and numpy 1, which cannot live
    beside this project's), created once; torch is the same build as ours, so both run the same kernels."""
    venv = root / "infinity-venv"
    if not (venv / "bin" / "infinity_emb").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "--quiet"]
        subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True)
        subprocess.run([*pip, INFINITY], check=True)
    return venv


def serve_infinity(venv: Path, model_dir: Path, log: Path) -> Server:
    """Infinity's server on `model_dir` as its docs run it on a CPU, offline, ready when returned."""
    port = free_port()
    command = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", str(model_dir), "--engine", "torch",
               "--device", "cpu", "--no-bettertransformer", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_HOME": str(venv)}
    return Server(command, env, port, log, route="/rerank", cwd=venv)


def serve_ours(env: dict[str, str], log: Path) -> Server:
    """`bentoml serve service:Reranker` on a free loopback port with `env`, ready when returned."""
    port = free_port()
    return Server([sys.executable, "-m", "bentoml", "serve", "service:Reranker", "--port", str(port)], env, port, log)


async def measure_http(
    server: Server, payloads: list[dict], clients: int, tokens_per_request: int
) -> tuple[float, float]:
    """(pairs/s, tokens/s) with `clients` concurrent clients sending every payload once; any failure stops the run."""
    queue = list(payloads)
    async with httpx.AsyncClient(base_url=server.url, timeout=3600) as http:

        async def worker() -> None:
            while queue:
                response = await http.post(server.route, json=queue.pop())
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


def http_latency_ms(server: Server, payload: dict) -> float:
    started = time.perf_counter()
    httpx.post(f"{server.url}{server.route}", json=payload, timeout=3600).raise_for_status()
    return (time.perf_counter() - started) * 1000


def compare(
    name: str,
    encoder: Encoder,
    servers: dict[str, Server],
    payloads: list[dict],
    latency_payload: dict,
    args,
    tokens: int,
) -> list[Row]:
    """Every system measured in turn, request by request and level by level, so that a slow spell of a shared
    machine falls on all of them alike rather than on whichever ran at that moment."""
    rows = {"reference": Row(name, "reference: CrossEncoder.predict")}
    rows.update({system: Row(name, system) for system in servers})
    lat: dict[str, list[float]] = {system: [] for system in rows}
    encoder.latency_ms(latency_payload)
    for server in servers.values():
        http_latency_ms(server, latency_payload)  # warm-up
    for _ in range(args.latency_requests):
        lat["reference"].append(encoder.latency_ms(latency_payload))
        for system, server in servers.items():
            lat[system].append(http_latency_ms(server, latency_payload))
    for system, row in rows.items():
        row.p50_ms, row.p99_ms = statistics.median(lat[system]), percentile(lat[system], 0.99)
    rows["reference"].throughput[1] = encoder.throughput(payloads[: args.requests], tokens)
    for clients in args.concurrency:
        count = max(clients, args.requests)
        for system, server in servers.items():
            rows[system].throughput[clients] = asyncio.run(measure_http(server, payloads[:count], clients, tokens))
    for system, server in servers.items():
        rows[system].after_burst_ms = statistics.median(
            [http_latency_ms(server, latency_payload) for _ in range(args.latency_requests)]
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
    venv = infinity_venv(Path(args.model_cache)) if "infinity" in args.peers else None
    rows: list[Row] = []
    for name in args.models:
        model_dir = build_model(name, Path(args.model_cache) / name)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        docs = [documents(args.docs, tokenizer, seed=i) for i in range(max(args.requests, max(args.concurrency)))]
        payloads = [{"query": QUERY, "documents": d} for d in docs]
        latency_payload = {"query": QUERY, "documents": documents(args.latency_docs or args.docs, tokenizer, seed=0)}
        tokens = sum(len(tokenizer(QUERY, d, truncation=True, max_length=512)["input_ids"]) for d in docs[0])
        with contextlib.ExitStack() as stack:
            # Every server stays up (idle while another is measured).
            servers: dict[str, Server] = {}
            baseline_port = free_port()
            servers["baseline: original design"] = stack.enter_context(Server(
                [sys.executable, "-m", "uvicorn", "benchmarks.baseline_server:app", "--port", str(baseline_port)],
                {"BASELINE_MODEL_DIR": str(model_dir), "BASELINE_DEVICE": device}, baseline_port,
                work / f"baseline-{name}.log",
            ))  # fmt: skip
            if venv is not None:
                infinity = stack.enter_context(serve_infinity(venv, model_dir, work / f"infinity-{name}.log"))
                servers[f"infinity 0.0.78, torch engine (ready in {infinity.ready_s:.1f} s)"] = infinity
            for spec in args.backends:
                backend, _, dtype = spec.partition(":")  # torch:bfloat16 = torch with RERANK_DTYPE=bfloat16
                env = {
                    "BENTOML_HOME": str(work / f"bentoml-{spec.replace(':', '-')}"),
                    "RERANK_DEFAULT_MODEL": f"bench/{name}",
                    "RERANK_DTYPE": dtype or "auto",
                    # Throughput is measured with every request admitted: on a CPU, 32 queued 100-document requests
                    # take longer than the default one-minute request timeout.
                    "RERANK_REQUEST_TIMEOUT_S": str(args.request_timeout_s),
                }
                chosen = import_into_store(f"bench/{name}", model_dir, env, backend)
                ours = stack.enter_context(serve_ours(env, work / f"ours-{name}-{spec.replace(':', '-')}.log"))
                label = f"{spec} ({chosen})" if chosen else spec
                servers[f"ours: bentoml serve, {label} (ready in {ours.ready_s:.1f} s)"] = ours
            rows += compare(name, Encoder(model_dir, device), servers, payloads, latency_payload, args, tokens)
        if device == "cuda":
            rows.append(bench_forward(name, model_dir, payloads, args, tokens, device))
    return rows


def table(rows: list[Row], concurrency: list[int], latency_docs: int) -> str:
    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:,.0f}"

    head = f"| model | system | {latency_docs}-doc request p50 ms | p99 ms | p50 after burst ms | " + " | ".join(
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


def cpu_class() -> str:
    """The CPU's model name and the matrix units that change CPU results most (AMX, AVX-512 bf16 / VNNI)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    units = [unit for unit in ("amx_bf16", "avx512_bf16", "avx512_vnni") if unit in flags]
    amx = "" if "amx_bf16" in flags else ", no AMX"
    return f"{name or platform.machine()}; {' '.join(units) or 'no AVX-512'}{amx}"


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores, {cpu_class()}), torch {torch.__version__}"


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


def report(module: str, argv: list[str] | None, setup: str, lines: list[str], key: str | None) -> None:
    """Print a result table under its heading (machine, CPU class, date), the command that made it and one line on
    its setup; with `key`, also record it in docs/benchmarks.md (the CPU-path scripts share this form)."""
    command = f"python -m benchmarks.{module} " + " ".join(argv if argv is not None else sys.argv[1:])
    heading = f"### {machine()}, CPU class {class_of_cpu()} — {date.today().isoformat()}"
    markdown = f"{heading}\n\n`{command.strip()}`\n\n{setup}\n\n" + "\n".join(lines)
    print(markdown)
    if key:
        write(markdown, key)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=lambda s: s.split(","), default=["minilm"])
    parser.add_argument("--docs", type=int, default=100, help="documents per request")
    parser.add_argument("--latency-docs", type=int, default=0, help="documents in the latency requests (0: --docs)")
    parser.add_argument(
        "--backends",
        type=lambda s: s.split(","),
        default=["torch"],
        help="ours, imported for each (torch:bfloat16: RERANK_DTYPE=bfloat16)",
    )
    parser.add_argument("--peers", type=lambda s: s.split(","), default=[], help="other servers: infinity")
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
        f"{args.docs} documents per request in the throughput columns, {args.latency_docs or args.docs} in the latency "
        f"columns (32–480 tokens each, ~16-token query); {usable_cpus()} CPU threads per system.\n\n"
        f"{table(rows, args.concurrency, args.latency_docs or args.docs)}"
    )
    print(markdown)
    if args.write:
        write(markdown, "cuda" if torch.cuda.is_available() else "cpu-" + "-".join(args.models + args.peers))


if __name__ == "__main__":
    main()
