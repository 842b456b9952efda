"""A CPU backend on OpenVINO, converted at import time from the ONNX export: fp32, or with its weights compressed to
int8 by NNCF (`compress_weights`, INT8_ASYM: per-channel, data-free, activations stay float32).

Weight-only int8 keeps the arithmetic in float32, so its scores stay far closer to fp32 than ONNX Runtime's dynamic
int8, which quantizes activations too (docs/benchmarks.md measures both). Two kinds of weights stay float32 because
compressing them costs most of the ranking fidelity for little speed: the score head (pooler and classifier: one
logit, every error lands on the score) and the first FFN projection (`intermediate.dense`, whose error is amplified by
the GELU after it). Measured on the MiniLM fixture: worst-query Spearman 0.988 compressing everything, 0.997 keeping
these, at 1.17x the time of compressing everything (still 1.3x faster than fp32 on the bge-base shape).

The model is compiled once, by the import's check run, into a cache inside the stored model, so a server starting on
the same kind of CPU loads the compiled blob instead of compiling again.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch

from rerank_server.backends.onnx_backend import export_onnx
from rerank_server.cpu import has_native_bf16

logger = logging.getLogger("bentoml")

OPENVINO_DIR = "openvino"
FILES = {"openvino": "model.xml", "openvino-int8": "model_int8.xml"}
CACHE_DIR = "cache"
KEPT_FLOAT = [".*classifier.*", ".*pooler.*", r".*intermediate/dense.*"]


def model_file(model_dir: Path, backend: str) -> Path:
    return model_dir / OPENVINO_DIR / FILES[backend]


def inference_precision(precision: str) -> str:
    """OpenVINO's precision hint for a stored precision: bf16 only where this CPU computes it natively, since elsewhere
    the plugin would run f32 anyway and the scores would no longer be the ones the import's fidelity check measured."""
    return "bf16" if precision == "bfloat16" and has_native_bf16() else "f32"


def _config(threads: int, precision: str = "float32") -> dict[str, str]:
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(threads),
        # Always set: left out, a CPU with bfloat16 support computes in bfloat16 even for a model stored for float32,
        # and its scores drift from what the import checked.
        "INFERENCE_PRECISION_HINT": inference_precision(precision),
        # The tokenizer, the HTTP server and the model thread share these cores: pinning the model's threads to some
        # of them would leave the others idle while it waits.
        "ENABLE_CPU_PINNING": "NO",
    }


def export(model_dir: Path, backend: str) -> Path:
    """Write `model_dir/openvino/<model>.xml/.bin` for `backend` (compiled on first load, into the model's cache)."""
    import openvino as ov

    target = model_file(model_dir, backend)
    onnx = export_onnx(model_dir, target.parent / "export.onnx")
    model = ov.convert_model(str(onnx))
    if backend == "openvino-int8":
        # NNCF sends usage telemetry unless told it runs in CI (the only thing this variable changes): an import on
        # an air-gapped host would wait on the network, and a user never agreed to it.
        os.environ.setdefault("NNCF_CI", "1")
        import nncf

        model = nncf.compress_weights(
            model,
            mode=nncf.CompressWeightsMode.INT8_ASYM,
            # Patterns on node names of the ONNX export (`/bert/encoder/layer.5/intermediate/dense/MatMul`), which
            # BERT, XLM-RoBERTa and their kin share; validate=False since a model may lack a pooler.
            ignored_scope=nncf.IgnoredScope(patterns=KEPT_FLOAT, validate=False),
        )
    ov.save_model(model, str(target), compress_to_fp16=False)
    onnx.unlink()
    return target


def compile_model(xml: Path, threads: int, cache: Path, precision: str = "float32"):
    import openvino as ov

    core = ov.Core()
    core.set_property({"CACHE_DIR": str(cache)})
    # From the file path, not an ov.Model: with caching on, a cached blob is then imported without reading the IR.
    return core.compile_model(str(xml), "CPU", _config(threads, precision))


def _writable_cache(model_dir: Path) -> tuple[Path, bool]:
    """Where OpenVINO keeps the compiled model, and whether that is a scratch folder of this load alone."""
    cache = model_dir / OPENVINO_DIR / CACHE_DIR
    try:
        cache.mkdir(exist_ok=True)
        probe = cache / ".writable"
        probe.touch()
        probe.unlink()
        return cache, False
    except OSError:
        # A read-only store (a container image): compile into a scratch cache, as a CPU unlike the import's would.
        logger.info("%s is read-only: OpenVINO compiles the model into a scratch cache", cache.parent)
        return Path(tempfile.mkdtemp(prefix="rerank-openvino-cache-")), True


class OpenVinoBackend:
    """A one-logit cross-encoder on OpenVINO's CPU plugin (one infer request: the scorer runs one pass at a time)."""

    device = "cpu"

    def __init__(self, path: Path, *, backend: str, threads: int, precision: str = "float32") -> None:
        xml = model_file(path, backend)
        cache, scratch = _writable_cache(path)
        # A scratch cache lives as long as this load: models swapped under the loaded-model budget would otherwise
        # leave a compiled copy in /tmp at every load.
        self._scratch = weakref.finalize(self, shutil.rmtree, cache, True) if scratch else None
        self.compiled = compile_model(xml, threads, cache, precision)
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.weight_bytes = xml.with_suffix(".bin").stat().st_size

    def logits(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None
    ) -> torch.Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask}
        given["token_type_ids"] = token_type_ids if token_type_ids is not None else np.zeros_like(input_ids)
        outputs = self.request.infer({name: given[name] for name in self.input_names})
        return torch.from_numpy(np.array(outputs["logits"][:, 0], dtype=np.float32))

    def release(self) -> None:
        del self.request
        del self.compiled
        if self._scratch is not None:
            self._scratch()
