"""An optional in-memory LRU cache of pair scores: RAG front-ends repeat queries, and a hit costs no model time."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

from cachetools import LRUCache

from rerank_server.recipes import Item


def _parts(item: Item) -> Iterator[bytes]:
    """What of a query or document the score depends on: its text, and each image's bytes (as their digest)."""
    if isinstance(item, str):
        yield item.encode("utf-8", "surrogatepass")
        return
    yield b"\0none" if item.text is None else b"\0text" + item.text.encode("utf-8", "surrogatepass")
    for image in item.images:
        yield b"\0image" + image.digest


def cache_key(variant: str, query: Item, document: Item) -> bytes:
    """A fixed-size key, so that an entry costs ~200 bytes however long its document. `variant` names everything
    else the score depends on: the stored model version and how its pairs are tokenized.

    Each part is length-prefixed before hashing, so that no two different inputs can run together into one key; a
    query or document with images adds its text and the digest of each image's bytes, in order.
    """
    digest = hashlib.blake2b(digest_size=20)
    for kind, item in ((b"v", variant), (b"q", query), (b"d", document)):
        parts = list(_parts(item))
        digest.update(kind + len(parts).to_bytes(4, "little"))
        for data in parts:
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
