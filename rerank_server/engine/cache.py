"""An optional in-memory LRU cache of pair scores: RAG front-ends repeat queries, and a hit costs no model time."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

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


def list_variant(variant: str, query: Item, documents: Sequence[Item]) -> str:
    """`variant` for the documents of one list of a listwise model, whose scores depend on the whole list and its
    order: the list's digest (each document length-prefixed, so no two lists run together) joins every key."""
    digest = hashlib.blake2b(digest_size=20)
    for item in (query, *documents):
        for data in _parts(item):
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        digest.update(b"\0end")
    return f"{variant}|list:{digest.hexdigest()}"


@dataclass
class Found:
    """What the cache knows of a request's pairs: the positions still to compute and their keys, the hits (logit and
    tokens by position), and for a listwise list its pass count and the key that count is kept under."""

    computed: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    hits: dict[int, tuple[float, int]] = field(default_factory=dict)
    passes: int | None = None
    key: bytes | None = None


def look_up(cache: ScoreCache, variant: str, queries: Sequence[Item], documents: Sequence[Item], listed: bool) -> Found:
    """Look each pair up. `listed`: the pairs are one listwise list, keyed by the whole list and each position in it
    (never by the pair alone), found only whole: unless every document and the list's pass count are found, every
    pair is computed again."""
    found = Found()
    if listed:
        variant = list_variant(variant, queries[0], documents)
        found.key = cache_key(f"{variant}|passes", queries[0], "")
        passes = cache.get(found.key)
        found.passes = int(passes[0]) if passes is not None else None
    pairs = enumerate(zip(queries, documents, strict=True))
    keys = [cache_key(f"{variant}|{i}" if listed else variant, query, document) for i, (query, document) in pairs]
    for position, key in enumerate(keys):
        cached = cache.get(key)
        if cached is None:
            found.computed.append(position)
            found.keys.append(key)
        else:
            found.hits[position] = cached
    if listed and (found.computed or found.passes is None):
        return Found(list(range(len(keys))), keys, {}, None, found.key)
    return found
