"""Imported by every Python process of a server that `benchmarks/host_ceiling.py` starts (it is first on their
PYTHONPATH): the model forward becomes free, so the benchmark measures everything else the host does per pair —
HTTP, JSON, validation, tokenization, queueing, batching, padding, the response.

Never on a real server's path: only that benchmark puts this folder on PYTHONPATH.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from rerank_server.models import loaded


class ZeroCostForward:
    """A backend whose forward costs nothing: one logit per row (its token count, so that results differ)."""

    device = "cpu"
    weight_bytes = 0

    def logits(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None
    ) -> torch.Tensor:
        return torch.from_numpy(attention_mask.sum(axis=1, dtype=np.float32))

    def release(self) -> None:
        pass


def _load_backend(backend: str, path: Path, **_: Any) -> ZeroCostForward:
    return ZeroCostForward()


loaded.load_backend = _load_backend
