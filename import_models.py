"""Put rerankers into the BentoML model store, local copies first, else the Hugging Face Hub or ModelScope.

    python import_models.py                       # on a terminal: a menu; otherwise BAAI/bge-reranker-base
    python import_models.py --all                 # the three BGE cross-encoders
    python import_models.py BAAI/bge-reranker-v2-m3 Qwen/Qwen3-Reranker-0.6B
    python import_models.py BAAI/bge-reranker-base --source modelscope
    python import_models.py my-org/my-reranker --from-dir ./my-reranker
    python import_models.py my-org/my-qwen3-finetune --from-dir ./ft --recipe qwen3
    python import_models.py Alibaba-NLP/gte-multilingual-reranker-base --trust-remote-code
    python import_models.py --list
    python import_models.py --verify              # load every stored reranker and score one pair
    python import_models.py BAAI/bge-reranker-base --calibration out/baai--bge-reranker-base.calibration.json
    python import_models.py BAAI/bge-reranker-base --logit-scale 0.8 --logit-bias 1.5   # vLLM's settings, by hand
    python import_models.py BAAI/bge-reranker-base --no-calibration

A model is taken from --from-dir, else from models/<name>/ when that folder exists, else downloaded from the Hub
(HF_ENDPOINT selects a mirror, e.g. https://hf-mirror.com; HF_TOKEN is used for gated models) or, with
--source modelscope, from ModelScope (MODELSCOPE_ENDPOINT selects another site). Each import loads the stored copy
and scores the server's load-check pairs before it is committed (--no-check skips that), so a broken model never
reaches the store.

A calibration (from `evaluate.py --calibrate`) is attached to a model already stored, without copying its weights;
a running server uses it within a second: relevance_score becomes sigmoid(scale * (raw - bias)).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

try:
    from rerank_server.backends import CPU_PRECISIONS, IMPORT_CHOICES, RUNTIMES
    from rerank_server.catalog import BGE_MODELS, DEFAULT_MODEL_ID, KNOWN_MODELS, non_commercial
    from rerank_server.importer import calibration
    from rerank_server.importer.check import check_runs
    from rerank_server.importer.commit import ImportOptions
    from rerank_server.importer.fidelity import DEFAULT_FLOOR
    from rerank_server.importer.folder import ModelImportError
    from rerank_server.importer.probe_data import MAX_DOCUMENTS, MAX_QUERIES, read_probe_data
    from rerank_server.importer.sources import import_model
    from rerank_server.models.store import find_reranker, list_rerankers
    from rerank_server.recipes import RECIPES
except ModuleNotFoundError as missing:  # run by a Python without the project's packages (not the venv's)
    sys.exit(
        f"error: import_models.py needs the project's packages ({missing.name} is not installed for {sys.executable}): "
        "run it from the repository root as .venv/bin/python import_models.py ... (make setup creates .venv)"
    )

MODELS_DIR = Path(__file__).resolve().parent / "models"


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.0f} MB"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Import rerankers (cross-encoders and LLM rerankers) into the BentoML model store.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Known models: " + ", ".join(m.model_id for m in KNOWN_MODELS),
    )
    parser.add_argument("models", nargs="*", metavar="MODEL_ID", help=f"Hub ids (org/name); default {DEFAULT_MODEL_ID}")
    parser.add_argument("--all", action="store_true", help="import the three BGE cross-encoders")
    parser.add_argument("--from-dir", type=Path, metavar="DIR", help="register a local model folder (one MODEL_ID)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="where local copies are looked for")
    parser.add_argument("--force", action="store_true", help="import again even if the same source is stored")
    parser.add_argument("--if-missing", action="store_true", help="skip models the store already holds (no network)")
    parser.add_argument(
        "--source", choices=["hub", "modelscope"], default="hub", help="where to download from (default: hub)"
    )
    parser.add_argument(
        "--backend", choices=["auto", *IMPORT_CHOICES], default="torch",
        help="how the server runs the model: torch (GPU or CPU, every kind of reranker), or a CPU runtime for "
        "BERT-family cross-encoders: openvino-int8 (int8 weights), openvino (fp32) or onnx-int8 (ONNX Runtime dynamic "
        "int8). auto: for a CPU host, the fastest path for this CPU's class (AMX / AVX-512 bf16 / AVX2) whose rankings "
        "hold against float32 (--min-spearman); see docs/benchmarks.md",
    )  # fmt: skip
    parser.add_argument(
        "--precision", choices=CPU_PRECISIONS, default="float32",
        help="a named backend's arithmetic on the CPU: bfloat16 only on CPUs that have it (AMX, AVX-512 bf16), "
        "checked like --backend auto (a GPU ignores it: RERANK_DTYPE decides there)",
    )  # fmt: skip
    parser.add_argument(
        "--min-spearman", type=float, default=DEFAULT_FLOOR, metavar="RHO",
        help="the fidelity gate: a path other than float32 torch is stored only if, on probe queries built from the "
        "model's vocabulary, every query's ranking keeps at least this Spearman correlation with float32 "
        f"(default {DEFAULT_FLOOR}; 0 stores it unchecked)",
    )  # fmt: skip
    parser.add_argument(
        "--probe-data", type=Path, metavar="FILE",
        help="gate on your own data instead: a JSONL file in evaluate.py's format (labels are not used); its first "
        f"{MAX_QUERIES} samples, at most {MAX_DOCUMENTS} documents each (a sample of one document is skipped). Only "
        "where the gate runs: not with --backend torch in float32, nor with --min-spearman 0",
    )  # fmt: skip
    parser.add_argument(
        "--recipe", choices=list(RECIPES),
        help="how pairs are scored, for a model whose id, folder or the catalogue does not tell: cross-encoder "
        "(a *ForSequenceClassification), qwen3 (Qwen3-Reranker and fine-tunes), bge-gemma (bge-reranker-v2-gemma)",
    )  # fmt: skip
    parser.add_argument(
        "--trust-remote-code", action="store_true",
        help="for a model that ships its own modelling code (auto_map in its config): store that code with the weights "
        "and let the server run it (only for code you trust; without this flag such models are refused)",
    )  # fmt: skip
    parser.add_argument(
        "--no-check", action="store_true", help="store without loading the model and scoring a test pair first"
    )
    calibrating = parser.add_argument_group(
        "calibration", "for a stored model: what its relevance_score is, sigmoid(scale * (raw - bias))"
    )
    calibrating.add_argument(
        "--calibration", type=Path, metavar="FILE", help="attach the calibration evaluate.py --calibrate wrote"
    )
    calibrating.add_argument("--logit-scale", type=float, metavar="S", help="set the scale by hand (with --logit-bias)")
    calibrating.add_argument("--logit-bias", type=float, metavar="B", help="set the bias by hand (with --logit-scale)")
    calibrating.add_argument("--no-calibration", action="store_true", help="remove the model's calibration")
    parser.add_argument("--list", action="store_true", help="print the stored rerankers and exit")
    parser.add_argument(
        "--verify", action="store_true", help="load the stored MODEL_IDs (default: all) and score one pair with each"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.min_spearman <= 1:
        parser.error("--min-spearman is a rank correlation: between 0 (no check) and 1")
    if args.from_dir and len(args.models) != 1:
        parser.error("--from-dir registers one folder: give exactly one MODEL_ID")
    try:
        # Read once, before any model: a bad file stops the command like any other bad argument, nothing stored.
        args.probes = read_probe_data(args.probe_data) if args.probe_data else None
    except ModelImportError as exc:
        parser.error(str(exc))
    return args


def print_stored() -> None:
    stored = list_rerankers()
    if not stored:
        print("No rerankers in the store yet: run `python import_models.py`.")
        return
    print(
        f"{'MODEL':40} {'TAG':50} {'RECIPE':13} {'BACKEND':13} {'CPU':20} {'MAX_LEN':>7} {'SIZE':>8}  {'CODE':6}  "
        f"{'LICENSE':14}  SCORE  SOURCE"
    )
    for s in stored:
        code = "own" if s.runs_code else "stored" if s.remote_code else "-"
        license_id = (s.license or "-") + (" (NC)" if non_commercial(s.license) else "")
        score = "calibrated" if s.calibration else "-"
        # The CPU class and precision it was stored for (--backend auto, --precision), "-" where any host serves it.
        cpu = f"{s.cpu_class} {s.cpu_precision}" if s.cpu_class else "-"
        print(
            f"{s.model_id:40} {s.tag:50} {s.recipe:13} {s.backend:13} {cpu:20} {s.max_length:>7} "
            f"{_size(s.size_bytes):>8}  {code:6}  {license_id:14}  {score:5}  {s.source}"
        )


def choose_from_menu(ask: Callable[[str], str] = input) -> list[str]:
    """The menu of the original design: the known rerankers with size and use, or all BGE cross-encoders."""
    print("Which reranker should be imported?")
    for number, model in enumerate(KNOWN_MODELS, start=1):
        default = "  (default)" if model.model_id == DEFAULT_MODEL_ID else ""
        stored = "  [stored]" if find_reranker(model.model_id) else ""
        code = "  (its own code: --trust-remote-code)" if model.remote_code else ""
        code += f"  [non-commercial ({model.license})]" if non_commercial(model.license) else ""
        print(f"  {number}) {model.model_id:42} {model.size:>8}  {model.good_for}{default}{code}{stored}")
    all_bge = len(KNOWN_MODELS) + 1
    print(f"  {all_bge}) the {len(BGE_MODELS)} BGE cross-encoders")
    while True:
        answer = ask(f"Choose 1-{all_bge} [1]: ").strip() or "1"
        if answer.isdigit() and 1 <= int(answer) <= len(KNOWN_MODELS):
            return [KNOWN_MODELS[int(answer) - 1].model_id]
        if answer == str(all_bge):
            return [model.model_id for model in BGE_MODELS]
        print(f"Please answer a number from 1 to {all_bge}.")


def verify_stored(names: list[str]) -> int:
    stored = [find_reranker(name) for name in names] if names else list_rerankers()
    failures = 0
    for name, reranker in zip(names or [s.model_id for s in stored], stored, strict=True):
        if reranker is None:
            print(f"{name}: FAILED, not in the store", file=sys.stderr)
            failures += 1
            continue
        try:
            where = f"cpu ({RUNTIMES[reranker.backend]})" if reranker.backend != "torch" else "the default device"
            print(f"{reranker.model_id}: OK, score {check_runs(reranker):.4f} on {where}")
        except ModelImportError as exc:
            print(f"{reranker.model_id}: FAILED, {exc}", file=sys.stderr)
            failures += 1
    if not stored:
        print("No rerankers in the store yet: run `python import_models.py`.")
    return 1 if failures else 0


def change_calibration(args: argparse.Namespace) -> str:
    """Attach, set by hand or remove one stored model's calibration; what was done, in a line."""
    by_hand = args.logit_scale is not None or args.logit_bias is not None
    modes = (("--calibration", args.calibration), ("--no-calibration", args.no_calibration), ("--logit-*", by_hand))
    chosen = [name for name, on in modes if on]
    if len(chosen) > 1:
        raise ModelImportError(f"{' and '.join(chosen)} do not go together: choose one")
    if (args.logit_scale is None) != (args.logit_bias is None):
        raise ModelImportError("--logit-scale and --logit-bias go together: give both (vLLM's logit_scale, logit_bias)")
    if args.from_dir or args.all or len(args.models) > 1:
        raise ModelImportError("a calibration is for one stored model: give exactly one MODEL_ID")
    name = args.models[0] if args.models else None
    if name is None and args.calibration:
        name = calibration.from_file_model(args.calibration)
    if name is None:
        raise ModelImportError("give the stored model's MODEL_ID")
    stored = find_reranker(name)
    if stored is None:
        raise ModelImportError(f"{name} is not in the store: import it first (python import_models.py {name})")
    if args.no_calibration:
        removed = calibration.detach(stored)
        return f"{stored.model_id}: " + ("calibration removed" if removed else "had no calibration")
    if args.calibration:
        chosen_calibration = calibration.from_file(args.calibration, stored)
    else:
        chosen_calibration = calibration.by_hand(stored, args.logit_scale, args.logit_bias)
    path = calibration.attach(stored, chosen_calibration)
    return (
        f"{stored.model_id}: calibration attached ({chosen_calibration.method}: relevance_score = "
        f"sigmoid({chosen_calibration.scale:.6g} * (raw - {chosen_calibration.bias:.6g}))) at {path}"
    )


def _quiet_libraries() -> None:
    # Loading and exporting models makes transformers and torch print notes that are not the user's concern; what
    # went wrong is reported in one line of our own.
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.list:
        print_stored()
        return 0
    _quiet_libraries()
    if args.verify:
        return verify_stored(args.models)
    if args.calibration or args.no_calibration or args.logit_scale is not None or args.logit_bias is not None:
        try:
            print(change_calibration(args))
        except ModelImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    menu = False
    if args.all:
        wanted = [m.model_id for m in BGE_MODELS]
    elif args.models:
        wanted = args.models
    else:
        # The menu only when someone can answer it; scripts and containers get the default.
        menu = sys.stdin.isatty() and sys.stdout.isatty()
        wanted = choose_from_menu() if menu else [DEFAULT_MODEL_ID]
    options = ImportOptions(
        force=args.force, backend=args.backend, recipe=args.recipe, check=not args.no_check,
        trust_remote_code=args.trust_remote_code, cpu_precision=args.precision, min_spearman=args.min_spearman,
        probe_data=args.probes,
    )  # fmt: skip
    failures = 0
    for model_id in wanted:
        # A model chosen from the menu that the store holds (from a folder, say) is not downloaded again.
        stored = find_reranker(model_id) if (args.if_missing or menu) and not args.force else None
        if stored:
            print(f"{stored.model_id}: in the store as {stored.tag}")
            continue
        try:
            result = import_model(
                model_id, options, from_dir=args.from_dir, models_dir=args.models_dir, source=args.source
            )
        except ModelImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        s = result.stored
        verb = "already stored (same source; --force to re-import)" if result.skipped else "imported"
        print(f"{s.model_id}: {verb} as {s.tag}, {_size(s.size_bytes)}, {s.recipe} recipe, {s.backend}, {s.path}")
        if result.cpu_choice:
            print(f"  for this CPU: {result.cpu_choice}")
        elif result.skipped and s.cpu_class:
            print(f"  stored for {s.cpu_class} CPUs in {s.cpu_precision}: {s.fidelity or 'rankings not checked'}")
        for name, digest in s.remote_code.items():
            print(f"  its own code, stored with it and run by the server: {name} sha256 {digest}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
