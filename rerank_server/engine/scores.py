"""What the engine answers: a request's scores (raw, and the relevance scores made from them last, after the result
cache), and the stored models as the server sees them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rerank_server.models.calibration import Calibration
from rerank_server.models.store import StoredReranker


@dataclass(frozen=True)
class DocumentScores:
    """A request's result: each document's logit (its best window's, when chunked), in document order, and the
    calibration its relevance scores go through (the model's at the time of the request)."""

    model_id: str
    logits: list[float]
    document_tokens: list[int]  # what the model saw of each document (all its windows), templates included
    relevance: Callable[[list[float]], list[float]]  # the recipe's own map from raw scores (`Recipe.relevance`)
    calibration: Calibration | None = None
    passes: int | None = None  # a listwise model's passes over the list (more than one: they were fused)

    @property
    def tokens(self) -> int:
        return sum(self.document_tokens)

    @property
    def scores(self) -> list[float]:
        """The relevance score of each document: the recipe's own map of its logit (a sigmoid for most families), or
        with a calibration the calibrated probability. Applied after the result cache, which holds raw logits only,
        so a cached score never carries another calibration."""
        if self.calibration is not None:
            return self.calibration.apply(self.logits)
        return self.relevance(self.logits)

    def ranking(self, top_n: int | None = None) -> list[int]:
        """Document indices best first, by logit: any calibration is monotone, so this is the order of the relevance
        scores too, without the ties that rounding a saturated score would make; equal logits keep document order."""
        order = sorted(range(len(self.logits)), key=self.logits.__getitem__, reverse=True)
        return order[:top_n] if top_n else order


@dataclass(frozen=True)
class ServedModel:
    """A stored reranker as the server sees it: whether it is loaded now, and whether it is the default."""

    stored: StoredReranker
    loaded: bool
    default: bool
    failure: str | None = None  # why it is not served (its last load was refused), if it is not
