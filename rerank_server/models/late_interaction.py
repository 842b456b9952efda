"""Scoring a pass of late-interaction pairs: each distinct query encoded once, each distinct document encoded once
unless the worker's cache has its embeddings, then MaxSim per pair (the recipe's). Queries and documents of several
requests are merged here into one encoder pass each, like any other pass.

A batch is cut into passes by length, so one request's pairs span several passes: the loaded copy keeps its latest
queries' embeddings (`QueryMemo`) so that a query is encoded once per batch, not once per pass.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
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


QueryKey = tuple[tuple[int, ...], int]


class QueryMemo:
    """The latest queries' token embeddings of one loaded copy, least recently used out past `max_bytes` (queries
    are short: the default holds hundreds). Not the document cache: it would count queries as documents, and a batch
    needs its queries whatever RERANK_EMBEDDING_CACHE_MB says."""

    def __init__(self, max_bytes: int = 8 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[QueryKey, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: QueryKey) -> torch.Tensor | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: QueryKey, vectors: torch.Tensor) -> None:
        size = vectors.numel() * vectors.element_size()
        with self._lock:
            if key in self._entries or size > self.max_bytes:
                return
            while self._entries and self._bytes + size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.numel() * evicted.element_size()
            self._entries[key] = vectors
            self._bytes += size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def late_interaction_scores(
    backend: TokenEmbeddings,
    pairs: Sequence[LatePair],
    cache: EmbeddingCache | None,
    owner: int,
    memo: QueryMemo | None = None,
) -> torch.Tensor:
    """The MaxSim of each pair (float32, on the CPU), encoding what the cache (documents) and the memo (queries) do
    not hold."""
    distinct = list(dict.fromkeys((pair.query, pair.attended) for pair in pairs))
    by_query = {key: found for key in distinct if memo is not None and (found := memo.get(key)) is not None}
    queries = [key for key in distinct if key not in by_query]
    if queries:
        query_vectors = backend.embed(*_padded([q for q, _ in queries], [a for _, a in queries]))
        for i, key in enumerate(queries):
            # A query keeps every position, its expansion tokens too (PyLate's query expansion). A copy of its own:
            # a slice would keep the whole pass's tensor alive in the memo, far past the bytes it counts.
            by_query[key] = query_vectors[i, : len(key[0])].cpu().clone()
            if memo is not None:
                memo.put(key, by_query[key])
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
