"""Storing a checked model folder in the BentoML model store, converted for its backend, committed only once its
stored copy has run."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import bentoml

from rerank_server import backends
from rerank_server.backends import BackendName, CpuPrecision
from rerank_server.catalog import canonical_id, known_model, model_id_problem, store_name
from rerank_server.cpu import cpu_class, has_native_bf16
from rerank_server.importer import remote_code
from rerank_server.importer.card import card_license
from rerank_server.importer.check import check_runs, check_vocabulary
from rerank_server.importer.cpu_path import FLOAT32, CpuChoice, candidates, gpu_visible, settle
from rerank_server.importer.fidelity import DEFAULT_FLOOR
from rerank_server.importer.folder import WEIGHT_FILES, ModelImportError, catalogue_mismatch, inspect_folder
from rerank_server.importer.probe_data import ProbeData
from rerank_server.models.store import APP_LABEL, StoredReranker, as_stored, find_reranker, list_rerankers
from rerank_server.recipes import RECIPES
from rerank_server.recipes.colbert import store_arguments

logger = logging.getLogger("bentoml")

# Files a model folder may hold that the server never needs (VCS and huggingface_hub's local-dir bookkeeping).
_IGNORED = shutil.ignore_patterns(
    ".git", ".cache", ".gitattributes", "onnx", "openvino", "*.onnx", "*.h5", "*.msgpack", "*.ot", "*.gguf"
)


# What a CPU runtime's conversion has been proven on: BERT-family encoders, whose ONNX export the OpenVINO int8 path
# keeps the score head and feed-forward input of in float (backends/openvino_backend.py) at the fidelity measured.
CPU_RUNTIME_ARCHITECTURES = (
    "BertForSequenceClassification",
    "RobertaForSequenceClassification",
    "XLMRobertaForSequenceClassification",
    "CamembertForSequenceClassification",
)


@dataclass(frozen=True)
class ImportResult:
    stored: StoredReranker
    skipped: bool
    cpu_choice: str = ""  # what was chosen for this CPU and why, in one line (--backend auto, or a checked path)


@dataclass(frozen=True)
class ImportOptions:
    """How a model is imported, whatever its source."""

    force: bool = False  # store a new version even when the same source is stored
    backend: BackendName | Literal["auto"] = "torch"  # auto: the fastest CPU path that keeps rankings (cpu_path.py)
    cpu_precision: CpuPrecision = "float32"  # a named backend's CPU arithmetic
    min_spearman: float = DEFAULT_FLOOR  # the fidelity gate's floor for anything but float32 torch; 0 turns it off
    probe_data: ProbeData | None = None  # the gate's lists from the user's file (--probe-data), else generated ones
    recipe: str | None = None  # the scoring recipe, when neither the catalogue, the id nor the folder tells it
    check: bool = True  # load the stored copy and score a pair before committing it
    trust_remote_code: bool = False  # store the model's own Python code (auto_map) with it, and run it


DEFAULT_IMPORT = ImportOptions()


def store_folder(
    model_id: str,
    folder: Path,
    *,
    source: str,
    revision: str | None,
    fingerprint: str,
    options: ImportOptions = DEFAULT_IMPORT,
    code_folders: dict[str, Path] | None = None,
) -> ImportResult:
    """Copy a checked model folder into the store (converted for `backend`), or do nothing when the same source is
    stored already. With `check`, the stored copy must load and score a pair before it is committed. With
    `trust_remote_code`, the model's own Python files (from the folder, or from `code_folders[repo]` for code of
    another repository) are stored with it and its config names them locally.

    `bentoml.models.create` only commits the model when its block exits cleanly, so a failed import leaves nothing.
    """
    model_id = canonical_id(model_id)
    problem = model_id_problem(model_id)
    if problem:
        raise ModelImportError(f"{model_id!r} cannot be imported: {problem}")
    backend, precision = options.backend, options.cpu_precision
    info = inspect_folder(folder, model_id, options.recipe, trust_remote_code=options.trust_remote_code)
    code = remote_code.collect(folder, model_id, code_folders) if options.trust_remote_code else None
    # A listwise model's code is stored (it came with the weights) but never run: the server scores it with its recipe.
    runs_code = bool(code and code.files) and not RECIPES[info.recipe].listwise
    if runs_code and info.recipe != "colbert" and not info.architecture.endswith("ForSequenceClassification"):
        raise ModelImportError(
            f"{model_id}: --trust-remote-code runs the code of *ForSequenceClassification cross-encoders and ColBERT "
            f"encoders; a {info.architecture} with code of its own is not served"
        )
    if backend != "auto" and backends.is_cpu_runtime(backend):
        _check_cpu_runtime(model_id, backend, info.recipe, info.architecture, code)
    cpu = cpu_class()
    _check_precision(model_id, backend, precision, cpu)
    _check_probe_data(model_id, options)
    # After the refusals: an import refused for another reason says that reason alone, in one line.
    if mismatch := catalogue_mismatch(folder, model_id, info.architecture):
        logger.warning(mismatch)
    on_gpu = backend == "auto" and gpu_visible()
    if backend == "auto":
        # Chosen for this class of CPU, or for the GPU: another host chooses again.
        fingerprint = f"{fingerprint}+auto@{'cuda' if on_gpu else cpu}"
    elif backend != "torch" or precision != "float32":
        fingerprint = f"{fingerprint}+{backend}" + ("" if precision == "float32" else f"@{precision}")
    if options.min_spearman <= 0 and (backend == "auto" or backend != "torch" or precision != "float32"):
        fingerprint = f"{fingerprint}+unchecked"  # a later checked import must not find it "already stored"
    elif options.probe_data and not on_gpu:
        fingerprint = f"{fingerprint}+probes:{options.probe_data.digest}"  # gated on other data: not "already stored"
    if info.recipe != "cross-encoder":
        fingerprint = f"{fingerprint}+{info.recipe}"
    if code and code.files:
        fingerprint = f"{fingerprint}+code"  # imported before with its code ignored: a new version
    known = known_model(model_id)
    arguments = dict(known.pylate_arguments) if info.recipe == "colbert" and known else {}
    if arguments:  # the catalogue's PyLate arguments decide the scores: changed in a release, a new version
        digest = hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()[:12]
        fingerprint = f"{fingerprint}+pylate:{digest}"
    existing = next((s for s in list_rerankers() if s.store_name == store_name(model_id)), None)
    if existing and existing.fingerprint == fingerprint and not options.force:
        return ImportResult(existing, skipped=True)
    metadata = {
        "model_id": existing.model_id if existing else model_id,  # one spelling per model, whatever the case typed
        "source": source,
        "revision": revision or "",
        "fingerprint": fingerprint,
        "max_length": info.max_length,
        "architecture": info.architecture,
        "num_labels": info.num_labels,
        "backend": "torch",  # until the CPU path is settled on the stored copy
        "recipe": info.recipe,
        "checkpoint_dtype": info.checkpoint_dtype or "",
        "parameters": info.parameters,
        "remote_code": code.digests() if code else {},
        "module_stack": info.module_stack,
        "license": card_license(folder, model_id),
    }
    labels = {**APP_LABEL, "model-id": metadata["model_id"]}
    with bentoml.models.create(store_name(model_id), labels=labels, metadata=metadata) as model:
        target = Path(model.path)
        shutil.copytree(folder, target, ignore=_IGNORED, dirs_exist_ok=True)
        if code:
            remote_code.store(code, target)
        if arguments:  # read at every load, as inspect_folder read the lengths with them
            store_arguments(target, arguments)
        # On the stored copy: a remote-code config names its code there, and nothing is fetched.
        check_vocabulary(target, model_id, trust_remote_code=runs_code)
        # A conversion for this CPU: settled on the stored copy (where the model's own code is), checked against it.
        draft = as_stored(model)
        assert draft is not None
        convertible = info.recipe == "cross-encoder" and info.architecture in CPU_RUNTIME_ARCHITECTURES
        convertible = convertible and not runs_code
        plan = candidates(cpu, convertible) if backend == "auto" else (CpuChoice(backend, precision),)
        # A GPU host serves torch, in the precision RERANK_DTYPE gives it there: nothing to choose for its CPU.
        settled = settle(
            draft, (FLOAT32,) if on_gpu else plan, floor=options.min_spearman, auto=backend == "auto", cpu=cpu,
            probe_data=options.probe_data,
        )  # fmt: skip
        if on_gpu:
            settled = replace(settled, note="torch: a GPU is visible, where RERANK_DTYPE decides the precision")
        model.info.metadata.update(
            backend=settled.choice.backend,
            cpu_precision=settled.choice.precision,
            cpu_class="" if settled.choice.exact else cpu,
            fidelity=settled.fidelity.describe() if settled.fidelity else "",
        )
        if backends.is_cpu_runtime(settled.choice.backend):
            _drop_torch_weights(target)
        # What was kept, not what the folder held (other runtimes' files and, once converted, the torch weights).
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file() and p.name != "model.yaml")
        model.info.metadata["size_bytes"] = size
        if options.check:
            draft = as_stored(model)
            assert draft is not None
            check_runs(draft)
    stored = find_reranker(metadata["model_id"])
    assert stored is not None  # just created
    logger.info("Stored %s as %s", model_id, stored.tag)
    if existing is not None and existing.calibration is not None:
        # A calibration maps one version's scores: new weights are served uncalibrated until one is fitted for them.
        logger.warning(
            "%s: the calibration of %s was not carried over to %s; fit one for the new weights (evaluate.py "
            "--calibrate) and attach it (import_models.py %s --calibration FILE)",
            model_id, existing.tag, stored.tag, stored.model_id,
        )  # fmt: skip
    return ImportResult(stored, skipped=False, cpu_choice=settled.note)


def _check_precision(model_id: str, backend: str, precision: str, cpu: str) -> None:
    """bfloat16 is a choice for torch and OpenVINO, and only where the import can check it against float32."""
    if precision == "float32":
        return
    if backend == "auto":
        raise ModelImportError(f"{model_id}: --backend auto chooses the precision itself; leave --precision out")
    if backend not in ("torch", "openvino", "openvino-int8"):
        raise ModelImportError(f"{model_id}: --precision bfloat16 is for --backend torch, openvino or openvino-int8")
    if not has_native_bf16():
        raise ModelImportError(
            f"{model_id}: --precision bfloat16 is checked against float32 at import, and this CPU ({cpu}) has no "
            "native bfloat16 to check it on; import it on the CPU that serves it (--backend auto chooses there)"
        )


def _check_probe_data(model_id: str, options: ImportOptions) -> None:
    """--probe-data feeds the fidelity gate: refused where no gate runs, rather than silently ignored."""
    if options.probe_data is None:
        return
    if options.min_spearman <= 0:
        raise ModelImportError(
            f"{model_id}: --probe-data is what the fidelity gate checks, and --min-spearman 0 turns the gate off; "
            "leave one of them out"
        )
    if options.backend == "torch" and options.cpu_precision == "float32":
        raise ModelImportError(
            f"{model_id}: --probe-data checks a path faster than float32 torch (--backend auto, a CPU runtime or "
            "--precision bfloat16) against it; --backend torch in float32 is that reference, nothing to check"
        )


def _check_cpu_runtime(
    model_id: str, backend: str, recipe: str, architecture: str, code: remote_code.ModelCode | None
) -> None:
    """A CPU runtime takes what its conversion was proven on; anything else is refused in one line."""
    if recipe != "cross-encoder":
        raise ModelImportError(
            f"{model_id}: --backend {backend} runs cross-encoders only; a {recipe} reranker runs with --backend torch "
            "(on a GPU, or on the CPU)"
        )
    if (code and code.files) or architecture not in CPU_RUNTIME_ARCHITECTURES:
        what = "a model with its own modelling code" if code and code.files else f"a {architecture}"
        raise ModelImportError(
            f"{model_id}: --backend {backend} converts BERT-family cross-encoders (BERT, RoBERTa, XLM-RoBERTa); "
            f"{what} runs with --backend torch (on the CPU too; RERANK_DTYPE=bfloat16 on CPUs with AMX)"
        )


def _drop_torch_weights(target: Path) -> None:
    """Keep only what a CPU runtime loads."""
    for pattern in WEIGHT_FILES:
        for weights in target.glob(pattern):
            weights.unlink()  # the runtime has its own copy of the weights; the torch one would double the size
