"""Put rerankers into the BentoML model store, local copies first, else the Hugging Face Hub.

    python import_models.py                       # the default model, BAAI/bge-reranker-base
    python import_models.py --all                 # the three BGE rerankers
    python import_models.py BAAI/bge-reranker-v2-m3 cross-encoder/ms-marco-MiniLM-L-6-v2
    python import_models.py my-org/my-reranker --from-dir ./my-reranker
    python import_models.py --list

A model is taken from --from-dir, else from models/<name>/ when that folder exists, else downloaded from the Hub
(HF_ENDPOINT selects a mirror, e.g. https://hf-mirror.com; HF_TOKEN is used for gated models).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rerank_server.catalog import DEFAULT_MODEL_ID, KNOWN_MODELS
from rerank_server.model_store import ModelImportError, find_reranker, import_model, list_rerankers

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
    parser.add_argument("--list", action="store_true", help="print the stored rerankers and exit")
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.list:
        print_stored()
        return 0
    wanted = [m.model_id for m in KNOWN_MODELS] if args.all else (args.models or [DEFAULT_MODEL_ID])
    failures = 0
    for model_id in wanted:
        stored = find_reranker(model_id) if args.if_missing else None
        if stored:
            print(f"{stored.model_id}: in the store as {stored.tag}")
            continue
        try:
            result = import_model(model_id, from_dir=args.from_dir, models_dir=args.models_dir, force=args.force)
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
