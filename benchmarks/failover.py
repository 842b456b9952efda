"""Two replicas behind a real load balancer (nginx), one of them stopped and later killed while load runs.

    python -m benchmarks.failover           # 60 s of load, 16 clients; needs nginx (apt-get install nginx-light)
    python -m benchmarks.failover --write

What a cluster does, on one machine: replicas A and B (`bentoml serve`, the MiniLM fixture) behind nginx, which
retries a request on the other replica when one refuses the connection, closes it unanswered, or answers 502/503
(`proxy_next_upstream ... non_idempotent`: a rerank POST has no side effects, so it is safe to send again). While
clients send mixed requests through nginx, every answer checked against `CrossEncoder.predict`:

  1. at --sigterm-at s, A gets SIGTERM (a rollout, a scale-down): it finishes what it holds and exits;
  2. A is started again and rejoins once ready;
  3. at --sigkill-at s, B gets SIGKILL (a crash, an OOM kill): its requests in flight are cut off.

Counted: answers by status, wrong answers, requests whose client saw a failure, requests lost (no answer at all
within the client's timeout), and the requests nginx sent to a second replica. Exit status 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.load_test import MODEL_ID, Payload, check, make_payloads  # noqa: E402
from benchmarks.rerank_bench import Server, free_port, import_into_store, machine, percentile, write  # noqa: E402
from benchmarks.workload import build_model  # noqa: E402

NGINX_CONF = """
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    log_format upstreams '$status $request_time "$upstream_addr" "$upstream_status"';
    access_log {work}/nginx-access.log upstreams;
    client_max_body_size 32m;
    upstream rerank {{
        # A replica that failed is left alone for 2 s, then tried again (it may have been restarted).
        server 127.0.0.1:{port_a} max_fails=1 fail_timeout=2s;
        server 127.0.0.1:{port_b} max_fails=1 fail_timeout=2s;
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://rerank;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Refused, closed unanswered, or refused by a draining/overloaded replica: try the other one.
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 2s;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


@dataclass
class Outcome:
    statuses: dict[int, int] = field(default_factory=dict)
    client_errors: list[str] = field(default_factory=list)  # the client saw the request fail (transport error)
    lost: int = 0  # no answer within the client's timeout
    wrong: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    pairs: int = 0
    seconds: float = 0.0

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len(self.client_errors) + self.lost

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != 200) + len(self.client_errors) + self.lost


class Replica:
    """One `bentoml serve` replica on a fixed port, which can be stopped, killed and started again."""

    def __init__(self, name: str, port: int, env: dict[str, str], work: Path) -> None:
        self.name, self.port, self.env, self.work = name, port, env, work
        self.starts = 0
        self.server: Server | None = None

    def start(self) -> None:
        self.starts += 1
        command = [sys.executable, "-m", "bentoml", "serve", "service:Reranker", "--port", str(self.port)]
        self.server = Server(command, self.env, self.port, self.work / f"{self.name}-{self.starts}.log")

    def signal(self, signum: int) -> None:
        """As a container runtime does: SIGTERM to the main process only, SIGKILL to every process of the pod."""
        assert self.server is not None
        if signum == signal.SIGKILL:
            os.killpg(self.server.process.pid, signum)
        else:
            os.kill(self.server.process.pid, signum)

    def wait(self) -> int:
        assert self.server is not None
        return self.server.process.wait(timeout=120)


async def load(url: str, payloads: list[Payload], clients: int, seconds: float, timeout: float) -> Outcome:
    outcome = Outcome()
    rng = random.Random(7)
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:

        async def client() -> None:
            while time.monotonic() < deadline:
                payload = rng.choice(payloads)
                started = time.perf_counter()
                try:
                    response = await http.post("/v1/rerank", json=payload.body)
                except httpx.TimeoutException:
                    outcome.lost += 1
                    continue
                except httpx.TransportError as exc:
                    outcome.client_errors.append(type(exc).__name__)
                    continue
                outcome.latencies_ms.append((time.perf_counter() - started) * 1e3)
                outcome.statuses[response.status_code] = outcome.statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    outcome.pairs += len(payload.scores)
                    if problem := check(payload, response.json(), 1e-4):
                        outcome.wrong.append(problem)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        outcome.seconds = time.perf_counter() - started
    return outcome


async def faults(a: Replica, b: Replica, sigterm_at: float, sigkill_at: float, events: list[str]) -> None:
    started = time.monotonic()

    def note(text: str) -> None:
        events.append(f"{time.monotonic() - started:5.1f} s  {text}")

    await asyncio.sleep(sigterm_at)
    note("SIGTERM to A")
    a.signal(signal.SIGTERM)
    code = await asyncio.to_thread(a.wait)
    note(f"A drained and exited ({code})")
    await asyncio.to_thread(a.start)
    note("A restarted and ready")
    await asyncio.sleep(max(0.0, sigkill_at - (time.monotonic() - started)))
    note("SIGKILL to B")
    b.signal(signal.SIGKILL)
    b.wait()


async def scenario(url: str, payloads: list[Payload], a: Replica, b: Replica, args) -> tuple[Outcome, list[str]]:
    events: list[str] = []
    outcome, _ = await asyncio.gather(
        load(url, payloads, args.clients, args.seconds, args.timeout),
        faults(a, b, args.sigterm_at, args.sigkill_at, events),
    )
    return outcome, events


def retried(access_log: Path) -> int:
    """Requests nginx sent to a second replica (its `$upstream_addr` lists two)."""
    return sum(1 for line in access_log.read_text().splitlines() if ", " in line.split('"')[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load runs")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--sigterm-at", type=float, default=10.0)
    parser.add_argument("--sigkill-at", type=float, default=40.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="the clients' timeout: no answer by then = lost")
    parser.add_argument("--max-docs", type=int, default=20)
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if nginx is None:
        sys.exit("error: nginx is not installed (Debian/Ubuntu: apt-get install nginx-light)")

    model_dir = build_model("minilm", Path(args.model_cache) / "minilm")
    payloads = make_payloads(model_dir, MODEL_ID, 100, args.max_docs, words=(4, 40))
    work = Path(tempfile.mkdtemp(prefix="rerank-failover-"))
    replicas = []
    for name in ("A", "B"):
        # A home each, as two pods have: BentoML wipes its Prometheus folder under the home at every start.
        env = {"BENTOML_HOME": str(work / f"home-{name}"), "RERANK_DEFAULT_MODEL": MODEL_ID}
        import_into_store(MODEL_ID, model_dir, env)
        replicas.append(Replica(name, free_port(), env, work))
    a, b = replicas
    for replica in replicas:
        replica.start()
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, port=port, port_a=a.port, port_b=b.port))
    proxy = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)], start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(50):
            try:
                httpx.get(f"{url}/readyz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        outcome, events = asyncio.run(scenario(url, payloads, a, b, args))
    finally:
        proxy.terminate()
        proxy.wait()
        for replica in replicas:
            if replica.server is not None and replica.server.process.poll() is None:
                replica.signal(signal.SIGTERM)
                replica.wait()

    latencies = outcome.latencies_ms or [0.0]
    statuses = ", ".join(f"{status}: {count:,}" for status, count in sorted(outcome.statuses.items()))
    lines = [
        "| requests | answers by status | wrong answers | failures the client saw | lost (no answer) "
        "| retried on the other replica | p50 ms | p99 ms | max ms | pairs/s |",
        "|" + "---|" * 10,
        f"| {outcome.sent:,} | {statuses} | {len(outcome.wrong)} | {outcome.failed} | {outcome.lost} "
        f"| {retried(work / 'nginx-access.log')} | {percentile(latencies, 0.5):,.0f} "
        f"| {percentile(latencies, 0.99):,.0f} | {max(latencies):,.0f} | {outcome.pairs / outcome.seconds:,.0f} |",
    ]
    command = "python -m benchmarks.failover " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = (
        f"### {machine()} — {date.today().isoformat()}\n\n`{command.strip()}`\n\n"
        f"Two replicas behind nginx {nginx_version(nginx)}, {args.clients} clients for {args.seconds:.0f} s, "
        f"1–{args.max_docs} documents per request, every answer checked against CrossEncoder.predict.\n\n"
        + "\n".join(lines)
        + "\n\nEvents:\n\n```\n"
        + "\n".join(events)
        + "\n```"
    )
    print(markdown)
    for problem in (outcome.wrong + outcome.client_errors)[:5]:
        print("failure:", problem)
    if args.write:
        write(markdown, "failover")
    return 1 if outcome.failed or outcome.wrong else 0


def nginx_version(nginx: str) -> str:
    run = subprocess.run([nginx, "-v"], capture_output=True, text=True)
    return run.stderr.strip().rpartition("/")[2] or "?"


if __name__ == "__main__":
    sys.exit(main())
