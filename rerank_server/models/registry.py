"""Which rerankers are loaded: loads on first use (once), keeps within a budget of loaded models (least recently used
first out, never one in use or loading), replaces a model by its newer import (without a gap when the budget holds
both copies; when it does not, the old copy gives way, and comes back if the new one fails to load), and retries a
model that failed to load after a growing back-off (models/failures.py).

Every name is resolved once, by `resolve` (through `store.find_reranker`), before anything is keyed by it:
everything here is keyed by the stored model's canonical id, and each loaded copy is pinned by whoever uses it.
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
from rerank_server.cpu import usable_cpus
from rerank_server.errors import ModelLoadError, UnknownModelError
from rerank_server.metrics import RerankMetrics, worker_label
from rerank_server.models.canary import check_canary
from rerank_server.models.embedding_cache import EmbeddingCache
from rerank_server.models.failures import LoadFailures
from rerank_server.models.loaded import LoadedReranker, amx_hint, load_reranker
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
        self._loaded: dict[str, LoadedReranker] = {}  # model id → the copy new requests get
        self._stored_of: dict[LoadedReranker, StoredReranker] = {}  # each copy → the stored version it came from
        self._loading: dict[str, int] = {}  # model id → the bytes its weights are expected to take
        self._last_used: dict[str, float] = {}
        self._in_use: dict[str, int] = {}  # model id → callers holding or getting one of its copies
        self._pins: dict[LoadedReranker, int] = {}  # each copy → callers holding it
        self._retiring: set[LoadedReranker] = set()  # copies replaced by a newer import, unloaded once unpinned
        # Model id → the copy's version that gave way to a newer import (a budget too tight for both): reloaded if the
        # newer one does not load.
        self._displaced: dict[str, StoredReranker] = {}
        self.failures = LoadFailures()
        self.embeddings = EmbeddingCache(settings.embedding_cache_mb * 2**20, metrics)
        self._changed = threading.Condition()
        self._scanning = threading.Lock()  # one rescan at a time
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
            with self._scanning:  # one thread scans; the others wait for its scan instead of making their own
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

    def failure(self, stored: StoredReranker) -> str | None:
        """Why `stored` is not served (an unusable calibration, or its last load's failure), or None."""
        if stored.calibration_problem:
            return f"its calibration cannot be used: {stored.calibration_problem}"
        with self._changed:
            return self.failures.reason(stored)

    def loaded_from(self, model: LoadedReranker) -> StoredReranker:
        """The stored version `model` was loaded from (its scores belong to that version)."""
        with self._changed:
            return self._stored_of[model]

    def get(self, name: str | None, timeout: float | None = None) -> LoadedReranker:
        """The loaded model `name` means, loading it first if needed (not pinned: for tools and tests)."""
        with self.using(self.resolve(name), timeout) as model:
            return model

    def try_acquire(self, stored: StoredReranker) -> LoadedReranker | None:
        """`stored`'s loaded copy, pinned, when it can be had without waiting; None when it must be loaded first."""
        with self._changed:
            model = self._loaded.get(stored.model_id)
            if model is None or not self._servable(model, stored):
                return None
            self._in_use[stored.model_id] = self._in_use.get(stored.model_id, 0) + 1
            self._pin(model)
            return model

    def acquire(self, stored: StoredReranker, timeout: float | None = None) -> LoadedReranker:
        """`stored`, loaded if needed, protected from unloading until `release(model)`.

        Waits up to `timeout` seconds for room under the loaded-model budget while other models are busy, or for
        another caller's load of the same model.
        """
        model_id = stored.model_id
        with self._changed:
            self._in_use[model_id] = self._in_use.get(model_id, 0) + 1
        try:
            return self._loaded_model(stored, timeout)
        except BaseException:
            with self._changed:
                self._put_down(model_id)
            raise

    def release(self, model: LoadedReranker) -> None:
        """End one `acquire`: the copy may be unloaded to make room (or, replaced, is unloaded) once nothing uses it.

        Any thread may release, the event loop's too (a client that leaves cancels its work there): a replaced copy
        is unloaded on a thread of its own, never on the caller's."""
        unload: list[LoadedReranker] = []
        with self._changed:
            self._put_down(self._stored_of[model].model_id)
            self._pins[model] -= 1
            if not self._pins[model]:
                del self._pins[model]
                if model in self._retiring:
                    self._retiring.discard(model)
                    unload.append(model)
        if unload:
            threading.Thread(target=self._unload, args=(unload,), name="rerank-unload", daemon=True).start()

    @contextmanager
    def using(self, stored: StoredReranker, timeout: float | None = None) -> Iterator[LoadedReranker]:
        """`acquire` for the duration of a block."""
        model = self.acquire(stored, timeout)
        try:
            yield model
        finally:
            self.release(model)

    def preload(self, default: str, others: Sequence[str] = ()) -> list[str]:
        """Load the default model (its failure is raised) and each of `others` (a failure is logged, and that model
        answers 503 until a retry after its back-off loads it). The names of the models that failed."""
        self.get(default or None)
        failed = []
        for name in others:
            try:
                self.get(name)
            except (UnknownModelError, ModelLoadError) as exc:
                logger.error("RERANK_PRELOAD: %s; serving without it", exc)
                failed.append(name)
        return failed

    def _pin(self, model: LoadedReranker) -> None:
        self._pins[model] = self._pins.get(model, 0) + 1
        self._last_used[self._stored_of[model].model_id] = time.monotonic()

    def _servable(self, current: LoadedReranker, stored: StoredReranker) -> bool:
        """Whether the copy in service answers for `stored`: it is that version, or `stored` is a newer import that is
        being loaded by another caller (no gap) or failed recently (the old version serves until a retry works)."""
        return (
            self._stored_of[current].tag == stored.tag
            or stored.model_id in self._loading
            or self.failures.blocking(stored) is not None
        )

    def _put_down(self, model_id: str) -> None:
        remaining = self._in_use.get(model_id, 0) - 1
        if remaining > 0:
            self._in_use[model_id] = remaining
        else:
            self._in_use.pop(model_id, None)
        self._changed.notify_all()

    def _loaded_model(self, stored: StoredReranker, timeout: float | None) -> LoadedReranker:
        model_id = stored.model_id
        deadline = None if timeout is None else time.monotonic() + timeout
        evicted: list[LoadedReranker] = []
        with self._changed:
            while True:
                current = self._loaded.get(model_id)
                if current is not None and self._servable(current, stored):
                    self._pin(current)
                    return current
                if (refused := self.failures.blocking(stored)) is not None:
                    raise ModelLoadError(refused, self.failures.retry_after(stored))
                if model_id not in self._loading:
                    room, freed = self._make_room(stored)
                    evicted += freed
                    if room:
                        self._loading[model_id] = self._expected_bytes(stored)
                        break
                    if current is not None:  # no room for the newer import yet: the old copy keeps serving
                        self._pin(current)
                        return current
                    if not self._in_use.keys() - {model_id} and not self._loading:
                        raise ModelLoadError(self._no_room(stored))
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ModelLoadError(self._still_waiting(stored))
                self._changed.wait(left)
        self._unload(evicted)
        try:
            return self._load(stored)
        except ModelLoadError:
            return self._keep_serving(stored)

    def _keep_serving(self, failed: StoredReranker) -> LoadedReranker:
        """After a newer import failed to load: the old copy if it is still loaded, else the version that gave way to
        it, loaded again; the failure when there is neither."""
        with self._changed:
            if (current := self._loaded.get(failed.model_id)) is not None:
                self._pin(current)
                return current
            displaced = self._displaced.pop(failed.model_id, None)
            if displaced is None:
                message = self.failures.blocking(failed) or f"The model `{failed.model_id}` did not load"
                raise ModelLoadError(message, self.failures.retry_after(failed))
            self._loading[failed.model_id] = self._expected_bytes(displaced)
        logger.warning(
            "Serving %s %s again: its newer import %s did not load", failed.model_id, displaced.tag, failed.tag
        )
        return self._load(displaced)

    def _still_waiting(self, stored: StoredReranker) -> str:
        if stored.model_id in self._loading:
            return f"The model `{stored.model_id}` is still loading; retry shortly"
        return (
            f"The model `{stored.model_id}` cannot be loaded now: the loaded-model budget is full of models in use; "
            "retry shortly"
        )

    def _load(self, stored: StoredReranker) -> LoadedReranker:
        model_id = stored.model_id
        started = time.perf_counter()
        try:
            model = self._factory(stored)
        except Exception as exc:
            with self._changed:
                message = self.failures.remember(stored, exc)
                retry_after = self.failures.retry_after(stored)
                self._loading.pop(model_id, None)
                self._changed.notify_all()
            # The caller's message has no file paths; the log has the error as raised, and where the model is.
            logger.error("%s (from %s: %s: %s)", message, stored.path, type(exc).__name__, exc)
            logger.debug("Loading %s failed", model_id, exc_info=True)
            raise ModelLoadError(message, retry_after) from exc
        with self._changed:
            self._loading.pop(model_id, None)
            self.failures.forget(model_id)
            self._displaced.pop(model_id, None)
            replaced = self._loaded.get(model_id)
            self._loaded[model_id] = model
            self._stored_of[model] = stored
            self._pin(model)
            unload = []
            if replaced is not None:
                logger.info(
                    "Replaced %s %s by its newer import %s", model_id, self._stored_of[replaced].tag, stored.tag
                )
                if self._pins.get(replaced):
                    self._retiring.add(replaced)  # unloaded when its last user releases it
                else:
                    unload.append(replaced)
            self._changed.notify_all()
        self._unload(unload)
        elapsed = time.perf_counter() - started
        if self._metrics:
            self._metrics.model_load.labels(model_id).observe(elapsed)
            self._metrics.models_loaded.labels(worker_label()).inc()
        logger.info(
            "Loaded %s (%s, %s recipe, %s backend) on %s in %.1f s (%d CPU threads)",
            model_id, stored.tag, stored.recipe, stored.backend, model.device, elapsed, usable_cpus(),
        )  # fmt: skip
        if hint := amx_hint(stored, self.settings.dtype, model.device):
            logger.info(hint)
        return model

    # --- the budget --------------------------------------------------------------------------------------------------

    def _expected_bytes(self, stored: StoredReranker) -> int:
        return stored.memory_bytes(
            resolve_dtype(self.settings.dtype, self.device, stored.checkpoint_dtype, stored.cpu_precision).itemsize
        )

    def _fits(self, incoming: StoredReranker, leaving: Sequence[str] = ()) -> bool:
        # Replaced copies still in use hold memory until their last user lets go.
        held = [self._loaded[m] for m in self._loaded if m not in leaving] + list(self._retiring)
        count = len(held) + len(self._loading) + 1
        if self.settings.max_loaded_models and count > self.settings.max_loaded_models:
            return False
        if self.settings.max_model_memory_mb:
            used = sum(model.weight_bytes for model in held) + sum(self._loading.values())
            return used + self._expected_bytes(incoming) <= self.settings.max_model_memory_mb * 2**20
        return True

    def _make_room(self, incoming: StoredReranker) -> tuple[bool, list[LoadedReranker]]:
        """Unload idle models, least recently used first, until `incoming` fits (call holding the condition); nothing
        is unloaded when that cannot make enough room. A newer import of a loaded model loads beside the old copy when
        the budget allows, else in its place once that copy is idle.

        The default model is never unloaded, and it loads even when it alone exceeds the budget.
        """
        if incoming.model_id == self.default_model_id:
            return True, []
        idle = sorted(
            (m for m in self._loaded if m != self.default_model_id and not self._in_use.get(m)),
            key=lambda m: self._last_used.get(m, 0.0),
        )
        leaving: list[str] = []
        while not self._fits(incoming, leaving):
            if not idle:
                old = self._loaded.get(incoming.model_id)
                # Only the caller holds the old copy: it gives way to the new one (replaced, not served twice).
                if old is not None and self._in_use.get(incoming.model_id) == 1 and not self._pins.get(old):
                    leaving.append(incoming.model_id)
                    if self._fits(incoming, leaving):
                        break
                return False, []
            leaving.append(idle.pop(0))
        evicted = []
        for model_id in leaving:
            model = self._loaded.pop(model_id)
            self._last_used.pop(model_id, None)
            evicted.append(model)
            if model_id == incoming.model_id:
                self._displaced[model_id] = self._stored_of[model]
                logger.info("Unloading %s %s to load its newer import", model_id, self._stored_of[model].tag)
            else:
                logger.info("Unloading %s (least recently used; loaded-model budget)", model_id)
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
            with self._changed:
                self._stored_of.pop(model, None)
            if self._metrics:
                self._metrics.models_loaded.labels(worker_label()).dec()
        evicted.clear()
        gc.collect()
        torch.cuda.empty_cache()  # a no-op without CUDA

    def _load_model(self, stored: StoredReranker) -> LoadedReranker:
        model = load_reranker(
            stored, device=self.device, dtype=self.settings.dtype, tokenizers=self.settings.tokenizers,
            allow_remote_code=self.settings.allow_remote_code,
            embeddings=self.embeddings if self.settings.embedding_cache_mb else None,
            list_pass_tokens=self.settings.max_list_pass_tokens or (32_768 if self.device.startswith("cuda") else 8192),
        )  # fmt: skip
        check_canary(model, stored.model_id)  # on this device and dtype: where a broken conversion shows
        return model
