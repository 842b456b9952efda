"""A bound on the memory that prepared images hold between their preparation and their forward passes.

The queue is bounded in pairs, and a text pair weighs a few KB; an image pair may weigh 30 MB of float32 patches
(a 1,280-token image), so pairs alone do not bound memory once images come. Each request with images reserves what
its images will take, computed from their headers before any pixel is decoded, and gives it back when its pairs have
been scored (or refused). Before that, the image files themselves (decoded base64, fetched URL bodies) are reserved
before they are read, and held until the request ends.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from rerank_server.errors import QueueFullError
from rerank_server.metrics import RerankMetrics
from rerank_server.recipes import Content, ImageInput, Item


class Reservation:
    """Bytes held in an `ImageMemory`; calling it gives them back (once, however often it is called)."""

    def __init__(self, memory: ImageMemory, size: int) -> None:
        self._memory = memory
        self.size = size

    def shrink(self, size: int) -> None:
        """Hold only `size` bytes (what turned out to be needed) of those reserved."""
        with self._memory._lock:
            given_back = max(self.size - max(size, 0), 0)
            self.size -= given_back
            self._memory._held -= given_back

    def __call__(self) -> None:
        self.shrink(0)


class ImageMemory:
    """Bytes of image files and prepared images reserved by requests in this worker, within `limit` bytes."""

    def __init__(self, limit: int, metrics: RerankMetrics | None = None) -> None:
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()
        self._metrics = metrics

    @property
    def held(self) -> int:
        return self._held

    def reserve(self, size: int, own: int = 0) -> Reservation:
        """Reserve `size` bytes, or raise QueueFullError (429) when that would pass the limit while other requests
        hold some (`own`: what the same request holds already): a request larger than the limit is still taken
        alone, or it could never run. Returns the reservation; calling it releases it."""
        if size <= 0:
            return Reservation(self, 0)
        with self._lock:
            if self._held - own > 0 and self._held + size > self.limit:
                if self._metrics is not None:
                    self._metrics.rejected.labels("image_memory").inc()
                raise QueueFullError(
                    f"images of waiting requests hold {self._held / 2**20:,.0f} MiB and this request's would add "
                    f"{size / 2**20:,.0f} MiB, over the limit of {self.limit / 2**20:,.0f} MiB "
                    "(RERANK_MAX_IMAGE_MEMORY_MB)"
                )
            self._held += size
        return Reservation(self, size)


def distinct_images(pairs: Sequence[tuple[Item, Item]]) -> list[ImageInput]:
    """Each image of `pairs` once (a query's image is prepared once for all its documents)."""
    seen: dict[bytes, ImageInput] = {}
    for pair in pairs:
        for item in pair:
            for image in item.images if isinstance(item, Content) else ():
                seen.setdefault(image.digest, image)
    return list(seen.values())
