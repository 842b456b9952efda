"""The forward pass of a vision-language reranker (Qwen3-VL) on PyTorch: token ids and pixels in, the last position's
answer logits out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rerank_server.backends.torch_backend import TorchBackend, _on_device
from rerank_server.recipes.base import LastTokenHead


class VisionLastTokenLogit(TorchBackend):
    """A `*ForConditionalGeneration` vision-language model scored like `LastTokenLogit`: the vision tower turns each
    image into features that take the place of its `<|image_pad|>` tokens, the language model runs, and only the
    last position's hidden state meets the head's rows of the output layer (the rest of it is freed)."""

    def __init__(self, path: Path, *, device: str, dtype: torch.dtype, head: LastTokenHead) -> None:
        from transformers import AutoModelForImageTextToText

        self.device, self.dtype = device, dtype
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        # One row, W_yes - W_no, as the reference's `score_linear`; in float32, so that a bf16 run rounds the score
        # once (the hidden state) and not twice: two bf16 logits near 20 are each only good to 0.125.
        weight = model.get_output_embeddings().weight.detach()
        row = weight[head.positive_id].float()
        if head.negative_id is not None:
            row = row - weight[head.negative_id].float()
        self.head = row.clone().to(device)  # a copy: a view of one row would keep the whole output layer
        self.image_token_id: int = model.config.image_token_id
        self.body = model.model.to(device).eval()
        self._measure(self.body)

    @torch.inference_mode()
    def logits(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray | None,
        pixel_values: np.ndarray | None = None,
        image_grid_thw: np.ndarray | None = None,
    ) -> torch.Tensor:
        """One logit per row: z_yes - z_no at the last position (rows padded on the left). `pixel_values` holds the
        pass's images' patch rows in the order their tokens appear, row by row; `image_grid_thw` their grids."""
        features = {
            "input_ids": _on_device(input_ids, self.device),
            "attention_mask": _on_device(attention_mask, self.device),
        }
        if pixel_values is not None and image_grid_thw is not None:
            # Which positions hold image tokens: 3-D rotary positions are built from these runs (0 text, 1 image).
            types = (input_ids == self.image_token_id).astype(np.int64)
            features |= {
                "pixel_values": _on_device(pixel_values, self.device).to(self.dtype),
                "image_grid_thw": _on_device(image_grid_thw, self.device),
                "mm_token_type_ids": _on_device(types, self.device),
            }
        hidden = self.body(**features, use_cache=False).last_hidden_state[:, -1]
        return hidden.float() @ self.head
