"""Put rerankers into the BentoML model store, local copies first, else the Hugging Face Hub or ModelScope.

    python import_models.py                       # on a terminal: a menu; otherwise BAAI/bge-reranker-base
    python import_models.py --all                 # the three BGE rerankers
    python import_models.py BAAI/bge-reranker-v2-m3 cross-encoder/ms-marco-MiniLM-L-6-v2
    python import_models.py BAAI/bge-reranker-base --source modelscope
    python import_models.py my-org/my-reranker --from-dir ./my-reranker
    python import_models.py --list
    python import_models.py --verify              # load every stored reranker and score one pair

A model is taken from --from-dir, else from models/<name>/ when that folder exists, else downloaded from the Hub
(HF_ENDPOINT selects a mirror, e.g. https://hf-mirror.com; HF_TOKEN is used for gated models) or, with
--source modelscope, from ModelScope (MODELSCOPE_ENDPOINT selects another site).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from rerank_server.catalog import DEFAULT_MODEL_ID, KNOWN_MODELS
from rerank_server.model_store import ModelImportError, StoredReranker, find_reranker, import_model, list_rerankers
from rerank_server.onnx_backend import BACKENDS

MODELS_DIR = Path(__file__).resolve().parent / "models"


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.0f} MB"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Import cross-encoder rerankers into the BentoML model store.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Known models: " + ", ".join(m.model_id for m in KNOWN_MODELS),
    )
    parser.add_argument("models", nargs="*", metavar="MODEL_ID", help=f"Hub ids (org/name); default {DEFAULT_MODEL_ID}")
    parser.add_argument("--all", action="store_true", help="import the three BGE rerankers")
    parser.add_argument("--from-dir", type=Path, metavar="DIR", help="register a local model folder (one MODEL_ID)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="where local copies are looked for")
    parser.add_argument("--force", action="store_true", help="import again even if the same source is stored")
    parser.add_argument("--if-missing", action="store_true", help="skip models the store already holds (no network)")
    parser.add_argument(
        "--source", choices=["hub", "modelscope"], default="hub", help="where to download from (default: hub)"
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="torch",
        help="how the server runs the model: torch (GPU or CPU), or ONNX Runtime on the CPU: onnx (fp32, same "
        "scores) or onnx-int8 (int8 weights: ~2x faster for bge-reranker-base on a CPU, scores approximate; check "
        "with --verify and on your own data)",
    )  # fmt: skip
    parser.add_argument("--list", action="store_true", help="print the stored rerankers and exit")
    parser.add_argument(
        "--verify", action="store_true", help="load the stored MODEL_IDs (default: all) and score one pair with each"
    )
    args = parser.parse_args(argv)
    if args.from_dir and len(args.models) != 1:
        parser.error("--from-dir registers one folder: give exactly one MODEL_ID")
    return args


def print_stored() -> None:
    stored = list_rerankers()
    if not stored:
        print("No rerankers in the store yet: run `python import_models.py`.")
        return
    print(f"{'MODEL':40} {'TAG':50} {'MAX_LEN':>7} {'SIZE':>8}  SOURCE")
    for s in stored:
        print(f"{s.model_id:40} {s.tag:50} {s.max_length:>7} {_size(s.size_bytes):>8}  {s.source}")


def choose_from_menu(ask: Callable[[str], str] = input) -> list[str]:
    """The menu of the original design: the three BGE rerankers with size and use, or all of them."""
    print("Which reranker should be imported?")
    for number, model in enumerate(KNOWN_MODELS, start=1):
        default = "  (default)" if model.model_id == DEFAULT_MODEL_ID else ""
        print(f"  {number}) {model.model_id:26} {model.size:>8}  {model.good_for}{default}")
    print(f"  {len(KNOWN_MODELS) + 1}) all of them")
    while True:
        answer = ask(f"Choose 1-{len(KNOWN_MODELS) + 1} [1]: ").strip() or "1"
        if answer.isdigit() and 1 <= int(answer) <= len(KNOWN_MODELS):
            return [KNOWN_MODELS[int(answer) - 1].model_id]
        if answer == str(len(KNOWN_MODELS) + 1):
            return [model.model_id for model in KNOWN_MODELS]
        print(f"Please answer a number from 1 to {len(KNOWN_MODELS) + 1}.")


def verify(stored: StoredReranker) -> str:
    """Load a stored reranker the way the server does and score one pair; raises when it cannot."""
    import time

    from rerank_server.registry import load_scorer
    from rerank_server.scorer import resolve_device, resolve_dtype

    started = time.perf_counter()
    device = resolve_device("auto")
    scorer = load_scorer(stored, device=device, dtype=resolve_dtype("auto", device))
    scored = scorer.score(["what is a panda?"], ["The giant panda is a bear species endemic to China."])
    score = scored.scores[0]
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"the model produced {score} for a test pair")
    where = "cpu (ONNX Runtime)" if stored.backend != "torch" else device
    return f"score {score:.4f} on {where} in {time.perf_counter() - started:.1f} s"


def verify_stored(names: list[str]) -> int:
    stored = [find_reranker(name) for name in names] if names else list_rerankers()
    failures = 0
    for name, reranker in zip(names or [s.model_id for s in stored], stored, strict=True):
        if reranker is None:
            print(f"{name}: FAILED, not in the store", file=sys.stderr)
            failures += 1
            continue
        try:
            print(f"{reranker.model_id}: OK, {verify(reranker)}")
        except Exception as exc:  # noqa: BLE001 - every kind of broken model is reported the same way
            print(f"{reranker.model_id}: FAILED, {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
            failures += 1
    if not stored:
        print("No rerankers in the store yet: run `python import_models.py`.")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.list:
        print_stored()
        return 0
    if args.verify:
        return verify_stored(args.models)
    if args.all:
        wanted = [m.model_id for m in KNOWN_MODELS]
    elif args.models:
        wanted = args.models
    else:
        # The menu only when someone can answer it; scripts and containers get the default.
        wanted = choose_from_menu() if sys.stdin.isatty() and sys.stdout.isatty() else [DEFAULT_MODEL_ID]
    failures = 0
    for model_id in wanted:
        stored = find_reranker(model_id) if args.if_missing else None
        if stored:
            print(f"{stored.model_id}: in the store as {stored.tag}")
            continue
        try:
            result = import_model(
                model_id, from_dir=args.from_dir, models_dir=args.models_dir, source=args.source, force=args.force,
                backend=args.backend,
            )  # fmt: skip
        except ModelImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        s = result.stored
        verb = "already stored (same source; --force to re-import)" if result.skipped else "imported"
        print(f"{s.model_id}: {verb} as {s.tag}, {_size(s.size_bytes)}, {s.path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
