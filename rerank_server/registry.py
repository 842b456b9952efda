"""Which rerankers are loaded: resolves request model names, loads on first use (once), scores batches."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from rerank_server.catalog import canonical_id
from rerank_server.model_store import StoredReranker, find_reranker, list_rerankers
from rerank_server.schemas import PairScore, ScorePair
from rerank_server.scorer import CrossEncoderScorer, resolve_device, resolve_dtype
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
    """The models this worker serves. Thread-safe: loading happens under a per-model lock."""

    def __init__(self, settings: Settings, factory: ScorerFactory | None = None) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self._factory = factory or self._load_scorer
        self._loaded: dict[str, CrossEncoderScorer] = {}
        self._load_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self._stored: list[StoredReranker] = []
        self.refresh()

    def refresh(self) -> list[StoredReranker]:
        """Re-read the store, so that models imported while the server runs become servable."""
        self._stored = list_rerankers()
        return self._stored

    @property
    def stored(self) -> list[StoredReranker]:
        return list(self._stored)

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
        scorer = self._loaded.get(model_id)
        if scorer is not None:
            return scorer
        stored = self.resolve(model_id)
        with self._load_locks[stored.model_id]:
            scorer = self._loaded.get(stored.model_id)
            if scorer is None:
                started = time.perf_counter()
                try:
                    scorer = self._factory(stored)
                except Exception as exc:
                    logger.exception("Loading %s from %s failed", stored.model_id, stored.path)
                    raise ModelLoadError(f"The model `{stored.model_id}` could not be loaded: {exc}") from exc
                with self._guard:
                    self._loaded[stored.model_id] = scorer
                logger.info(
                    "Loaded %s (%s) on %s as %s in %.1f s",
                    stored.model_id, stored.tag, self.device, str(self.dtype).removeprefix("torch."),
                    time.perf_counter() - started,
                )  # fmt: skip
        return scorer

    def preload(self, names: Sequence[str]) -> None:
        """Load each named model now; an unknown or broken one stops start-up with a clear message."""
        for name in names:
            self.get(name)

    def score(self, pairs: Sequence[ScorePair]) -> list[PairScore]:
        """Score a merged batch that may mix models: each model's pairs go through it in one call."""
        results: list[PairScore] = [PairScore()] * len(pairs)
        by_model: defaultdict[str, list[int]] = defaultdict(list)
        for position, pair in enumerate(pairs):
            by_model[pair.model].append(position)
        for model_id, positions in by_model.items():
            try:
                scored = self.get(model_id).score(
                    [pairs[i].query for i in positions], [pairs[i].document for i in positions]
                )
            except (UnknownModelError, ModelLoadError) as exc:
                for i in positions:
                    results[i] = PairScore(error=str(exc))
                continue
            for i, logit, score, tokens in zip(positions, scored.logits, scored.scores, scored.tokens):
                results[i] = PairScore(score=score, logit=logit, tokens=tokens)
        return results

    def _load_scorer(self, stored: StoredReranker) -> CrossEncoderScorer:
        return CrossEncoderScorer(
            stored.path,
            max_length=stored.max_length,
            device=self.device,
            dtype=self.dtype,
            token_budget=self.settings.token_budget,
        )
