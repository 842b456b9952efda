"""The forward pass of a listwise reranker (jina-reranker-v3 / v3.5, `JinaForRanking`) on PyTorch: transformers' own
Qwen3 backbone (`Qwen3Model`, sliding-window layers included where the config's `layer_types` has them), loaded from
the folder's weights, never the repository's code (which swaps `lm_head` for `Identity` and does not load on
transformers 5); the last hidden states after the final norm; and the projector (Linear, ReLU, Linear, no bias) that
the checkpoint stores as `projector.0.weight` and `projector.2.weight`. Token ids in, hidden states and projected
vectors out; the cosine and the fusion of passes are `models/listwise.py`'s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rerank_server.backends.load_report import from_pretrained_quietly
from rerank_server.backends.torch_backend import TorchBackend, _on_device
from rerank_server.recipes.listwise import PROJECTOR_KEYS, projector_file


def projector_weights(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The two projector matrices (out x in) from the folder's safetensors file that holds them."""
    from safetensors import safe_open

    with safe_open(str(projector_file(folder)), framework="pt") as weights:
        first, second = (weights.get_tensor(key) for key in PROJECTOR_KEYS)
    return first, second


class ListwiseBackbone(TorchBackend):
    """A Qwen3 backbone and the listwise projector on one device."""

    def __init__(self, path: Path, *, device: str, dtype: torch.dtype, float32_projection: bool = False) -> None:
        from transformers import Qwen3Config, Qwen3Model

        self.device, self.dtype = device, dtype
        config = Qwen3Config.from_pretrained(path, local_files_only=True)
        if "sliding_attention" in (config.layer_types or ()) and config.sliding_window is None:
            raise ValueError(f"{path}: its config has sliding-window layers but no sliding_window (use_sliding_window)")
        found = projector_weights(path)
        # The projector is in the same checkpoint, read apart (`projector_weights`).
        self.model = from_pretrained_quietly(
            Qwen3Model, path, set(PROJECTOR_KEYS).__contains__, config=config, dtype=dtype, local_files_only=True
        )
        self.model = self.model.to(device).eval()
        self.head = [weight.to(device=device, dtype=dtype) for weight in found]
        self.float32_projection = float32_projection
        self._measure(self.model)
        self.weight_bytes += sum(weight.numel() * weight.element_size() for weight in self.head)

    @torch.inference_mode()
    def hidden(self, input_ids: np.ndarray) -> torch.Tensor:
        """The last hidden states (after the final norm) of one unpadded prompt: (tokens, hidden)."""
        ids = _on_device(input_ids[None, :], self.device)
        return self.model(input_ids=ids, use_cache=False).last_hidden_state[0]

    @torch.inference_mode()
    def project(self, states: torch.Tensor) -> torch.Tensor:
        """The projector: Linear, ReLU, Linear (no bias); upcast to float32 after it when the model does (v3.5)."""
        first, second = self.head
        projected = torch.relu(states @ first.T) @ second.T
        return projected.float() if self.float32_projection else projected

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None) -> None:
        """Not a listwise model's output: its scores are cosines of marker states (`models/listwise.py`)."""
        raise TypeError("a listwise model scores a list of documents from its marker states, not a logit head")
