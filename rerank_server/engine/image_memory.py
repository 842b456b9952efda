"""A bound on the memory that prepared images hold between their preparation and their forward passes.

The queue is bounded in pairs, and a text pair weighs a few KB; an image pair may weigh 30 MB of float32 patches
(a 1,280-token image), so pairs alone do not bound memory once images come. Each request with images reserves what
its images will take, computed from their headers before any pixel is decoded, and gives it back when its pairs have
been scored (or refused).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rerank_server.errors import QueueFullError


class ImageMemory:
    """Bytes of prepared images reserved by requests in this worker, within `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def reserve(self, size: int) -> Callable[[], None]:
        """Reserve `size` bytes, or raise QueueFullError (429) when that would pass the limit while other requests
        hold some: a request larger than the limit is still taken alone, or it could never run. Returns the release
        (calling it twice releases once)."""
        if size <= 0:
            return lambda: None
        with self._lock:
            if self._held and self._held + size > self.limit:
                raise QueueFullError(
                    f"images of waiting requests hold {self._held / 2**20:,.0f} MiB and this request's would add "
                    f"{size / 2**20:,.0f} MiB, over the limit of {self.limit / 2**20:,.0f} MiB "
                    "(RERANK_MAX_IMAGE_MEMORY_MB)"
                )
            self._held += size
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if not released.is_set():
                    released.set()
                    self._held -= size

        return release
