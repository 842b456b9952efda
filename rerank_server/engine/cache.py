"""An optional in-memory LRU cache of pair scores: RAG front-ends repeat queries, and a hit costs no model time."""

from __future__ import annotations

import hashlib
import threading

from cachetools import LRUCache


def cache_key(variant: str, query: str, document: str) -> bytes:
    """A fixed-size key, so that an entry costs ~200 bytes however long its document. `variant` names everything
    else the score depends on: the stored model version and how its pairs are tokenized.

    Each part is length-prefixed before hashing, so that no two different inputs can run together into one key.
    """
    digest = hashlib.blake2b(digest_size=20)
    for part in (variant, query, document):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.digest()


class ScoreCache:
    """Logit and token count per (model version, tokenization options, query, document); least recently used out."""

    def __init__(self, max_entries: int) -> None:
        self._entries: LRUCache[bytes, tuple[float, int]] = LRUCache(maxsize=max_entries)
        self._lock = threading.Lock()  # cachetools caches are not thread-safe

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> tuple[float, int] | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: bytes, logit: float, tokens: int) -> None:
        with self._lock:
            self._entries[key] = (logit, tokens)
