"""The forward pass of a late-interaction model (ColBERT as PyLate saves it) on PyTorch: the bare encoder
(`config.json`'s BertModel, ModernBertModel, ...), then the Dense projection of `1_Dense/` (no bias, no activation),
then L2 normalisation of each token's vector. Token ids in, one unit vector per token out; MaxSim is the recipe's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rerank_server.backends.torch_backend import TorchBackend
from rerank_server.recipes.colbert import module_folders


def _dense_weight(where: Path) -> torch.Tensor:
    """The projection matrix (out x in) of a Dense module's folder."""
    if (where / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(where / "model.safetensors"))
    else:
        state = torch.load(where / "pytorch_model.bin", map_location="cpu", weights_only=True)
    if state.get("linear.bias") is not None:
        raise ValueError(f"{where}: a Dense projection with a bias, which PyLate's ColBERT never has")
    return state["linear.weight"]


class TokenEmbeddings(TorchBackend):
    """A ColBERT encoder: each token's projected, normalised vector."""

    def __init__(self, path: Path, *, device: str, dtype: torch.dtype) -> None:
        from transformers import AutoModel

        folders = module_folders(path)
        if folders is None:
            raise ValueError(f"{path}: modules.json does not list a transformer and a Dense projection")
        encoder, dense = folders
        self.device = device
        self.dtype = dtype
        self.encoder = AutoModel.from_pretrained(encoder, dtype=dtype, local_files_only=True).to(device).eval()
        self.projection = _dense_weight(dense).to(device=device, dtype=dtype)
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
