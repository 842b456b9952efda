"""The forward pass of a late-interaction model (ColBERT) on PyTorch: the bare encoder (BertModel, ModernBertModel,
... or the model's own class, with its stored code), then the projection (no bias, no activation: a PyLate folder's
`1_Dense/`, or the `linear.weight` a Stanford checkpoint keeps beside its backbone), then L2 normalisation of each
token's vector. Token ids in, one unit vector per token out; MaxSim is the recipe's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rerank_server.backends.load_report import from_pretrained_quietly
from rerank_server.backends.torch_backend import TorchBackend
from rerank_server.recipes.colbert import PROJECTION, colbert_files

_BIAS = PROJECTION.replace(".weight", ".bias")


def _projection(path: Path) -> torch.Tensor:
    """The projection matrix (out x in) of the weights file that holds it; of a safetensors file only that tensor is
    read (a Stanford checkpoint holds the whole backbone beside it)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as weights:
            state = {key: weights.get_tensor(key) for key in (PROJECTION, _BIAS) if key in weights.keys()}  # noqa: SIM118
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get(_BIAS) is not None:
        raise ValueError(f"{path}: a ColBERT projection with a bias, which neither PyLate's nor colbert-ai's has")
    if PROJECTION not in state:
        raise ValueError(f"{path} holds no ColBERT projection ({PROJECTION})")
    return state[PROJECTION]


def _read_apart(key: str) -> bool:
    """The projection, read apart (`_projection`); the pooler (BertModel's, over the first token), never used: token
    vectors come from the last hidden state."""
    return key == PROJECTION or key.startswith("pooler.")


def _encoder(folder: Path, dtype: torch.dtype, remote_code: bool) -> torch.nn.Module:
    """The bare encoder (the model's own class with `remote_code`)."""
    from transformers import AutoModel

    return from_pretrained_quietly(
        AutoModel, folder, _read_apart, dtype=dtype, trust_remote_code=remote_code, local_files_only=True
    )


class TokenEmbeddings(TorchBackend):
    """A ColBERT encoder: each token's projected, normalised vector. `remote_code`: the encoder is the model's own
    class, from the code stored with it."""

    def __init__(self, path: Path, *, device: str, dtype: torch.dtype, remote_code: bool = False) -> None:
        encoder, projection = colbert_files(path)
        self.device = device
        self.dtype = dtype
        self.encoder = _encoder(encoder, dtype, remote_code).to(device).eval()
        self.projection = _projection(projection).to(device=device, dtype=dtype)
        self._measure(self.encoder)
        self.weight_bytes += self.projection.numel() * self.projection.element_size()

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> torch.Tensor:
        """(rows, tokens, dim) float32 unit vectors, padding positions included (the caller keeps what it needs)."""
        features = self._features(input_ids, attention_mask, None)
        with torch.inference_mode():
            hidden = self.encoder(**features).last_hidden_state
            projected = hidden @ self.projection.T
            return torch.nn.functional.normalize(projected.float(), p=2, dim=-1)

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None) -> None:
        raise TypeError("a late-interaction model scores pairs through its token embeddings, not a logit head")

    def release(self) -> None:
        for name in ("encoder", "projection"):
            if hasattr(self, name):
                delattr(self, name)
