"""Document token embeddings of late-interaction models, kept between requests: a document's embeddings do not depend
on the query, and RAG retrievers bring the same chunks back for related questions, so a document seen before costs no
encoder pass.

One cache per worker process, bounded in bytes (RERANK_EMBEDDING_CACHE_MB), least recently used out. Entries are
keyed by the loaded copy that made them (a re-import loads a new copy, so it never meets the old version's
embeddings) and the document's token ids (the same text gives the same ids). Kept in float32 on the CPU: scores from
the cache are those of a cold run, to the bit.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from rerank_server.metrics import RerankMetrics

# Each loaded copy's own key space.
_owners = itertools.count(1)
# What an entry costs besides its numbers (the tensor object and its storage, the key, the dictionary slot): counted,
# so that a stream of very short documents cannot hold much more than the budget.
ENTRY_OVERHEAD = 400


def _size(key: bytes, embeddings: torch.Tensor) -> int:
    return embeddings.numel() * embeddings.element_size() + len(key) + ENTRY_OVERHEAD


def new_owner() -> int:
    """A key prefix that no other loaded copy has had in this process."""
    return next(_owners)


class EmbeddingCache:
    """(owner, document token ids) → the document's kept token embeddings; thread-safe."""

    def __init__(self, max_bytes: int, metrics: RerankMetrics | None = None) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, bytes], torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._metrics = metrics

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, owner: int, keys: list[bytes]) -> list[torch.Tensor | None]:
        """The cached embeddings of each key (None where absent), each found one marked as just used."""
        found: list[torch.Tensor | None] = []
        with self._lock:
            for key in keys:
                entry = self._entries.get((owner, key))
                if entry is not None:
                    self._entries.move_to_end((owner, key))
                found.append(entry)
        hits = sum(entry is not None for entry in found)
        self._report(hits, len(keys) - hits)
        return found

    def put(self, owner: int, key: bytes, embeddings: torch.Tensor) -> None:
        """Keep `embeddings` (a CPU tensor) unless they alone exceed the budget; older entries leave to make room."""
        size = _size(key, embeddings)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop((owner, key), None)
            if old is not None:
                self._bytes -= _size(key, old)
            while self._entries and self._bytes + size > self.max_bytes:
                (_, old_key), evicted = self._entries.popitem(last=False)
                self._bytes -= _size(old_key, evicted)
            self._entries[(owner, key)] = embeddings
            self._bytes += size
        self._report(0, 0)

    def forget(self, owner: int) -> None:
        """Drop every entry a loaded copy made (it was unloaded: nothing will ask for them)."""
        with self._lock:
            for entry_key in [k for k in self._entries if k[0] == owner]:
                embeddings = self._entries.pop(entry_key)
                self._bytes -= _size(entry_key[1], embeddings)
        self._report(0, 0)

    def _report(self, hits: int, misses: int) -> None:
        if self._metrics is not None:
            self._metrics.embedding_cache_hits.inc(hits)
            self._metrics.embedding_cache_misses.inc(misses)
            self._metrics.embedding_cache_bytes.set(self._bytes)
