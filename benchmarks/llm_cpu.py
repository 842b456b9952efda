"""LLM rerankers on a CPU (issue #31): the paths `import_models.py --backend auto` can store for them, torch in float32
and in bfloat16 (the converted CPU runtimes take BERT-family cross-encoders only), timed on the real shapes and checked
on the tiny fixtures.

    python -m benchmarks.llm_cpu                     # Qwen3-Reranker-0.6B and mxbai-rerank-base-v2 shapes
    python -m benchmarks.llm_cpu --write

Speed: the server's scorer in-process (its prompt, its length-sorted passes under the CPU token budget), random
weights of the real shape, documents of 32-240 tokens. Fidelity: the tiny random fixtures of the tests, each path's
raw scores against float32 on the import's probe lists (rerank_server/importer/fidelity.py), worst list deciding.
bfloat16 runs natively only on CPUs with AVX-512 bf16 or AMX; elsewhere oneDNN emulates it, slower than float32.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.rerank_bench import report  # noqa: E402
from benchmarks.workload import documents  # noqa: E402
from rerank_server.cpu import usable_cpus  # noqa: E402
from rerank_server.engine.passes import score_directly  # noqa: E402
from rerank_server.importer.fidelity import compare, probe_lists, scores_of  # noqa: E402
from rerank_server.models.loaded import load_folder, load_tokenizer  # noqa: E402
from tests.fixture_models import build_mxbai_v2_reranker, build_qwen3_reranker  # noqa: E402

QUERY = "how does a cross encoder rerank passages for retrieval augmented generation?"
FAMILIES = {
    "qwen3": ("Qwen3-Reranker-0.6B", "0.6B", build_qwen3_reranker),
    "mxbai-v2": ("mxbai-rerank-base-v2", "base-v2", build_mxbai_v2_reranker),
}
DTYPES = ("float32", "bfloat16")


def folder(family: str, shape: str, cache: Path) -> Path:
    target = cache / f"llm-cpu-{family}-{shape}"
    return target if (target / "config.json").exists() else FAMILIES[family][2](target, shape=shape)


def timed(family: str, path: Path, dtype: str, requests: list[list[str]]) -> float:
    """Seconds per request, after a warm-up."""
    model = load_folder(path, recipe=family, max_length=8192, causal=True, dtype=dtype)
    score_directly(model, [QUERY] * 2, requests[0][:2])
    started = time.perf_counter()
    for docs in requests:
        score_directly(model, [QUERY] * len(docs), docs)
    model.release()
    return (time.perf_counter() - started) / len(requests)


def fidelity(family: str, path: Path) -> dict[str, str]:
    models = {dtype: load_folder(path, recipe=family, max_length=8192, causal=True, dtype=dtype) for dtype in DTYPES}
    probes = probe_lists(models["float32"].recipe.tokenizer)
    reference = scores_of(models["float32"], probes)
    out = {}
    for dtype, model in models.items():
        measured = compare(scores_of(model, probes), reference)
        out[dtype] = f"{measured.worst_spearman:.4f} | {measured.worst_top10}/{measured.top}"
        model.release()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", type=lambda s: s.split(","), default=list(FAMILIES))
    parser.add_argument("--docs", type=int, default=20, help="documents per request")
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=240, help="longest document, in tokens (shortest: 32)")
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    cache = Path(args.model_cache)
    lines = [
        "| model shape | torch dtype | ms per request | × float32 | worst-query Spearman, tiny fixture | top 10 kept |",
        "|---|---|---|---|---|---|",
    ]
    for family in args.families:
        name, shape, _ = FAMILIES[family]
        real = folder(family, shape, cache)
        tokenizer = load_tokenizer(real)
        requests = [documents(args.docs, tokenizer, seed=i, high=args.max_tokens) for i in range(args.requests)]
        checked = fidelity(family, folder(family, "tiny", cache))
        base = None
        for dtype in DTYPES:
            seconds = timed(family, real, dtype, requests)
            base = base or seconds
            lines.append(f"| {name} | {dtype} | {seconds * 1e3:,.0f} | {base / seconds:.2f}× | {checked[dtype]} |")
            print(lines[-1], flush=True)
    setup = (
        f"{args.requests} requests × {args.docs} documents (32–{args.max_tokens} tokens), {usable_cpus()} threads, "
        "the server's scorer in-process."
    )
    report("llm_cpu", argv, setup, lines, "llm-cpu" if args.write else None)


if __name__ == "__main__":
    main()
