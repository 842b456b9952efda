"""A CPU backend on ONNX Runtime: export at import time (optionally int8-quantized), score with the same tokenization.

sentence-transformers' own `backend="onnx"` needs optimum-onnx, which pins transformers < 4.58 and cannot be
installed beside the transformers 5 this server runs on; so the export is torch's own ONNX exporter, the int8 variant
ONNX Runtime's dynamic quantization (no calibration data to download), and the session is ONNX Runtime's. Everything
before the forward pass (truncation, packing by tokens) is the torch scorer's, so the two backends see the same input.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rerank_server.scorer import CrossEncoderScorer

logger = logging.getLogger("bentoml")

Backend = Literal["torch", "onnx", "onnx-int8"]
BACKENDS: tuple[Backend, ...] = ("torch", "onnx", "onnx-int8")
ONNX_DIR = "onnx"
_FILES = {"onnx": "model.onnx", "onnx-int8": "model_int8.onnx"}


def onnx_file(model_dir: Path, backend: Backend) -> Path:
    return model_dir / ONNX_DIR / _FILES[backend]


def export(model_dir: Path, backend: Backend) -> Path:
    """Write `model_dir/onnx/model.onnx` (and its int8 version for `onnx-int8`) from the Hugging Face weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    target = model_dir / ONNX_DIR
    target.mkdir(exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sample = tokenizer(["query"] * 2, ["a document", "another document"], padding=True, return_tensors="pt")
    # The graph takes its inputs in the order of the forward signature, whatever order the tokenizer returns them in.
    names = [name for name in inspect.signature(model.forward).parameters if name in sample]
    fp32 = target / _FILES["onnx"]
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the exporter's notes on traced control flow are about other models
        torch.onnx.export(
            model, (), f=str(fp32), kwargs={name: sample[name] for name in names}, input_names=names,
            output_names=["logits"], opset_version=17, dynamo=False,
            dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in names}, "logits": {0: "batch"}},
        )  # fmt: skip
    if backend == "onnx":
        return fp32
    quantized = target / _FILES["onnx-int8"]
    # Per-channel int8 weights keep the scores closest to fp32; activations are quantized on the fly.
    quantize_dynamic(fp32, quantized, weight_type=QuantType.QInt8, per_channel=True)
    fp32.unlink()  # only the variant that is served is kept
    return quantized


class OnnxScorer(CrossEncoderScorer):
    """The cross-encoder scorer with the forward pass on ONNX Runtime (CPU)."""

    def __init__(self, path: Path, *, max_length: int, backend: Backend, token_budget: int) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        model_file = onnx_file(path, backend)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.device = "cpu"
        self.max_length = max_length
        self.token_budget = token_budget
        # The memory budget counts weight bytes: for an ONNX model that is its file, one "parameter" per byte.
        self.dtype = torch.int8
        self.parameters = model_file.stat().st_size
        self._init_locks()

    def _forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {name: features[name].numpy().astype(np.int64, copy=False) for name in self.input_names}
        (logits,) = self.session.run(["logits"], inputs)
        return torch.from_numpy(logits[:, 0]).float()

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def release(self) -> None:
        del self.session
