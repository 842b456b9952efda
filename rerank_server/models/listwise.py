"""Scoring lists with a listwise model: each pass of a list read once (one unpadded forward, never shared with another
list), the projected states at its markers, the cosine of each document with the query; a list read in several passes
fused as the published `rerank()` does: each pass weighted by (1 + its best cosine) / 2, the query vector the weighted
mean of the passes' query vectors, and every document scored again against it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from rerank_server.recipes.base import DocumentList

if TYPE_CHECKING:
    from rerank_server.backends.listwise import ListwiseBackbone


def cosine(documents: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Each document vector's cosine with the query vector (torch's, as the published code takes it)."""
    return torch.nn.functional.cosine_similarity(documents, query.expand_as(documents), dim=-1)


def list_scores(backend: ListwiseBackbone, scored: DocumentList) -> torch.Tensor:
    """The cosine of each document of one list (float32, on the CPU, in list order)."""
    queries: list[torch.Tensor] = []
    documents: list[torch.Tensor | None] = [None] * scored.size
    bests: list[torch.Tensor] = []
    for one in scored.passes:
        states = backend.hidden(np.asarray(one.input_ids, dtype=np.int64))
        positions = torch.tensor([*one.document_positions, one.query_position], device=states.device)
        projected = backend.project(states[positions])
        query, vectors = projected[-1:], projected[:-1]
        queries.append(query)
        for index, vector in zip(one.documents, vectors, strict=True):
            documents[index] = vector
        bests.append(cosine(vectors, query).max())
    stacked = torch.stack(documents)  # type: ignore[arg-type]
    if len(queries) == 1:
        return cosine(stacked, queries[0]).float().cpu()
    weights = torch.stack([(1 + best) / 2 for best in bests]).to(stacked.dtype)
    query = (torch.cat(queries) * weights[:, None]).sum(dim=0, keepdim=True) / weights.sum()
    return cosine(stacked, query).float().cpu()


def listwise_scores(backend: ListwiseBackbone, lists: Sequence[DocumentList]) -> torch.Tensor:
    """The scores of every document of `lists`, one list after another (float32, on the CPU)."""
    return torch.cat([list_scores(backend, scored) for scored in lists])
