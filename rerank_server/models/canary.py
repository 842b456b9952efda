"""The load-time canary: a few short pairs every model must score sensibly before it is served.

Broken conversions and broken serving paths do not fail loudly: they score every pair 0.5 (vLLM #27857), 1e-23 or
NaN. A model whose raw scores for these pairs are not finite, or all equal within 1e-6, is refused at the import's test
run (`importer/check.py`) and at every load by the server (`models/registry.py`): one function for both.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from rerank_server.models.loaded import LoadedReranker

CANARY_QUERY = "what is a panda?"
# A relevant, a loosely related and an unrelated document: any working reranker tells at least two of them apart.
CANARY_DOCUMENTS = (
    "The giant panda is a bear species endemic to China.",
    "Bears are large mammals that live in forests and mountains.",
    "Preheat the oven to 200 degrees before baking the bread.",
)
# Raw scores closer together than this count as one constant.
EQUAL_WITHIN = 1e-6


class CanaryFailed(RuntimeError):
    """A model that scores nonsense: not served (the message says what it scored)."""


def canary_problem(model_id: str, logits: Sequence[float]) -> str | None:
    """Why these canary scores show a broken model, or None when they look like a working one."""
    shown = ", ".join(f"{value:.6g}" for value in logits)
    if not all(math.isfinite(value) for value in logits):
        return (
            f"{model_id} scores the load check's pairs as {shown}: not finite numbers; the weights or their "
            "conversion are broken"
        )
    if max(logits) - min(logits) <= EQUAL_WITHIN:
        return (
            f"{model_id} gives every pair of the load check the same score ({shown}): it cannot rank; the weights, "
            "their score head or their conversion are broken"
        )
    return None


def check_canary(model: LoadedReranker, model_id: str) -> list[float]:
    """Score the canary pairs with `model`; their raw scores. A model that fails (CanaryFailed says what it scored,
    or the forward pass raised) is released, its memory given back: nothing will serve it."""
    try:
        encoded = model.encode([CANARY_QUERY] * len(CANARY_DOCUMENTS), list(CANARY_DOCUMENTS))
        logits = model.forward(encoded).float().cpu().tolist()
        if (problem := canary_problem(model_id, logits)) is not None:
            raise CanaryFailed(problem)
    except BaseException:  # out of memory included: nothing will serve this copy
        model.release()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise
    return logits
