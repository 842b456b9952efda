"""A CPU backend on ONNX Runtime: the model exported at import time (optionally int8-quantized), run per sub-batch.

sentence-transformers' own `backend="onnx"` needs optimum-onnx, which pins transformers < 4.58 and cannot be
installed beside the transformers 5 this server runs on; so the export is torch's own ONNX exporter, the int8 variant
ONNX Runtime's dynamic quantization (no calibration data to download), and the session is ONNX Runtime's. The recipe
and the token packing in front of it are the same as for torch, so both backends see the same tokens.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np
import torch

ONNX_DIR = "onnx"
FILES = {"onnx": "model.onnx", "onnx-int8": "model_int8.onnx"}


def onnx_file(model_dir: Path, backend: str) -> Path:
    return model_dir / ONNX_DIR / FILES[backend]


def export_onnx(model_dir: Path, target: Path) -> Path:
    """`model_dir`'s Hugging Face weights as an fp32 ONNX graph at `target` (inputs as the forward takes them)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sample = tokenizer(["query"] * 2, ["a document", "another document"], padding=True, return_tensors="pt")
    # The graph takes its inputs in the order of the forward signature, whatever order the tokenizer returns them in.
    names = [name for name in inspect.signature(model.forward).parameters if name in sample]
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the exporter's notes on traced control flow are about other models
        torch.onnx.export(
            model, (), f=str(target), kwargs={name: sample[name] for name in names}, input_names=names,
            output_names=["logits"], opset_version=17, dynamo=False,
            dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in names}, "logits": {0: "batch"}},
        )  # fmt: skip
    return target


def export(model_dir: Path, backend: str) -> Path:
    """Write the file `backend` runs into `model_dir/onnx/` (the fp32 export is removed for `onnx-int8`)."""
    fp32 = export_onnx(model_dir, onnx_file(model_dir, "onnx"))
    if backend == "onnx":
        return fp32
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = onnx_file(model_dir, "onnx-int8")
    # Per-channel int8 weights keep the scores closest to fp32; activations are quantized on the fly.
    quantize_dynamic(fp32, quantized, weight_type=QuantType.QInt8, per_channel=True)
    fp32.unlink()  # only the variant that is served is kept
    return quantized


class OnnxBackend:
    """A one-logit cross-encoder on ONNX Runtime's CPU execution provider."""

    device = "cpu"

    def __init__(self, path: Path, *, backend: str, threads: int) -> None:
        import onnxruntime as ort

        model_file = onnx_file(path, backend)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.weight_bytes = model_file.stat().st_size

    def logits(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None
    ) -> torch.Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            given["token_type_ids"] = token_type_ids
        elif "token_type_ids" in self.input_names:
            given["token_type_ids"] = np.zeros_like(input_ids)
        (logits,) = self.session.run(["logits"], {name: given[name] for name in self.input_names})
        return torch.from_numpy(logits[:, 0]).float()

    def release(self) -> None:
        del self.session
