"""Continuous batching: one model thread that, whenever the model is free, merges everything queued for it, and the
one batching policy of the server (what goes into a batch, and how a batch becomes forward passes).

Hand-written because this queue is the product's core and BentoML's dispatcher does not fit it as the only batcher
(measured in docs/benchmarks.md): its learned wait keeps a lone request waiting for partners after a burst, it reaches
the batcher from a mounted app only through an in-process HTTP round trip, and it has no queue bound, per-request
deadline or retry of a failed batch. BentoML's batchable API (`service.py`) feeds this queue too. Here, as in
text-embeddings-inference, a request never waits while the model is idle, the queue is bounded (refusals are
immediate), and a batch that fails is split so that only the failing request fails.

The policy, in one place:
- a request is queued in pieces of at most `max_batch_pairs` pairs (so that one giving up stops what it has not
  started, and a large request does not hold the model for all of its pairs); a listwise model's list is never cut;
- a batch is the oldest piece and the pieces queued after it for the same model, up to `max_batch_pairs` pairs;
- a batch runs as forward passes of pairs sorted by length, each within `token_budget` padded tokens (16,384 on CUDA,
  2,048 on a CPU unless RERANK_TOKEN_BUDGET says otherwise), launched one after another with a single copy back
  (`passes.py`).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from rerank_server.engine.passes import Forward, run_passes
from rerank_server.errors import BatcherClosedError, QueueFullError
from rerank_server.metrics import RerankMetrics
from rerank_server.recipes import EncodedPairs

logger = logging.getLogger("bentoml")

__all__ = ["BatcherClosedError", "ContinuousBatcher", "QueueFullError"]


@dataclass(eq=False)
class _Request:
    """One submitted request: its future, where its logits go, and what of it is still queued or running."""

    model_id: str
    model: Forward
    logits: torch.Tensor
    on_finished: Callable[[], None] | None
    future: Future[torch.Tensor] = field(default_factory=Future)
    queued: list[_Piece] = field(default_factory=list)
    running: int = 0
    scored: int = 0
    finished: bool = False


@dataclass(eq=False)
class _Piece:
    request: _Request
    start: int
    encoded: EncodedPairs
    enqueued_at: float = field(default_factory=time.monotonic)


class ContinuousBatcher:
    """Queues encoded pairs per request and runs them on their model, merged, on one thread."""

    def __init__(
        self,
        *,
        max_batch_pairs: int,
        max_queue_pairs: int,
        token_budget: int | None = None,
        metrics: RerankMetrics | None = None,
    ) -> None:
        self.max_batch_pairs = max_batch_pairs
        self.max_queue_pairs = max_queue_pairs
        self.token_budget = token_budget  # None: the device's default
        self._metrics = metrics
        # Pieces in queue order. A dict rather than a deque: a piece leaves from anywhere (a cancelled request, a
        # failed one) in O(1), so that thousands of one-pair requests never cost a quadratic number of removals.
        self._queue: dict[_Piece, None] = {}
        self._queued_pairs = 0
        # Pairs admitted ahead of their request (BentoML's batchable API admits a call before its dispatcher hands
        # the call's pairs over): they count against the queue bound until they are queued or let go.
        self._reserved_pairs = 0
        self._closed = False
        self._busy_since: float | None = None  # when the running forward pass started (None: idle)
        self._last_call_failed = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="rerank-batcher", daemon=True)
        self._thread.start()

    @property
    def queued_pairs(self) -> int:
        return self._queued_pairs

    def reserve(self, pairs: int) -> None:
        """Count `pairs` against the queue bound before they are submitted; QueueFullError when they would take the
        waiting pairs over it (taken when nothing waits, as `submit` takes a request)."""
        with self._ready:
            self._check_room(pairs)
            self._reserved_pairs += pairs

    def unreserve(self, pairs: int) -> None:
        """Let reserved pairs go (they are about to be submitted, or will never be)."""
        with self._ready:
            self._reserved_pairs = max(0, self._reserved_pairs - pairs)

    def _check_room(self, pairs: int) -> None:
        waiting = self._queued_pairs + self._reserved_pairs
        if waiting and waiting + pairs > self.max_queue_pairs:
            if self._metrics:
                self._metrics.rejected.labels("queue_full").inc()
            raise QueueFullError(
                f"{waiting} pairs are waiting and {pairs} more would exceed the limit of {self.max_queue_pairs} "
                "(RERANK_MAX_QUEUE_PAIRS)"
            )

    @property
    def thread_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def busy_for(self) -> float:
        """Seconds the running forward pass has taken so far (0 when the model is idle)."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def last_call_failed(self) -> bool:
        """Whether the model's most recent call raised (a bad request, or a device that fails every call)."""
        return self._last_call_failed

    def submit(
        self,
        model_id: str,
        model: Forward,
        encoded: EncodedPairs,
        on_finished: Callable[[], None] | None = None,
    ) -> Future[torch.Tensor]:
        """Queue the pairs; the future gets their logits. Raises QueueFullError at once when the queue is full.

        A request larger than the whole queue bound is still taken when nothing else waits, or it could never run.
        Cancelling the future takes its pieces that have not started out of the queue (and out of the count) at once.
        `on_finished` runs once the model thread is done with the request (scored, failed or cancelled): until then
        the model must stay loaded.
        """
        request = _Request(model_id, model, torch.empty(len(encoded)), on_finished)
        step = self.max_batch_pairs
        if encoded.lists is not None:  # a listwise list is never cut: its scores depend on all of it
            pieces = _whole_lists(encoded.list_bounds(), step)
        else:
            pieces = [(start, start + step) for start in range(0, len(encoded), step)]
        request.queued = [_Piece(request, start, encoded.slice(start, stop)) for start, stop in pieces]
        with self._ready:
            if self._closed:
                raise BatcherClosedError("The server is shutting down")
            self._check_room(len(encoded))
            self._queue.update(dict.fromkeys(request.queued))
            self._change_queued(len(encoded))
            self._ready.notify()
        request.future.add_done_callback(lambda _: self._forget(request))
        if not len(encoded):
            request.future.set_result(request.logits)
        return request.future

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

    def _forget(self, request: _Request) -> None:
        """Take a finished request's pieces that have not started out of the queue; finish it if none is running."""
        with self._ready:
            for piece in request.queued:
                del self._queue[piece]
                self._change_queued(-len(piece.encoded))
            request.queued.clear()
            finished = self._finishing(request)
        if finished:
            self._finish(request)

    @staticmethod
    def _finishing(request: _Request) -> bool:
        """Whether the model thread is done with `request` now, the first time it is (call holding the lock)."""
        if request.finished or request.queued or request.running or not request.future.done():
            return False
        request.finished = True
        return True

    @staticmethod
    def _finish(request: _Request) -> None:
        if request.on_finished is not None:
            request.on_finished()

    def _take(self) -> list[_Piece] | None:
        """The next batch: the oldest piece and the pieces queued after it for the same model, up to max_batch_pairs.

        Pieces of one model share one model object, which stays loaded while pieces for it are queued or running.
        """
        with self._ready:
            while not self._queue:
                if self._closed:
                    return None
                self._ready.wait()
            head = next(iter(self._queue)).request.model
            taken: list[_Piece] = []
            pairs = 0
            for piece in self._queue:
                if piece.request.model is not head:
                    continue
                if taken and pairs + len(piece.encoded) > self.max_batch_pairs:
                    break
                taken.append(piece)
                pairs += len(piece.encoded)
            for piece in taken:
                del self._queue[piece]
                piece.request.queued.remove(piece)
                piece.request.running += 1
                self._change_queued(-len(piece.encoded))
            return taken

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            self._busy_since = time.monotonic()
            try:
                self._score(batch)
            except Exception as exc:  # a dead model thread would hang every request after it: log, fail, go on
                logger.exception("The batcher failed outside a model call")
                for piece in batch:
                    self._done(piece, error=RuntimeError(f"internal batcher error: {exc!r}"))
            finally:
                self._busy_since = None

    def _score(self, pieces: list[_Piece]) -> None:
        if not pieces:
            return
        started = time.monotonic()
        merged = EncodedPairs.concat([piece.encoded for piece in pieces])
        failure: Exception | None = None
        try:
            logits = run_passes(pieces[0].request.model, merged, self.token_budget, on_pass=self._progressed)
        except Exception as exc:  # any failure: retry the halves so that only the failing request fails
            failure = exc
        self._last_call_failed = failure is not None
        if failure is not None:
            # Outside the except block, and with the failed pass's frames cleared: the traceback would otherwise keep
            # its activations (all of a GPU's memory after an out-of-memory error) alive through the retries, and the
            # exception handed to the caller would keep them after the request ended.
            self._recover(pieces, _without_frames(failure))
            return
        self._observe(pieces, merged, started)
        offset = 0
        for piece in pieces:
            self._done(piece, logits=logits[offset : offset + len(piece.encoded)])
            offset += len(piece.encoded)

    def _progressed(self) -> None:
        """A forward pass ended: the model thread moves (a long batch is many passes, each within the stall limit)."""
        self._busy_since = time.monotonic()

    def _recover(self, pieces: list[_Piece], exc: Exception) -> None:
        if isinstance(exc, torch.OutOfMemoryError):
            torch.cuda.empty_cache()
        requests = list(dict.fromkeys(piece.request for piece in pieces))
        if len(requests) == 1:
            logger.error(
                "Scoring %d pairs with %s failed: %r", sum(len(p.encoded) for p in pieces), requests[0].model_id, exc
            )
            for piece in pieces:
                self._done(piece, error=exc)
            return
        logger.warning("A batch of %d requests failed (%r); retrying them in halves", len(requests), exc)
        first = set(requests[: len(requests) // 2])
        self._score([piece for piece in pieces if piece.request in first])
        self._score([piece for piece in pieces if piece.request not in first])

    def _done(self, piece: _Piece, *, logits: torch.Tensor | None = None, error: Exception | None = None) -> None:
        """Record one piece's outcome; complete its request's future when it is the last piece or an error."""
        request = piece.request
        outcome: tuple[str, object] | None = None
        with self._ready:
            request.running -= 1
            if error is not None:
                for queued in request.queued:  # the rest of a failed request is not worth scoring
                    del self._queue[queued]
                    self._change_queued(-len(queued.encoded))
                request.queued.clear()
                outcome = ("error", error)
            elif logits is not None:
                request.logits[piece.start : piece.start + len(logits)] = logits
                request.scored += len(logits)
                if request.scored == len(request.logits):
                    outcome = ("result", request.logits)
        if outcome is not None and not request.future.done():
            try:
                if outcome[0] == "error":
                    request.future.set_exception(outcome[1])  # type: ignore[arg-type]
                else:
                    request.future.set_result(outcome[1])  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - cancelled by the caller at the same moment: nothing to deliver
                pass
        with self._ready:
            finished = self._finishing(request)
        if finished:
            self._finish(request)

    def _observe(self, pieces: list[_Piece], merged: EncodedPairs, started: float) -> None:
        if not self._metrics:
            return
        model = pieces[0].request.model_id
        self._metrics.batch_size.labels(model).observe(len(merged))
        self._metrics.batch_duration.labels(model).observe(time.monotonic() - started)
        self._metrics.pairs.labels(model).inc(len(merged))
        self._metrics.tokens.labels(model).inc(sum(merged.lengths))
        for piece in pieces:
            self._metrics.queue_wait.labels(model).observe(started - piece.enqueued_at)


def _whole_lists(bounds: list[tuple[int, int]], step: int) -> list[tuple[int, int]]:
    """Rows of consecutive whole lists, up to `step` rows a piece (a longer list is a piece of its own)."""
    pieces: list[tuple[int, int]] = []
    for start, stop in bounds:
        if pieces and stop - pieces[-1][0] <= step:
            pieces[-1] = (pieces[-1][0], stop)
        else:
            pieces.append((start, stop))
    return pieces


def _without_frames(exc: Exception) -> Exception:
    """`exc` with the local variables of every frame it passed through released, and no traceback."""
    traceback.clear_frames(exc.__traceback__)
    exc.__context__ = exc.__cause__ = None
    return exc.with_traceback(None)
