"""Which rerankers are loaded: loads on first use (once), keeps within a budget of loaded models (least recently used
first out, never one in use or loading), and remembers a model that failed to load until it is imported again.

Every name is resolved once, by `resolve` (through `store.find_reranker`), before anything is keyed by it:
everything here is keyed by the stored model's canonical id.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from rerank_server.backends.torch_backend import resolve_device, resolve_dtype
from rerank_server.cpu import has_amx_bf16, usable_cpus
from rerank_server.errors import ModelLoadError, UnknownModelError
from rerank_server.metrics import RerankMetrics, worker_label
from rerank_server.models.loaded import LoadedReranker, load_reranker
from rerank_server.models.store import StoredReranker, find_reranker, list_rerankers
from rerank_server.settings import Settings

logger = logging.getLogger("bentoml")

# How often the registry reads the store again: an import (or re-import) made while the server runs is served within
# a second, and a flood of requests (bogus names included) costs one store scan a second, not one each.
STORE_RESCAN_S = 1.0


ModelLoader = Callable[[StoredReranker], LoadedReranker]


class ModelRegistry:
    """The models this worker serves. Thread-safe: all bookkeeping under one condition, loading outside it."""

    def __init__(
        self,
        settings: Settings,
        factory: ModelLoader | None = None,
        metrics: RerankMetrics | None = None,
        device: str | None = None,
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self.device = device or resolve_device(settings.device)
        self._factory = factory or self._load_model
        self._loaded: dict[str, LoadedReranker] = {}
        self._versions: dict[str, str] = {}  # model id → the stored tag its loaded model came from
        self._loading: dict[str, int] = {}  # model id → the bytes its weights are expected to take
        self._last_used: dict[str, float] = {}
        self._in_use: dict[str, int] = {}
        self._failed: dict[str, tuple[str, str]] = {}  # model id → (stored tag that failed, why)
        self._changed = threading.Condition()
        self._stored: list[StoredReranker] = list_rerankers()
        self._scanned_at = time.monotonic()
        default = find_reranker(settings.default_model, self._stored)
        self._default_id = default.model_id if default else ""

    # --- names -------------------------------------------------------------------------------------------------------

    def refresh(self) -> list[StoredReranker]:
        """Re-read the store, so that models imported while the server runs become servable."""
        self._stored = list_rerankers()
        self._scanned_at = time.monotonic()
        return self._stored

    @property
    def default_model_id(self) -> str:
        """The default model's canonical id (the setting as typed until the store has been asked)."""
        return self._default_id or self.settings.default_model.strip()

    def resolve(self, name: str | None) -> StoredReranker:
        """The stored reranker a request's `model` names (the default when empty). Blocking: reads the store."""
        wanted = name.strip() if name and name.strip() else self.settings.default_model
        if time.monotonic() - self._scanned_at >= STORE_RESCAN_S:
            self.refresh()
        found = find_reranker(wanted, self._stored)
        if found is None:
            raise UnknownModelError(wanted, [s.model_id for s in self._stored])
        if not name or not name.strip():
            self._default_id = found.model_id
        return found

    # --- loading and pinning -----------------------------------------------------------------------------------------

    def loaded_ids(self) -> list[str]:
        with self._changed:
            return list(self._loaded)

    def version(self, model_id: str) -> str:
        """The stored tag the loaded `model_id` came from (its scores belong to that version)."""
        with self._changed:
            return self._versions[model_id]

    def get(self, name: str | None, timeout: float | None = None) -> LoadedReranker:
        """The loaded model `name` means, loading it first if needed (not pinned: for tools and tests)."""
        with self.using(self.resolve(name), timeout) as model:
            return model

    def acquire(self, stored: StoredReranker, timeout: float | None = None) -> LoadedReranker:
        """`stored`, loaded if needed, protected from unloading until `release(stored.model_id)`.

        Waits up to `timeout` seconds for room under the loaded-model budget while other models are busy.
        """
        model_id = stored.model_id
        with self._changed:
            self._in_use[model_id] = self._in_use.get(model_id, 0) + 1
        try:
            return self._loaded_model(stored, timeout)
        except BaseException:
            self.release(model_id)
            raise

    def release(self, model_id: str) -> None:
        """End one `acquire`: the model may be unloaded to make room once nothing uses it."""
        with self._changed:
            remaining = self._in_use.get(model_id, 0) - 1
            if remaining > 0:
                self._in_use[model_id] = remaining
            else:
                self._in_use.pop(model_id, None)
                self._changed.notify_all()

    @contextmanager
    def using(self, stored: StoredReranker, timeout: float | None = None) -> Iterator[LoadedReranker]:
        """`acquire` for the duration of a block."""
        model = self.acquire(stored, timeout)
        try:
            yield model
        finally:
            self.release(stored.model_id)

    def preload(self, default: str, others: Sequence[str] = ()) -> list[str]:
        """Load the default model (its failure is raised) and each of `others` (a failure is logged, and that model
        answers 503 until it is imported again). The names of the models that failed."""
        self.get(default or None)
        failed = []
        for name in others:
            try:
                self.get(name)
            except (UnknownModelError, ModelLoadError) as exc:
                logger.error("RERANK_PRELOAD: %s; serving without it", exc)
                failed.append(name)
        return failed

    def _loaded_model(self, stored: StoredReranker, timeout: float | None) -> LoadedReranker:
        model_id = stored.model_id
        deadline = None if timeout is None else time.monotonic() + timeout
        evicted: list[LoadedReranker] = []
        with self._changed:
            while True:
                loaded = self._loaded.get(model_id)
                # A newer import of a loaded model replaces it once nothing else uses the old one.
                if loaded is not None and (self._versions[model_id] == stored.tag or self._in_use[model_id] > 1):
                    self._last_used[model_id] = time.monotonic()
                    return loaded
                if loaded is not None:
                    logger.info(
                        "Replacing %s %s by its newer import %s", model_id, self._versions[model_id], stored.tag
                    )
                    evicted.append(self._loaded.pop(model_id))
                failure = self._failed.get(model_id)
                if failure and failure[0] == stored.tag:
                    raise ModelLoadError(failure[1])
                if model_id not in self._loading:
                    room, evicted = self._make_room(stored)
                    if room:
                        self._loading[model_id] = self._expected_bytes(stored)
                        break
                    if not self._in_use.keys() - {model_id} and not self._loading:
                        raise ModelLoadError(self._no_room(stored))
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ModelLoadError(
                        f"The model `{model_id}` cannot be loaded now: the loaded-model budget is full of models "
                        "in use; retry shortly"
                    )
                self._changed.wait(left)
        self._unload(evicted)
        return self._load(stored)

    def _load(self, stored: StoredReranker) -> LoadedReranker:
        model_id = stored.model_id
        started = time.perf_counter()
        try:
            model = self._factory(stored)
        except Exception as exc:
            message = f"The model `{model_id}` could not be loaded: {type(exc).__name__}: {str(exc)[:500]}"
            logger.error("%s (from %s)", message, stored.path)
            logger.debug("Loading %s failed", model_id, exc_info=True)
            with self._changed:
                self._loading.pop(model_id, None)
                self._failed[model_id] = (stored.tag, message)
                self._changed.notify_all()
            raise ModelLoadError(message) from exc
        with self._changed:
            self._loading.pop(model_id, None)
            self._failed.pop(model_id, None)
            self._loaded[model_id] = model
            self._versions[model_id] = stored.tag
            self._last_used[model_id] = time.monotonic()
            self._changed.notify_all()
        elapsed = time.perf_counter() - started
        if self._metrics:
            self._metrics.model_load.labels(model_id).observe(elapsed)
            self._metrics.models_loaded.labels(worker_label()).inc()
        logger.info(
            "Loaded %s (%s, %s recipe, %s backend) on %s in %.1f s (%d CPU threads)",
            model_id, stored.tag, stored.recipe, stored.backend, model.device, elapsed, usable_cpus(),
        )  # fmt: skip
        if stored.backend == "torch" and model.device == "cpu" and self.settings.dtype == "auto" and has_amx_bf16():
            logger.info(
                "This CPU has AMX bfloat16 units: RERANK_DTYPE=bfloat16 scores 2-3.6x faster, rankings kept "
                "(docs/benchmarks.md, CPU backends)"
            )
        return model

    # --- the budget --------------------------------------------------------------------------------------------------

    def _expected_bytes(self, stored: StoredReranker) -> int:
        return stored.memory_bytes(resolve_dtype(self.settings.dtype, self.device, stored.checkpoint_dtype).itemsize)

    def _fits(self, incoming: StoredReranker) -> bool:
        count = len(self._loaded) + len(self._loading) + 1
        if self.settings.max_loaded_models and count > self.settings.max_loaded_models:
            return False
        if self.settings.max_model_memory_mb:
            used = sum(s.weight_bytes for s in self._loaded.values()) + sum(self._loading.values())
            return used + self._expected_bytes(incoming) <= self.settings.max_model_memory_mb * 2**20
        return True

    def _make_room(self, incoming: StoredReranker) -> tuple[bool, list[LoadedReranker]]:
        """Unload idle models, least recently used first, until `incoming` fits (call holding the condition).

        The default model is never unloaded, and it loads even when it alone exceeds the budget.
        """
        evicted: list[LoadedReranker] = []
        while not self._fits(incoming) and incoming.model_id != self.default_model_id:
            idle = [m for m in self._loaded if m != self.default_model_id and not self._in_use.get(m)]
            if not idle:
                return False, evicted
            victim = min(idle, key=lambda m: self._last_used.get(m, 0.0))
            evicted.append(self._loaded.pop(victim))
            self._last_used.pop(victim, None)
            logger.info("Unloading %s (least recently used; loaded-model budget)", victim)
        return True, evicted

    def _no_room(self, stored: StoredReranker) -> str:
        return (
            f"The model `{stored.model_id}` does not fit beside the default model within RERANK_MAX_LOADED_MODELS="
            f"{self.settings.max_loaded_models} / RERANK_MAX_MODEL_MEMORY_MB={self.settings.max_model_memory_mb}"
        )

    def _unload(self, evicted: list[LoadedReranker]) -> None:
        """Free unloaded models' memory: drop the weights, collect, and only then return the cache to the device."""
        if not evicted:
            return
        for model in evicted:
            model.release()
            if self._metrics:
                self._metrics.models_loaded.labels(worker_label()).dec()
        evicted.clear()
        gc.collect()
        torch.cuda.empty_cache()  # a no-op without CUDA

    def _load_model(self, stored: StoredReranker) -> LoadedReranker:
        return load_reranker(stored, device=self.device, dtype=self.settings.dtype, tokenizers=self.settings.tokenizers)
