"""BentoML's batchable `/score_pairs`: pairs that each name their model and options, grouped so that each group is
one engine request, answered in the order they came.

BentoML's dispatcher merges the pairs of concurrent calls into one list before `score_pairs` sees it, in a task of
its own, and holds calls in a queue without a bound while a merged batch is being scored. So each call is admitted
here while BentoML validates its body (in the call's own task): refused with 429 when the pairs it would add to those
already waiting exceed RERANK_MAX_QUEUE_PAIRS, as the routes are. Each pair remembers its call (`CallerPair`), so that
each call's access log line and metrics count its own pairs and models.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from http import HTTPStatus

from bentoml.exceptions import BentoMLException
from pydantic import PrivateAttr, model_validator

from rerank_server.api.dependencies import current_engine
from rerank_server.api.tracking import RequestContext, current_request
from rerank_server.api.wire import PairResult, PairToScore
from rerank_server.engine.engine import RerankEngine
from rerank_server.errors import (
    BatcherClosedError,
    DeadlineExceededError,
    InvalidInputError,
    ModelLoadError,
    QueueFullError,
    UnknownModelError,
)
from rerank_server.recipes import TextOptions

# The `model` label of a call whose pairs named no model that could be used, and of one that used several: metric
# labels take resolved model ids only, so that callers cannot make new series.
UNKNOWN_MODEL = "unknown"
SEVERAL_MODELS = "several"


class CallerPair(PairToScore):
    """A pair that remembers the call it came in: BentoML validates a call's body in that call's task, and runs the
    merged batch in its dispatcher's, where the call's own request context is out of reach."""

    _request: RequestContext | None = PrivateAttr(default=None)
    _held: list[int] | None = PrivateAttr(default=None)  # its call's pairs still held by the dispatcher

    @model_validator(mode="after")
    def _remember_request(self) -> CallerPair:
        self._request = current_request()
        return self


class DispatcherHold:
    """Pairs admitted to the API that BentoML's dispatcher still holds, not yet in the batcher's queue."""

    def __init__(self) -> None:
        self.pairs = 0
        self._lock = threading.Lock()

    def admit(self, count: int, queued: int, limit: int) -> None:
        """Hold `count` more pairs, or QueueFullError when they would take the waiting pairs over `limit` (a call is
        still taken when nothing waits, or it could never run)."""
        with self._lock:
            waiting = self.pairs + queued
            if waiting and waiting + count > limit:
                raise QueueFullError(
                    f"{waiting} pairs are queued and {count} more would exceed the limit of {limit} "
                    "(RERANK_MAX_QUEUE_PAIRS)"
                )
            self.pairs += count

    def release(self, count: int) -> None:
        with self._lock:
            self.pairs -= count


HOLD = DispatcherHold()


def refusal(exc: Exception) -> BentoMLException | None:
    """The API's answer to a refusal that fails a whole call (BentoML writes the status; the guard adds Retry-After).

    Out of memory is a 503, as on the routes: the request may be retried, smaller."""
    import torch

    if isinstance(exc, QueueFullError):
        return BentoMLException(f"Too many pairs are waiting, retry shortly: {exc}", error_code=HTTPStatus(429))
    if isinstance(exc, DeadlineExceededError):
        return BentoMLException(str(exc), error_code=HTTPStatus.GATEWAY_TIMEOUT)
    if isinstance(exc, BatcherClosedError | torch.OutOfMemoryError):
        return BentoMLException(str(exc), error_code=HTTPStatus.SERVICE_UNAVAILABLE)
    return None


def admit(pairs: list[CallerPair]) -> list[CallerPair]:
    """Validation of a call's `pairs`, in the call's task, before BentoML's dispatcher holds them: a call that would
    overfill the queue is refused at once (429); an admitted call's pairs count as waiting until they are scored."""
    try:
        engine = current_engine()
    except Exception:  # noqa: BLE001 - no running service (a unit test, a tool): nothing to admit into
        return pairs
    try:
        HOLD.admit(len(pairs), engine.batcher.queued_pairs, engine.settings.max_queue_pairs)
    except QueueFullError as exc:
        engine.metrics.rejected.labels("queue_full").inc()
        raise refusal(exc) from exc  # not a ValueError: pydantic lets it through, BentoML answers its status
    context = current_request()
    held = [len(pairs)]
    context.on_finish.append(lambda: HOLD.release(held[0]))  # whatever the dispatcher never handed over
    for pair in pairs:
        pair._held = held
    return pairs


def hand_over(pairs: Sequence[PairToScore]) -> None:
    """The dispatcher handed these pairs to the API: they no longer wait in it."""
    for pair in pairs:
        held = pair._held if isinstance(pair, CallerPair) else None
        if held is not None and held[0] > 0:
            held[0] -= 1
            HOLD.release(1)


def pair_options(pair: PairToScore) -> TextOptions:
    """How a pair wants to be tokenized, in the recipes' terms."""
    return TextOptions(pair.max_length, pair.truncation_side, pair.max_document_tokens, pair.instruction)


def _sigmoid(logit: float) -> float:
    # Same value as torch.sigmoid on the float32 logit, without a tensor for one number.
    import torch

    return float(torch.sigmoid(torch.tensor(logit, dtype=torch.float32)))


async def score_pairs(engine: RerankEngine, pairs: Sequence[PairToScore]) -> list[PairResult]:
    """Scores in the order of `pairs`, which may name different models and options.

    A pair whose model cannot be used, or whose options do not fit its model, gets an `error` instead of a score;
    the queue's and the deadline's refusals fail the whole call, and cancel the call's other groups.
    """
    groups: dict[tuple[str, TextOptions], list[int]] = {}
    for position, pair in enumerate(pairs):
        groups.setdefault((pair.model, pair_options(pair)), []).append(position)
    results: list[PairResult | None] = [None] * len(pairs)

    async def one_group(model: str, options: TextOptions, positions: list[int]) -> None:
        try:
            scored = await engine.score(
                model, [pairs[i].query for i in positions], [pairs[i].document for i in positions], options
            )
        except (UnknownModelError, ModelLoadError, InvalidInputError) as exc:
            for i in positions:
                results[i] = PairResult(error=str(exc))
            return
        for i, logit, tokens in zip(positions, scored.logits, scored.document_tokens, strict=True):
            results[i] = PairResult(score=_sigmoid(logit), logit=logit, tokens=tokens, model=scored.model_id)

    try:
        async with asyncio.TaskGroup() as group:
            for (model, options), positions in groups.items():
                group.create_task(one_group(model, options, positions))
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None  # the first refusal; the other groups were cancelled with it
    return [result for result in results if result is not None]


def record_calls(pairs: Sequence[PairToScore], results: Sequence[PairResult]) -> None:
    """Tell each call's request context how many pairs it brought and which model scored them (resolved ids only)."""
    calls: dict[int, tuple[RequestContext, set[str]]] = {}
    for pair, result in zip(pairs, results, strict=True):
        context = pair._request if isinstance(pair, CallerPair) else None
        if context is not None:
            calls.setdefault(id(context), (context, set()))[1].add(result.model or UNKNOWN_MODEL)
    for context, models in calls.values():
        known = models - {UNKNOWN_MODEL}
        context.model = known.pop() if len(known) == 1 else SEVERAL_MODELS if known else UNKNOWN_MODEL


def count_calls(pairs: Sequence[PairToScore]) -> None:
    """Each call's pair count, known before scoring (a refused call is logged with its pairs too)."""
    for pair in pairs:
        context = pair._request if isinstance(pair, CallerPair) else None
        if context is not None:
            context.pairs += 1
