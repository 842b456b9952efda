"""Continuous batching: one model thread that, whenever the model is free, merges everything queued for it.

Hand-written because this queue is the product's core and BentoML's dispatcher does not fit it (measured in
docs/benchmarks.md): its learned wait keeps a lone request waiting for partners after a burst, it reaches the batcher
from a mounted app only through an in-process HTTP round trip, and it has no queue bound, per-request deadline or
retry of a failed batch. Here, as in text-embeddings-inference, a request never waits while the model is idle, the
queue is bounded (refusals are immediate), and a batch that fails is split so that only the failing request fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from rerank_server.metrics import RerankMetrics
from rerank_server.scorer import CrossEncoderScorer, EncodedPairs

logger = logging.getLogger("bentoml")


class QueueFullError(RuntimeError):
    """The queue holds as many pairs as it may; the caller should retry shortly (429)."""


class BatcherClosedError(RuntimeError):
    """The server is shutting down and takes no new work (503)."""


@dataclass
class _Job:
    model_id: str
    scorer: CrossEncoderScorer
    encoded: EncodedPairs
    future: Future[torch.Tensor] = field(default_factory=Future)
    enqueued_at: float = field(default_factory=time.monotonic)


class ContinuousBatcher:
    """Queues encoded pairs per request and runs them on their model, merged, on one thread."""

    def __init__(self, *, max_batch_pairs: int, max_queue_pairs: int, metrics: RerankMetrics | None = None) -> None:
        self.max_batch_pairs = max_batch_pairs
        self.max_queue_pairs = max_queue_pairs
        self._metrics = metrics
        self._queue: deque[_Job] = deque()
        self._queued_pairs = 0
        self._closed = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="rerank-batcher", daemon=True)
        self._thread.start()

    @property
    def queued_pairs(self) -> int:
        return self._queued_pairs

    def submit(self, model_id: str, scorer: CrossEncoderScorer, encoded: EncodedPairs) -> Future[torch.Tensor]:
        """Queue the pairs; the future gets their logits. Raises QueueFullError at once when the queue is full.

        A request larger than the whole queue bound is still taken when nothing else waits, or it could never run.
        Cancelling the future before its batch starts takes the pairs out of the queue.
        """
        job = _Job(model_id, scorer, encoded)
        with self._ready:
            if self._closed:
                raise BatcherClosedError("The server is shutting down")
            if self._queue and self._queued_pairs + len(encoded) > self.max_queue_pairs:
                if self._metrics:
                    self._metrics.rejected.labels("queue_full").inc()
                raise QueueFullError(
                    f"{self._queued_pairs} pairs are queued and {len(encoded)} more would exceed the limit of "
                    f"{self.max_queue_pairs} (RERANK_MAX_QUEUE_PAIRS)"
                )
            self._queue.append(job)
            self._change_queued(len(encoded))
            self._ready.notify()
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work, finish what is queued, and stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout)

    def _change_queued(self, pairs: int) -> None:
        self._queued_pairs += pairs
        if self._metrics:
            self._metrics.queued_pairs.inc(pairs)

    def _take(self) -> list[_Job] | None:
        """The next batch: the oldest job and the jobs queued after it for the same model, up to max_batch_pairs.

        Jobs of one model share one scorer object: a model is never unloaded while jobs for it are queued.
        """
        with self._ready:
            while not self._queue:
                if self._closed:
                    return None
                self._ready.wait()
            head = self._queue[0]
            taken: list[_Job] = []
            pairs = 0
            for job in list(self._queue):
                if job.scorer is not head.scorer:
                    continue
                if taken and pairs + len(job.encoded) > self.max_batch_pairs:
                    break
                self._queue.remove(job)
                self._change_queued(-len(job.encoded))
                # False when the caller gave up (deadline, disconnect) before the batch started: skip its pairs.
                if job.future.set_running_or_notify_cancel():
                    taken.append(job)
                    pairs += len(job.encoded)
            return taken

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._score(batch)
            except Exception:  # a dead model thread would hang every request after it: log, fail the batch, go on
                logger.exception("The batcher failed outside a model call")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError("internal batcher error"))

    def _score(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        started = time.monotonic()
        merged = EncodedPairs.concat([job.encoded for job in jobs])
        try:
            logits = jobs[0].scorer.logits(merged)
        except Exception as exc:  # any failure: retry the halves so that only the failing request fails
            self._recover(jobs, exc)
            return
        self._observe(jobs, merged, started)
        offset = 0
        for job in jobs:
            job.future.set_result(logits[offset : offset + len(job.encoded)])
            offset += len(job.encoded)

    def _recover(self, jobs: list[_Job], exc: Exception) -> None:
        if isinstance(exc, torch.OutOfMemoryError):
            torch.cuda.empty_cache()
        if len(jobs) == 1:
            logger.error("Scoring %d pairs with %s failed: %r", len(jobs[0].encoded), jobs[0].model_id, exc)
            jobs[0].future.set_exception(exc)
            return
        logger.warning("A batch of %d requests failed (%r); retrying them in halves", len(jobs), exc)
        middle = len(jobs) // 2
        self._score(jobs[:middle])
        self._score(jobs[middle:])

    def _observe(self, jobs: list[_Job], merged: EncodedPairs, started: float) -> None:
        if not self._metrics:
            return
        model = jobs[0].model_id
        self._metrics.batch_size.labels(model).observe(len(merged))
        self._metrics.batch_duration.labels(model).observe(time.monotonic() - started)
        self._metrics.pairs.labels(model).inc(len(merged))
        self._metrics.tokens.labels(model).inc(sum(merged.lengths))
        for job in jobs:
            self._metrics.queue_wait.labels(model).observe(started - job.enqueued_at)
