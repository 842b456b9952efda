"""Cold start: seconds from `bentoml serve` until `/readyz` answers and until the first rerank is answered.

python -m benchmarks.cold_start                       # bge-reranker-base shape (278M parameters), 3 starts
python -m benchmarks.cold_start --models minilm,bge-base-shape --starts 3 --write
python -m benchmarks.cold_start --backends torch,openvino-int8 --write    # also OpenVINO, with and without its cache

An OpenVINO model is compiled by its import's check run into a cache inside the stored model; the `no compiled
cache` rows empty that cache before every start, as a store that was copied without it (or to another CPU) would.
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

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.rerank_bench import import_into_store, machine, serve_ours, write  # noqa: E402
from benchmarks.workload import build_model  # noqa: E402


def starts(env: dict[str, str], home: Path, count: int, before_each=lambda: None) -> tuple[list[float], list[float]]:
    """Seconds until /readyz and until the first answer, for `count` starts of `bentoml serve`."""
    ready, answered = [], []
    for start in range(count):
        before_each()
        with serve_ours(env, home.parent / f"serve-{start}.log") as server:
            ready.append(server.ready_s)
            httpx.post(f"{server.url}/v1/rerank", json={"query": "q", "documents": ["d"]}, timeout=120)
            answered.append(time.perf_counter() - server.started)
    return ready, answered


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=lambda s: s.split(","), default=["bge-base-shape"])
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["torch"])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    lines = ["| model | backend | ready (/readyz) s, median | first answer s, median | all starts, ready s |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name in args.models:
        model_dir = build_model(name, Path(args.model_cache) / name)
        for backend in args.backends:
            home = Path(tempfile.mkdtemp(prefix="rerank-cold-")) / "bentoml"
            env = {"BENTOML_HOME": str(home), "RERANK_DEFAULT_MODEL": f"bench/{name}"}
            import_into_store(f"bench/{name}", model_dir, env, backend)
            runs = {backend: starts(env, home, args.starts)}
            if backend.startswith("openvino"):
                (cache,) = (home / "models").glob("*/*/openvino/cache")  # the store's layout: name/version/
                runs[f"{backend}, no compiled cache"] = starts(
                    env, home, args.starts, lambda cache=cache: shutil.rmtree(cache, ignore_errors=True)
                )
            for label, (ready, answered) in runs.items():
                lines.append(
                    f"| {name} | {label} | {statistics.median(ready):.1f} | {statistics.median(answered):.1f} "
                    f"| {', '.join(f'{s:.1f}' for s in ready)} |"
                )
                print(lines[-1], flush=True)
    command_line = "python -m benchmarks.cold_start " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = f"### {machine()} — {date.today().isoformat()}\n\n`{command_line.strip()}`\n\n" + "\n".join(lines)
    print(markdown)
    if args.write:
        write(markdown, "cold-start")


if __name__ == "__main__":
    main()
