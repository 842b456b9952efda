"""Scoring a pass of late-interaction pairs: each distinct query encoded once, each distinct document encoded once
unless the worker's cache has its embeddings, then MaxSim per pair (the recipe's). Queries and documents of several
requests are merged here into one encoder pass each, like any other pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from rerank_server.recipes.base import LatePair
from rerank_server.recipes.colbert import maxsim

if TYPE_CHECKING:
    from rerank_server.backends.late_interaction import TokenEmbeddings
    from rerank_server.models.embedding_cache import EmbeddingCache


def _padded(rows: Sequence[tuple[int, ...]], attended: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ids padded on the right with 0 (masked), and the mask of their first `attended[i]` positions."""
    width = max(len(row) for row in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (row, count) in enumerate(zip(rows, attended, strict=True)):
        ids[i, : len(row)] = row
        mask[i, :count] = 1
    return ids, mask


def late_interaction_scores(
    backend: TokenEmbeddings, pairs: Sequence[LatePair], cache: EmbeddingCache | None, owner: int
) -> torch.Tensor:
    """The MaxSim of each pair (float32, on the CPU), encoding what the cache does not hold."""
    queries = list(dict.fromkeys((pair.query, pair.attended) for pair in pairs))
    query_vectors = backend.embed(*_padded([q for q, _ in queries], [a for _, a in queries]))
    # A query keeps every position, its expansion tokens too (PyLate's query expansion).
    by_query = {key: query_vectors[i, : len(key[0])].cpu() for i, key in enumerate(queries)}
    documents = list(dict.fromkeys((pair.document, pair.kept) for pair in pairs))
    keys = [np.asarray(ids, dtype=np.int32).tobytes() for ids, _ in documents]
    cached = cache.get_many(owner, keys) if cache is not None else [None] * len(keys)
    missing = [i for i, found in enumerate(cached) if found is None]
    if missing:
        rows = [documents[i][0] for i in missing]
        vectors = backend.embed(*_padded(rows, [len(row) for row in rows])).cpu()
        for j, i in enumerate(missing):
            kept = torch.tensor(documents[i][1], dtype=torch.bool)
            cached[i] = vectors[j, : len(kept)][kept].contiguous()
            if cache is not None:
                cache.put(owner, keys[i], cached[i])
    by_document = {key: cached[i] for i, key in enumerate(documents)}
    return torch.stack(
        [maxsim(by_query[(p.query, p.attended)], by_document[(p.document, p.kept)]) for p in pairs]  # type: ignore[arg-type]
    ).float()
