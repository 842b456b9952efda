"""Scoring a request's pairs end to end: result cache, model, tokenization, the continuous batcher, the deadline.

Used by the HTTP routes (async) and by BentoML's batchable API (from a worker thread); both reach the same batcher, so
one model thread serves every caller of a worker process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import torch

from rerank_server.batcher import BatcherClosedError, ContinuousBatcher, QueueFullError
from rerank_server.cache import ScoreCache, cache_key
from rerank_server.metrics import RerankMetrics, get_metrics
from rerank_server.registry import ModelLoadError, ModelRegistry, UnknownModelError
from rerank_server.schemas import PairScore, ScorePair, Truncation
from rerank_server.settings import Settings

__all__ = ["BatcherClosedError", "DeadlineExceededError", "QueueFullError", "ScoringEngine"]


class DeadlineExceededError(TimeoutError):
    """The request was not scored within RERANK_REQUEST_TIMEOUT_S (504); its queued pairs were dropped."""


@dataclass
class _Group:
    """The pairs of one request that share a model and truncation settings: one batcher job."""

    model_id: str
    truncation: Truncation
    positions: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    future: concurrent.futures.Future[torch.Tensor] | None = None


def _sigmoid(logit: float) -> float:
    # Same value as torch.sigmoid on the float32 logit, without a tensor for one number.
    return float(torch.sigmoid(torch.tensor(logit, dtype=torch.float32)))


class ScoringEngine:
    """The registry of models, the batcher that feeds them, and the result cache of one worker process."""

    def __init__(
        self, settings: Settings, registry: ModelRegistry | None = None, metrics: RerankMetrics | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or get_metrics()
        self.registry = registry or ModelRegistry(settings, metrics=self.metrics)
        self.batcher = ContinuousBatcher(
            max_batch_pairs=settings.max_batch_pairs, max_queue_pairs=settings.max_queue_pairs, metrics=self.metrics
        )
        self.cache = ScoreCache(settings.cache_size) if settings.cache_size else None

    async def score(self, pairs: Sequence[ScorePair]) -> list[PairScore]:
        """Scores in the order of `pairs` (per-pair `error` when a model cannot be used).

        Raises QueueFullError (retry shortly), DeadlineExceededError, BatcherClosedError, or the model's own error.
        """
        deadline = time.monotonic() + self.settings.request_timeout_s
        results, groups = await anyio.to_thread.run_sync(self._start, pairs)
        waiting = [asyncio.wrap_future(g.future) for g in groups if g.future is not None]
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                await asyncio.gather(*waiting)
        except TimeoutError:
            self._expire(groups)
            raise DeadlineExceededError(self._late_message()) from None
        finally:
            for future in waiting:
                future.cancel()  # no-op once done; frees queued work when the caller went away
        return self._finish(pairs, results, groups)

    def score_blocking(self, pairs: Sequence[ScorePair]) -> list[PairScore]:
        """`score` for callers on a worker thread (BentoML's batchable API)."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        results, groups = self._start(pairs)
        pending = [g.future for g in groups if g.future is not None]
        _, late = concurrent.futures.wait(pending, timeout=max(deadline - time.monotonic(), 0.0))
        if late:
            self._expire(groups)
            raise DeadlineExceededError(self._late_message())
        return self._finish(pairs, results, groups)

    def close(self, timeout: float | None = None) -> None:
        """Finish queued work and stop the model thread."""
        self.batcher.close(timeout)

    def _late_message(self) -> str:
        return f"The request was not scored within {self.settings.request_timeout_s:g} s (RERANK_REQUEST_TIMEOUT_S)"

    def _expire(self, groups: list[_Group]) -> None:
        self.metrics.rejected.labels("timeout").inc()
        self._cancel(groups)

    @staticmethod
    def _cancel(groups: list[_Group]) -> None:
        for group in groups:
            if group.future is not None:
                group.future.cancel()

    def _start(self, pairs: Sequence[ScorePair]) -> tuple[list[PairScore | None], list[_Group]]:
        """Answer what the cache knows, load models, tokenize, and queue the rest (blocking: run on a thread)."""
        results: list[PairScore | None] = [None] * len(pairs)
        by_setting: dict[tuple[str, Truncation], _Group] = {}
        for position, pair in enumerate(pairs):
            truncation = pair.truncation()
            group = by_setting.setdefault((pair.model, truncation), _Group(pair.model, truncation))
            if self.cache is not None:
                key = cache_key(pair.model, truncation, pair.query, pair.document)
                cached = self.cache.get(key)
                if cached is not None:
                    logit, tokens = cached
                    results[position] = PairScore(score=_sigmoid(logit), logit=logit, tokens=tokens)
                    continue
                group.keys.append(key)
            group.positions.append(position)
        if self.cache is not None:
            hits = sum(result is not None for result in results)
            self.metrics.cache_hits.inc(hits)
            self.metrics.cache_misses.inc(len(pairs) - hits)
        groups = [group for group in by_setting.values() if group.positions]
        try:
            for group in groups:
                self._queue(group, pairs, results)
        except BaseException:
            self._cancel(groups)
            raise
        return results, groups

    def _queue(self, group: _Group, pairs: Sequence[ScorePair], results: list[PairScore | None]) -> None:
        try:
            scorer = self.registry.acquire(group.model_id)
        except (UnknownModelError, ModelLoadError) as exc:
            for position in group.positions:
                results[position] = PairScore(error=str(exc))
            group.positions = []
            return
        try:
            encoded = scorer.encode(
                [pairs[i].query for i in group.positions],
                [pairs[i].document for i in group.positions],
                group.truncation,
            )
            group.lengths = encoded.lengths
            group.future = self.batcher.submit(group.model_id, scorer, encoded)
        except BaseException:
            self.registry.release(group.model_id)
            raise
        # The model stays protected from unloading until its batch is done (or the queued job is cancelled).
        group.future.add_done_callback(lambda _, model_id=group.model_id: self.registry.release(model_id))

    def _finish(
        self, pairs: Sequence[ScorePair], results: list[PairScore | None], groups: list[_Group]
    ) -> list[PairScore]:
        for group in groups:
            if group.future is None:
                continue
            logits = group.future.result()
            scores = torch.sigmoid(logits).tolist()
            for j, (position, logit) in enumerate(zip(group.positions, logits.tolist(), strict=True)):
                results[position] = PairScore(score=scores[j], logit=logit, tokens=group.lengths[j])
                if self.cache is not None and math.isfinite(logit):
                    self.cache.put(group.keys[j], logit, group.lengths[j])
        assert all(result is not None for result in results)
        return [result for result in results if result is not None]
