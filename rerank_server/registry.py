"""Which rerankers are loaded: resolves request model names, loads on first use (once), keeps within a budget of
loaded models (least recently used first out, never one in use)."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from rerank_server.catalog import canonical_id
from rerank_server.metrics import RerankMetrics
from rerank_server.model_store import StoredReranker, find_reranker, list_rerankers
from rerank_server.onnx_backend import OnnxScorer
from rerank_server.scorer import CrossEncoderScorer, default_token_budget, resolve_device, resolve_dtype
from rerank_server.settings import Settings

logger = logging.getLogger("bentoml")


class UnknownModelError(LookupError):
    """A request named a model that is not in the store."""

    def __init__(self, name: str, available: Sequence[str]) -> None:
        self.name = name
        self.available = list(available)
        listing = ", ".join(self.available) or "none (import one with import_models.py)"
        super().__init__(f"The model `{name}` does not exist. Available models: {listing}")


class ModelLoadError(RuntimeError):
    """A stored model could not be loaded (corrupt or incompatible files)."""


ScorerFactory = Callable[[StoredReranker], CrossEncoderScorer]


class ModelRegistry:
    """The models this worker serves. Thread-safe: each model loads under its own lock, bookkeeping under one guard."""

    def __init__(
        self, settings: Settings, factory: ScorerFactory | None = None, metrics: RerankMetrics | None = None
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self._factory = factory or self._load_scorer
        self._loaded: dict[str, CrossEncoderScorer] = {}
        self._last_used: dict[str, float] = {}
        self._in_use: defaultdict[str, int] = defaultdict(int)
        self._load_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self._stored: list[StoredReranker] = []
        self.refresh()

    def refresh(self) -> list[StoredReranker]:
        """Re-read the store, so that models imported while the server runs become servable."""
        self._stored = list_rerankers()
        return self._stored

    @property
    def default_model_id(self) -> str:
        return self.settings.default_model_id

    def loaded_ids(self) -> list[str]:
        with self._guard:
            return list(self._loaded)

    def resolve(self, name: str | None) -> StoredReranker:
        """The stored reranker a request's `model` field names (the default when empty)."""
        wanted = name if name and name.strip() else self.default_model_id
        found = find_reranker(wanted, self._stored) or find_reranker(wanted, self.refresh())
        if found is None:
            raise UnknownModelError(canonical_id(wanted), [s.model_id for s in self._stored])
        return found

    def get(self, model_id: str) -> CrossEncoderScorer:
        """The loaded scorer for `model_id`, loading it first if needed; concurrent callers load it once."""
        with self._guard:
            scorer = self._loaded.get(model_id)
            if scorer is not None:
                self._last_used[model_id] = time.monotonic()
                return scorer
        stored = self.resolve(model_id)
        with self._load_locks[stored.model_id]:
            with self._guard:
                scorer = self._loaded.get(stored.model_id)
            if scorer is None:
                scorer = self._load(stored)
        return scorer

    def acquire(self, model_id: str) -> CrossEncoderScorer:
        """The scorer for `model_id` (loading it if needed), protected from unloading until `release(model_id)`."""
        with self._guard:
            self._in_use[model_id] += 1
        try:
            return self.get(model_id)
        except BaseException:
            self.release(model_id)
            raise

    def release(self, model_id: str) -> None:
        """End one `acquire`; a model over the budget may be unloaded now."""
        with self._guard:
            self._in_use[model_id] -= 1
        self._enforce_budget(keep=None)

    @contextmanager
    def using(self, model_id: str) -> Iterator[CrossEncoderScorer]:
        """`acquire` for the duration of a block."""
        scorer = self.acquire(model_id)
        try:
            yield scorer
        finally:
            self.release(model_id)

    def preload(self, names: Sequence[str]) -> None:
        """Load each named model now; an unknown or broken one stops start-up with a clear message."""
        for name in names:
            self.get(name)

    def _load(self, stored: StoredReranker) -> CrossEncoderScorer:
        self._enforce_budget(keep=stored.model_id, incoming=stored)
        started = time.perf_counter()
        try:
            scorer = self._factory(stored)
        except Exception as exc:
            logger.exception("Loading %s from %s failed", stored.model_id, stored.path)
            raise ModelLoadError(f"The model `{stored.model_id}` could not be loaded: {exc}") from exc
        with self._guard:
            self._loaded[stored.model_id] = scorer
            self._last_used[stored.model_id] = time.monotonic()
        if self._metrics:
            self._metrics.model_load.labels(stored.model_id).observe(time.perf_counter() - started)
            self._metrics.models_loaded.inc()
        logger.info(
            "Loaded %s (%s) on %s as %s in %.1f s (%d CPU threads)",
            stored.model_id, stored.tag, self.device, str(self.dtype).removeprefix("torch."),
            time.perf_counter() - started, torch.get_num_threads(),
        )  # fmt: skip
        return scorer

    def _weight_bytes(self, scorer: CrossEncoderScorer) -> int:
        return scorer.parameters * scorer.dtype.itemsize

    def _over_budget(self, incoming: StoredReranker | None) -> bool:
        count = len(self._loaded) + (1 if incoming else 0)
        if self.settings.max_loaded_models and count > self.settings.max_loaded_models:
            return True
        if self.settings.max_model_memory_mb:
            # A stored model's size is its float32 weights; loaded in half precision it takes half of that.
            incoming_bytes = incoming.size_bytes * self.dtype.itemsize // 4 if incoming else 0
            used = sum(self._weight_bytes(s) for s in self._loaded.values()) + incoming_bytes
            return used > self.settings.max_model_memory_mb * 2**20
        return False

    def _enforce_budget(self, keep: str | None, incoming: StoredReranker | None = None) -> None:
        """Unload least recently used models until within budget; never the default, `keep`, or one a batch uses."""
        evicted: list[CrossEncoderScorer] = []
        with self._guard:
            while self._over_budget(incoming):
                idle = [
                    model_id
                    for model_id in self._loaded
                    if model_id not in (keep, self.default_model_id) and self._in_use[model_id] == 0
                ]
                if not idle:
                    break  # everything else is busy: go over budget for now, retry when a batch finishes
                victim = min(idle, key=lambda m: self._last_used.get(m, 0.0))
                evicted.append(self._loaded.pop(victim))
                self._last_used.pop(victim, None)
                logger.info("Unloaded %s (least recently used; loaded-model budget)", victim)
        for scorer in evicted:
            scorer.release()
            if self._metrics:
                self._metrics.models_loaded.dec()
        if evicted:
            gc.collect()

    def _load_scorer(self, stored: StoredReranker) -> CrossEncoderScorer:
        return load_scorer(stored, device=self.device, dtype=self.dtype, token_budget=self.settings.token_budget)


def load_scorer(
    stored: StoredReranker, *, device: str, dtype: torch.dtype, token_budget: int | None = None
) -> CrossEncoderScorer:
    """A stored reranker loaded for scoring, on the backend it was imported for (token budget: the device's default)."""
    if stored.backend != "torch":
        # Imported for ONNX Runtime: a CPU backend whatever RERANK_DEVICE says.
        budget = token_budget or default_token_budget("cpu")
        return OnnxScorer(stored.path, max_length=stored.max_length, backend=stored.backend, token_budget=budget)
    return CrossEncoderScorer(
        stored.path, max_length=stored.max_length, device=device, dtype=dtype,
        token_budget=token_budget or default_token_budget(device),
    )  # fmt: skip
