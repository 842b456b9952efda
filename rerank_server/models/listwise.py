"""Scoring lists with a listwise model: each pass of a list read once (one unpadded forward, never shared with another
list), the projected states at its markers, the cosine of each document with the query; a list read in several passes
fused as the published `rerank()` does: each pass weighted by (1 + its best cosine) / 2, the query vector the weighted
mean of the passes' query vectors, and every document scored again against it. `on_pass` is called after each pass:
a list of many passes is one call of the model, and the batcher's stall watch (/livez) must see it move.

On a GPU the callback marks a pass launched rather than finished (nothing waits for the device before the list's
final copy back); a pass there takes a small part of the stall limit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from rerank_server.recipes.base import DocumentList

if TYPE_CHECKING:
    from rerank_server.backends.listwise import ListwiseBackbone


def cosine(documents: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Each document vector's cosine with the query vector (torch's, as the published code takes it)."""
    return torch.nn.functional.cosine_similarity(documents, query.expand_as(documents), dim=-1)


def list_scores(
    backend: ListwiseBackbone, scored: DocumentList, on_pass: Callable[[], None] | None = None
) -> torch.Tensor:
    """The cosine of each document of one list (float32, on the CPU, in list order); `on_pass` after each pass."""
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
        if on_pass is not None:
            on_pass()
    stacked = torch.stack(documents)  # type: ignore[arg-type]
    if len(queries) == 1:
        return cosine(stacked, queries[0]).float().cpu()
    weights = torch.stack([(1 + best) / 2 for best in bests]).to(stacked.dtype)
    query = (torch.cat(queries) * weights[:, None]).sum(dim=0, keepdim=True) / weights.sum()
    return cosine(stacked, query).float().cpu()


def listwise_scores(
    backend: ListwiseBackbone, lists: Sequence[DocumentList], on_pass: Callable[[], None] | None = None
) -> torch.Tensor:
    """The scores of every document of `lists`, one list after another (float32, on the CPU); `on_pass` after each
    pass of each list."""
    return torch.cat([list_scores(backend, scored, on_pass) for scored in lists])
