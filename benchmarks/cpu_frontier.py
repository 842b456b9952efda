"""The speed/fidelity frontier of CPU paths (issue #31): every way tried to make a BERT-family cross-encoder faster
on a CPU, the ones the server offers and the ones it does not, on the same batches.

    python -m benchmarks.cpu_frontier                  # MiniLM fixture (fidelity and speed), bge-base shape (speed)
    python -m benchmarks.cpu_frontier --write

Paths: torch fp32 (the reference) and bf16; OpenVINO fp32 and with a bf16 precision hint; weight-only int8 (NNCF
`compress_weights`, the score head and the first FFN projection kept float, as `--backend openvino-int8` stores it;
and with every weight compressed); static int8 (`nncf.quantize`, activations quantized too, VNNI arithmetic) with
the score head kept float, with SmoothQuant, and accuracy-controlled (`nncf.quantize_with_accuracy_control`: layers
put back to float, most sensitive first, until the worst-query Spearman against fp32 is within 0.01 of 1; on the
MiniLM fixture only, since the bge shapes' random-weight rankings mean nothing).

Every path runs the same padded batches (sorted by length, --token-budget 2,048, 2 threads), built in advance, so only
the forward differs. Calibration for static int8 uses different texts from the measured ones: probe lists built from
the model's vocabulary, as the import's fidelity gate builds them (rerank_server/importer/fidelity.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("NNCF_CI", "1")  # no telemetry from NNCF (see rerank_server/backends/openvino_backend.py)

from benchmarks.cpu_backends import QUERIES  # noqa: E402
from benchmarks.rerank_bench import report  # noqa: E402
from benchmarks.workload import build_model, documents  # noqa: E402
from rerank_server.backends.onnx_backend import export_onnx  # noqa: E402
from rerank_server.backends.openvino_backend import KEPT_FLOAT  # noqa: E402
from rerank_server.cpu import usable_cpus  # noqa: E402
from rerank_server.importer.fidelity import compare, probe_lists  # noqa: E402

Batch = tuple[list[int], dict[str, np.ndarray]]
HEAD = [".*classifier.*", ".*pooler.*"]
ACCURACY_CONTROL_STEPS = 8
PATHS = [
    "torch fp32", "torch bf16", "openvino fp32", "openvino bf16", "openvino int8 weights", "openvino int8 weights bf16",
    "openvino int8 weights bf16 activations float", "openvino int8 all weights bf16", "static int8",
    "static int8 bf16", "static int8 smoothquant 0.5 bf16",
    "static int8 accuracy-controlled bf16",
]  # fmt: skip


def batches(tokenizer, query: str, docs: list[str], names: list[str], budget: int = 2048) -> list[Batch]:
    """The server's packing: pairs sorted by length, cut where the padded tokens would pass the budget."""
    encoded = tokenizer([query] * len(docs), docs, truncation=True, max_length=512)["input_ids"]
    order = sorted(range(len(docs)), key=lambda i: len(encoded[i]))
    groups: list[list[int]] = [[]]
    for i in order:
        if groups[-1] and len(encoded[i]) * (len(groups[-1]) + 1) > budget:
            groups.append([])
        groups[-1].append(i)
    out = []
    for group in groups:
        width = max(len(encoded[i]) for i in group)
        ids = np.zeros((len(group), width), np.int64)
        mask = np.zeros_like(ids)
        for row, i in enumerate(group):
            ids[row, : len(encoded[i])], mask[row, : len(encoded[i])] = encoded[i], 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        out.append((group, {name: feed[name] for name in names}))
    return out


def run_all(forward: Callable[[dict[str, np.ndarray]], np.ndarray], requests: list[list[Batch]], n: int):
    forward(requests[0][0][1])  # warm-up
    scores, started = [], time.perf_counter()
    for request in requests:
        out = np.zeros(n)
        for group, feed in request:
            out[group] = forward(feed)
        scores.append(out)
    return scores, (time.perf_counter() - started) / len(requests)


def torch_forward(model_dir: Path, dtype: str):
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(usable_cpus())
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()

    def forward(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            given = {k: torch.from_numpy(v) for k, v in feed.items() if k != "token_type_ids"}
            return model(**given).logits[:, 0].float().numpy()

    return forward


def openvino_model(path: str, onnx: Path, calibration: list[dict], validate):
    """The OpenVINO model of a path, and its precision hint."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx))
    hint = "bf16" if "bf16" in path else "f32"
    if "int8 weights" in path or "int8 all weights" in path:
        ignored = None if "all weights" in path else nncf.IgnoredScope(patterns=KEPT_FLOAT, validate=False)
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored), hint
    if path.startswith("static int8"):
        kwargs = dict(
            model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(calibration), ignored_scope=nncf.IgnoredScope(patterns=HEAD, validate=False),
        )  # fmt: skip
        if "smoothquant" in path:
            alpha = float(path.split("smoothquant ")[1].split()[0])
            smooth = nncf.AdvancedSmoothQuantParameters(matmul=alpha)
            kwargs["advanced_parameters"] = nncf.AdvancedQuantizationParameters(smooth_quant_alphas=smooth)
        if "accuracy-controlled" in path:
            # Each step puts the most sensitive layer back to float and ranks the rest again (a minute on 2 cores for
            # MiniLM): capped, so that the row ends; the log says whether the target was reached.
            restorer = nncf.AdvancedAccuracyRestorerParameters(max_num_iterations=ACCURACY_CONTROL_STEPS)
            return nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(calibration), nncf.Dataset([0]), validate, max_drop=0.01,
                drop_type=nncf.DropType.ABSOLUTE, advanced_accuracy_restorer_parameters=restorer, **kwargs,
            ), hint  # fmt: skip
        return nncf.quantize(model, nncf.Dataset(calibration), **kwargs), hint
    return model, hint


def openvino_forward(model, hint: str, quantize_activations: bool = True):
    """`quantize_activations`: OpenVINO's default for int8-weight matrix products, the activations quantized on the
    fly (DYNAMIC_QUANTIZATION_GROUP_SIZE 32); off, they stay in the hint's precision."""
    import openvino as ov

    config = {
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(usable_cpus()),
        "INFERENCE_PRECISION_HINT": hint,
    }  # fmt: skip
    if not quantize_activations:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = "0"
    # NNCF's accuracy control hands its validation function a model it compiled itself.
    compiled = model if isinstance(model, ov.CompiledModel) else ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return lambda feed: np.asarray(request.infer(feed)["logits"])[:, 0].astype(np.float64)


def measure(name: str, paths: list[str], model_cache: Path, docs: int, queries: int, budget: int) -> dict[str, tuple]:
    from transformers import AutoTokenizer

    model_dir = build_model(name, model_cache / name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    onnx = model_cache / f"{name}-frontier" / "model.onnx"
    if not onnx.exists():
        export_onnx(model_dir, onnx)
    import openvino as ov

    names = [port.get_any_name() for port in ov.Core().read_model(str(onnx)).inputs]
    requests = [
        batches(tokenizer, QUERIES[i % 4], documents(docs, tokenizer, seed=100 + i), names, budget)
        for i in range(queries)
    ]
    calibration = [
        feed for probe in probe_lists(tokenizer) for _, feed in batches(tokenizer, probe.query, probe.documents, names)
    ]
    reference, base = run_all(torch_forward(model_dir, "float32"), requests, docs)
    results: dict[str, tuple] = {"torch fp32": (base, 1.0, compare(reference, reference))}

    # The accuracy control's metric: the worst list's Spearman against fp32 on probe lists of another seed than the
    # calibration's, so that the measured requests stay held out.
    probes = probe_lists(tokenizer, queries=3, seed=1)
    held = [batches(tokenizer, probe.query, probe.documents, names) for probe in probes]
    held_reference, _ = run_all(torch_forward(model_dir, "float32"), held, len(probes[0].documents))

    def validate(model, _data) -> float:
        scores, _ = run_all(openvino_forward(model, "bf16"), held, len(probes[0].documents))
        return compare(scores, held_reference).worst_spearman

    for path in paths[1:]:
        if "accuracy-controlled" in path and name != "minilm":
            continue
        try:
            if path == "torch bf16":
                forward = torch_forward(model_dir, "bfloat16")
            else:
                model, hint = openvino_model(path, onnx, calibration, validate)
                forward = openvino_forward(model, hint, quantize_activations="activations float" not in path)
            scores, seconds = run_all(forward, requests, docs)
            results[path] = (seconds, base / seconds, compare(scores, reference))
        except Exception as exc:  # noqa: BLE001 - a path that does not build is a row of the frontier too
            results[path] = (None, None, f"failed: {str(exc).splitlines()[0][:80]}")
        print(name, path, results[path][:2], flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=lambda s: s.split(","), default=["minilm", "bge-base-shape"])
    parser.add_argument("--paths", type=lambda s: s.split(","), default=PATHS)
    parser.add_argument("--docs", type=int, default=20, help="documents per request")
    parser.add_argument("--queries", type=int, default=4, help="requests, one query each")
    parser.add_argument("--token-budget", type=int, default=2048, help="padded tokens per pass (the CPU default)")
    parser.add_argument("--model-cache", default=str(Path(tempfile.gettempdir()) / "rerank-bench-models"))
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args(argv)
    measured = {
        name: measure(name, args.paths, Path(args.model_cache), args.docs, args.queries, args.token_budget)
        for name in args.models
    }
    head = "| path | " + " | ".join(f"{m}: ms per request | {m}: × torch fp32" for m in args.models)
    lines = [
        f"{head} | MiniLM worst-query Spearman | MiniLM top-10 kept, worst query |",
        "|---" * (3 + 2 * len(args.models)) + "|",
    ]
    for path in args.paths:
        cells = []
        for name in args.models:
            seconds, ratio, _ = measured[name].get(path, (None, None, None))
            cells += ["–" if seconds is None else f"{seconds * 1e3:,.0f}", "–" if ratio is None else f"{ratio:.2f}×"]
        fidelity = measured.get("minilm", {}).get(path, (None, None, None))[2]
        if fidelity is None or isinstance(fidelity, str):
            tail = f"{fidelity or '–'} | –"
        else:
            tail = f"{fidelity.worst_spearman:.4f} | {fidelity.worst_top10}/{fidelity.top}"
        lines.append(f"| {path} | " + " | ".join(cells) + f" | {tail} |")
    setup = (
        f"{args.queries} requests × {args.docs} documents (32–480 tokens each), {usable_cpus()} threads, the same "
        f"padded batches for every path ({args.token_budget:,}-token budget); fidelity on the MiniLM fixture against "
        "torch fp32."
    )
    report("cpu_frontier", argv, setup, lines, "cpu-frontier" if args.write else None)


if __name__ == "__main__":
    main()
