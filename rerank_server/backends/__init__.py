"""Backends: token ids (and, for a vision-language model, the pixels a recipe prepared) in, one logit per pair out.
They know nothing of text, prompts or HTTP.

A model is imported for one backend (`import_models.py --backend`): `torch` (CUDA, CPU, MPS; classification heads
and causal-LM rerankers), or a CPU runtime that the model is converted for at import time: `openvino` /
`openvino-int8` (OpenVINO, weight-only int8) and `onnx` / `onnx-int8` (ONNX Runtime, dynamic int8). CPU runtimes take
BERT-family cross-encoders (one-logit `*ForSequenceClassification`) only.

This module imports no runtime: the model store reads backend names without loading torch, ONNX Runtime or OpenVINO.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch

    from rerank_server.recipes.base import LastTokenHead

BackendName = Literal["torch", "openvino", "openvino-int8", "onnx", "onnx-int8"]
BACKENDS: tuple[BackendName, ...] = ("torch", "openvino", "openvino-int8", "onnx", "onnx-int8")
# What `import_models.py --backend` offers. ONNX Runtime fp32 is not among them: it never won (0.6-0.8x torch fp32
# for the same scores, docs/benchmarks.md); models stored with it still load.
IMPORT_CHOICES: tuple[BackendName, ...] = ("torch", "openvino-int8", "openvino", "onnx-int8")
# The arithmetic a model is stored to run in on a CPU (`import_models.py --precision`, or what `--backend auto` chose):
# bfloat16 only where the CPU computes it natively (rerank_server.cpu.has_native_bf16), float32 elsewhere. A GPU
# ignores it (RERANK_DTYPE decides there).
CpuPrecision = Literal["float32", "bfloat16"]
CPU_PRECISIONS: tuple[CpuPrecision, ...] = ("float32", "bfloat16")
# Files a converted model keeps besides its runtime's own: the tokenizer and the config that describe it.
CONVERTED_KEEPS = ("*.json", "*.txt", "*.model", "*.jinja")


class Backend(Protocol):
    """A loaded model on one device."""

    device: str
    weight_bytes: int

    def logits(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None
    ) -> torch.Tensor:
        """One float32 logit per row (possibly still on the device: the caller copies once per batch)."""

    def release(self) -> None:
        """Drop the weights."""


RUNTIMES: dict[str, str] = {
    "torch": "torch",
    "openvino": "OpenVINO",
    "openvino-int8": "OpenVINO",
    "onnx": "ONNX Runtime",
    "onnx-int8": "ONNX Runtime",
}


# One transformers load at a time in this process. `from_pretrained` swaps class-wide functions for its duration
# (`PreTrainedModel.tie_weights`, `init_weights`, `torch.nn.init.*`) and puts back what it found on exit: two loads
# that overlap can put back the other's stand-ins for good, and every later load of a model with tied embeddings
# (Qwen3-Reranker-0.6B, mxbai-rerank v2) then gets a random output layer and wrong scores, silently. The registry
# loads on a pool of threads, so two models asked for at once would overlap. (huggingface/transformers#44940, open.)
_TRANSFORMERS_LOADING = threading.Lock()


def is_cpu_runtime(backend: str) -> bool:
    return backend != "torch"


def convert(model_dir: Path, backend: str) -> None:
    """Convert a stored model folder for `backend` at import time (nothing to do for torch)."""
    if backend in ("onnx", "onnx-int8"):
        from rerank_server.backends import onnx_backend

        onnx_backend.export(model_dir, backend)
    elif backend in ("openvino", "openvino-int8"):
        from rerank_server.backends import openvino_backend

        openvino_backend.export(model_dir, backend)


def remove_conversion(model_dir: Path, backend: str) -> None:
    """Remove what `convert` wrote for `backend` (a path the import's fidelity check refused)."""
    import shutil

    if backend in ("onnx", "onnx-int8"):
        from rerank_server.backends.onnx_backend import ONNX_DIR as folder
    elif backend in ("openvino", "openvino-int8"):
        from rerank_server.backends.openvino_backend import OPENVINO_DIR as folder
    else:
        return
    shutil.rmtree(model_dir / folder, ignore_errors=True)


def load_backend(
    backend: str,
    path: Path,
    *,
    causal: bool,
    head: LastTokenHead | None,
    pad_id: int,
    device: str,
    dtype: torch.dtype,
    threads: int,
    remote_code: bool = False,
    module_stack: bool = False,
    vision: bool = False,
    late_interaction: bool = False,
    listwise: bool = False,
    float32_projection: bool = False,
    cpu_precision: CpuPrecision = "float32",
) -> Backend:
    """The stored model at `path` loaded for `backend` (a CPU runtime ignores `device` and `dtype`). `remote_code`:
    the checkpoint's own modelling code; `module_stack`: a sentence-transformers score head after the transformer;
    `vision`: a vision-language reranker (torch only), scored from its last-token logits like a causal one;
    `late_interaction`: a ColBERT encoder, token embeddings out (torch only); `listwise`: a listwise reranker's Qwen3
    backbone and projector, its outputs upcast to float32 with `float32_projection` (torch only); `cpu_precision`: a
    CPU runtime's arithmetic (torch's is `dtype`)."""
    if backend in ("onnx", "onnx-int8"):
        from rerank_server.backends.onnx_backend import OnnxBackend

        return OnnxBackend(path, backend=backend, threads=threads)
    if backend in ("openvino", "openvino-int8"):
        from rerank_server.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(path, backend=backend, threads=threads, precision=cpu_precision)
    import torch

    from rerank_server.backends.torch_backend import LastTokenLogit, ModuleStack, SequenceClassifier

    if device == "cpu":
        # torch sizes its pool from the host's cores, not the container's quota (see rerank_server.cpu).
        torch.set_num_threads(threads)
    with _TRANSFORMERS_LOADING:
        if listwise:
            from rerank_server.backends.listwise import ListwiseBackbone

            return ListwiseBackbone(path, device=device, dtype=dtype, float32_projection=float32_projection)  # type: ignore[return-value]
        if late_interaction:
            from rerank_server.backends.late_interaction import TokenEmbeddings

            return TokenEmbeddings(path, device=device, dtype=dtype, remote_code=remote_code)  # type: ignore[return-value]
        if vision:
            from rerank_server.backends.vision_backend import VisionLastTokenLogit

            assert head is not None
            return VisionLastTokenLogit(path, device=device, dtype=dtype, head=head)
        if causal:
            assert head is not None
            return LastTokenLogit(path, device=device, dtype=dtype, head=head)
        if module_stack:
            return ModuleStack(path, device=device, dtype=dtype)
        return SequenceClassifier(path, device=device, dtype=dtype, pad_id=pad_id, remote_code=remote_code)
