"""Which CPU path a model is stored for: the one named (`--backend`, `--precision`), or with `--backend auto` the
fastest this class of CPU has that keeps the model's rankings, tried fastest first through the fidelity gate.

The order per class is what docs/benchmarks.md measured ("CPU classes"): on AMX, torch's bfloat16 runs
on the tiles; with AVX-512 bfloat16 and no AMX, OpenVINO with int8 weights computing in bfloat16 is fastest; on AVX2
alone only int8 weights help (bfloat16 would be emulated, slower than float32). Converted runtimes take BERT-family
cross-encoders only (`commit.CPU_RUNTIME_ARCHITECTURES`); every other family may still run torch in bfloat16.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from rerank_server import backends
from rerank_server.backends import BackendName, CpuPrecision
from rerank_server.cpu import CPU_CLASSES, CpuClass
from rerank_server.importer.check import first_line
from rerank_server.importer.fidelity import Fidelity, compare, probe_lists, scores_of
from rerank_server.importer.folder import ModelImportError
from rerank_server.importer.probe_data import ProbeData
from rerank_server.models.store import StoredReranker

logger = logging.getLogger("bentoml")


@dataclass(frozen=True)
class CpuChoice:
    backend: BackendName
    precision: CpuPrecision = "float32"

    @property
    def label(self) -> str:
        return self.backend if self.precision == "float32" else f"{self.backend} in bfloat16"

    @property
    def exact(self) -> bool:
        """Torch in float32: the reference scores themselves, nothing to check."""
        return self.backend == "torch" and self.precision == "float32"


FLOAT32 = CpuChoice("torch")
_INT8_BF16 = CpuChoice("openvino-int8", "bfloat16")
_TORCH_BF16 = CpuChoice("torch", "bfloat16")
# Fastest first, per class (docs/benchmarks.md): for BERT-family cross-encoders, and for every other family.
CONVERTIBLE_PATHS: dict[CpuClass, tuple[CpuChoice, ...]] = {
    "amx": (_TORCH_BF16, _INT8_BF16),
    "avx512-bf16": (_INT8_BF16, _TORCH_BF16),
    "avx2": (CpuChoice("openvino-int8"),),
    "other": (),
}
TORCH_PATHS: dict[CpuClass, tuple[CpuChoice, ...]] = {
    "amx": (_TORCH_BF16,),
    "avx512-bf16": (_TORCH_BF16,),
    "avx2": (),
    "other": (),
}


def gpu_visible() -> bool:
    """Whether the server here would run on a GPU: CUDA visible and RERANK_DEVICE not set to another device."""
    import os

    from rerank_server.backends.torch_backend import resolve_device

    return resolve_device(os.environ.get("RERANK_DEVICE", "auto")).startswith("cuda")


def candidates(cpu: CpuClass, convertible: bool) -> tuple[CpuChoice, ...]:
    """What `--backend auto` tries on this class of CPU, fastest first (float32 torch comes after all of them)."""
    return (CONVERTIBLE_PATHS if convertible else TORCH_PATHS)[cpu]


@dataclass(frozen=True)
class Settled:
    choice: CpuChoice
    fidelity: Fidelity | None
    note: str  # one line for the user: what was chosen and why


def settle(
    draft: StoredReranker,
    plan: Sequence[CpuChoice],
    *,
    floor: float,
    auto: bool,
    cpu: CpuClass,
    probe_data: ProbeData | None = None,
) -> Settled:
    """Convert the stored copy at `draft.path` for the first path of `plan` whose rankings hold against float32 (its
    runtime's files are left there; a refused path's are removed). Named (`auto=False`, one path): a path that breaks
    rankings, or cannot convert or score, is a ModelImportError. `auto`: the next is tried, and float32 torch is the
    last resort. `floor` 0: nothing is checked, the first path that converts is stored. `probe_data`: the user's
    queries and documents are checked instead of lists generated from the model's vocabulary."""
    if not plan:
        return Settled(FLOAT32, None, f"torch in float32 on {cpu} CPUs ({CPU_CLASSES[cpu]}): no faster path for them")
    if plan[0].exact:
        return Settled(plan[0], None, "")
    probes = [] if floor <= 0 else list(probe_data.lists) if probe_data else probe_lists(_tokenizer(draft))
    source = probe_data.source if probe_data else ""
    reference: list | None = None  # after the first conversion: a model that cannot convert says so first
    refused = []
    for choice in plan:
        try:
            _convert(draft, choice)
            if floor <= 0:
                return Settled(choice, None, f"{choice.label}: rankings not checked (--min-spearman 0)")
            if reference is None:
                # The float32 model and the candidate in turn, each released before the next (fidelity.py).
                logger.info("Checking %s's rankings with %s against float32", draft.model_id, choice.label)
                reference = _scores(draft, FLOAT32, probes)
            fidelity = compare(_scores(draft, choice, probes), reference, source)
        except ModelImportError as exc:
            backends.remove_conversion(draft.path, choice.backend)
            if not auto or isinstance(exc, _ReferenceFailed):
                raise
            refused.append(f"{choice.label}: {exc}")
            continue
        if fidelity.passes(floor):
            why = "rankings kept"
            if auto:
                why = f"the fastest path for {cpu} CPUs ({CPU_CLASSES[cpu]}) that keeps rankings"
            return Settled(choice, fidelity, f"{choice.label}: {why}: {fidelity.describe()} (floor {floor})")
        message = f"{choice.label} changes its rankings against float32: {fidelity.describe()}, under {floor}"
        backends.remove_conversion(draft.path, choice.backend)
        if not auto:
            raise ModelImportError(
                f"{draft.model_id}: {message} (--min-spearman); import it with --backend torch, or --min-spearman 0 "
                "to store it anyway"
            )
        refused.append(message)
    kept = "; ".join(refused) or "no faster path for this CPU"
    return Settled(FLOAT32, None, f"torch in float32 on {cpu} CPUs ({CPU_CLASSES[cpu]}): {kept}")


class _ReferenceFailed(ModelImportError):
    """The float32 model itself could not score the probes: no path can be checked, and the import stops."""


def _convert(draft: StoredReranker, choice: CpuChoice) -> None:
    if not backends.is_cpu_runtime(choice.backend):
        return
    logger.info("Converting %s for %s", draft.model_id, choice.backend)
    try:
        backends.convert(draft.path, choice.backend)
    except Exception as exc:  # noqa: BLE001 - an exporter's traceback is no help to the user
        backends.remove_conversion(draft.path, choice.backend)
        raise ModelImportError(
            f"{draft.model_id}: converting it for {choice.backend} failed ({first_line(exc)}); import it with "
            "--backend torch"
        ) from exc


def _tokenizer(draft: StoredReranker):
    from rerank_server.models.loaded import load_tokenizer

    return load_tokenizer(draft.path, draft.runs_code)


def _scores(draft: StoredReranker, choice: CpuChoice, probes) -> list:
    from rerank_server.models.loaded import load_reranker

    stored = replace(draft, backend=choice.backend, cpu_precision=choice.precision, cpu_class="")
    model = None
    try:
        model = load_reranker(stored, device="cpu", dtype="auto")
        return scores_of(model, probes)
    except Exception as exc:  # noqa: BLE001 - any failure is this path refused, in one line
        failed = _ReferenceFailed if choice.exact else ModelImportError
        raise failed(
            f"{draft.model_id}: {choice.label} could not score the fidelity check's pairs ({first_line(exc)})"
        ) from exc
    finally:
        if model is not None:
            model.release()
        gc.collect()
