"""The forward pass on PyTorch (CUDA, CPU, MPS): a classification head, or a causal LM's last-token logits."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import torch

from rerank_server.cpu import has_native_bf16
from rerank_server.recipes.base import LastTokenHead

logger = logging.getLogger("bentoml")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(choice: str) -> str:
    """`auto` becomes CUDA when a GPU is visible, else CPU."""
    if choice != "auto":
        return choice
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(
    choice: str, device: str, checkpoint_dtype: str | None = None, cpu_precision: str = "float32"
) -> torch.dtype:
    """`auto`: on CUDA, bfloat16 for checkpoints that ship in it (Qwen3), float16 otherwise (BGE); elsewhere the
    precision the model was stored for (`import_models.py --backend auto`), bfloat16 only where the CPU has it natively,
    else float32."""
    if choice != "auto":
        return _DTYPES[choice]
    if not device.startswith("cuda"):
        if device == "cpu" and cpu_precision == "bfloat16" and has_native_bf16():
            return torch.bfloat16
        return torch.float32
    return torch.bfloat16 if checkpoint_dtype == "bfloat16" else torch.float16


def _on_device(array: np.ndarray, device: str) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.startswith("cuda"):
        # Pinned host memory makes the copy asynchronous, so it overlaps the previous sub-batch's compute.
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class TorchBackend:
    """Shared by both heads: the device, the dtype, and what the weights take in memory."""

    device: str
    dtype: torch.dtype
    weight_bytes: int
    takes_token_types: bool = False

    def _features(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None
    ) -> dict[str, torch.Tensor]:
        """The padded pass on the device, as the model's forward takes it."""
        features = {
            "input_ids": _on_device(input_ids, self.device),
            "attention_mask": _on_device(attention_mask, self.device),
        }
        if token_type_ids is not None and self.takes_token_types:
            features["token_type_ids"] = _on_device(token_type_ids, self.device)
        return features

    def _measure(self, module: torch.nn.Module) -> None:
        self.weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())

    def release(self) -> None:
        """Drop every reference to the weights (the registry frees accelerator memory once they are gone)."""
        for name in ("model", "body", "head"):
            if hasattr(self, name):
                delattr(self, name)


def _takes(forward: object, name: str) -> bool:
    """Whether `forward` accepts the argument `name` (by name, or through **kwargs)."""
    parameters = inspect.signature(forward).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


class SequenceClassifier(TorchBackend):
    """A `*ForSequenceClassification` checkpoint with one label: its logit per pair. With `remote_code`, the
    checkpoint's own modelling code, from the stored folder only (the import stored it and made its references
    local)."""

    def __init__(self, path: Path, *, device: str, dtype: torch.dtype, pad_id: int, remote_code: bool = False) -> None:
        from transformers import AutoModelForSequenceClassification

        self.device, self.dtype = device, dtype
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=dtype, trust_remote_code=remote_code, local_files_only=True
        )
        if model.config.pad_token_id is None:
            # Decoder classifiers (Qwen3ForSequenceClassification) find each pair's last token by the pad id.
            model.config.pad_token_id = pad_id
        self.model = model.to(device).eval()
        # As sentence-transformers does: token types reach a forward that takes them, or any keyword.
        self.takes_token_types = _takes(model.forward, "token_type_ids")
        self._measure(self.model)

    @torch.inference_mode()
    def logits(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None
    ) -> torch.Tensor:
        # Half-precision logits are upcast before the sigmoid, as sentence-transformers does.
        return self.model(**self._features(input_ids, attention_mask, token_type_ids)).logits[:, 0].float()


class LastTokenLogit(TorchBackend):
    """A `*ForCausalLM` reranker: the logits of the head's tokens at the last position (inputs padded on the left).

    Only the last position's hidden state meets the output embedding, and only its rows for the head's tokens: the
    full `sequence × vocabulary` logits (151,936 or 256,000 floats per position) are never made, and the rest of the
    output embedding is freed when it is not tied to the input embedding.
    """

    def __init__(self, path: Path, *, device: str, dtype: torch.dtype, head: LastTokenHead) -> None:
        from transformers import AutoModelForCausalLM

        self.device, self.dtype = device, dtype
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        rows = [head.positive_id] if head.negative_id is None else [head.positive_id, head.negative_id]
        output = model.get_output_embeddings()
        self.head = output.weight[rows].detach().clone().to(device)
        self.head_bias = output.bias[rows].detach().clone().to(device) if output.bias is not None else None
        # Gemma 2 and 3 squash their logits with tanh; the score is taken after it, as the model's own forward does.
        self.softcap: float | None = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        self.body = model.base_model.to(device).eval()
        self._measure(self.body)

    @torch.inference_mode()
    def logits(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None
    ) -> torch.Tensor:
        hidden = self.body(
            input_ids=_on_device(input_ids, self.device),
            attention_mask=_on_device(attention_mask, self.device),
            use_cache=False,
        ).last_hidden_state[:, -1]
        logits = hidden @ self.head.T
        if self.head_bias is not None:
            logits = logits + self.head_bias
        logits = logits.float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits[:, 0] - logits[:, 1] if logits.shape[1] == 2 else logits[:, 0]


class ModuleStack(TorchBackend):
    """A sentence-transformers CrossEncoder whose score comes from modules after the transformer (the Ettin
    rerankers: CLS pooling, dense, layer norm, dense): the folder's own modules, as `CrossEncoder.predict` runs them,
    fed the recipe's token ids. Its raw score is the logit."""

    def __init__(self, path: Path, *, device: str, dtype: torch.dtype) -> None:
        from sentence_transformers import CrossEncoder

        self.device, self.dtype = device, dtype
        self.model = CrossEncoder(
            str(path),
            device=device,
            local_files_only=True,
            model_kwargs={"dtype": dtype},
            activation_fn=torch.nn.Identity(),  # the raw score is the logit; the engine takes its sigmoid
        ).eval()
        self.takes_token_types = True  # its transformer module keeps what its model takes
        self._measure(self.model)

    @torch.inference_mode()
    def logits(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None
    ) -> torch.Tensor:
        scores = self.model(self._features(input_ids, attention_mask, token_type_ids))["scores"]
        return scores.reshape(len(input_ids), -1)[:, 0].float()
