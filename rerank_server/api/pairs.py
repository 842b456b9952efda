"""BentoML's batchable `/score_pairs`: pairs that each name their model and options, grouped so that each group is
one engine request, answered in the order they came.

BentoML's dispatcher merges the pairs of concurrent calls into one list before `score_pairs` sees it, in a task of
its own, and holds calls in a queue without a bound while a merged batch is being scored. So each call is admitted
here while BentoML validates its body (in the call's own task): refused with 429 when the pairs it would add to those
already waiting exceed RERANK_MAX_QUEUE_PAIRS, as the routes are, and counted as waiting (a reservation in the
batcher's bound, which the routes see too) until the dispatcher hands it over. Each pair remembers its call
(`CallerPair`), so that each call's access log line and metrics count its own pairs and models.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from http import HTTPStatus

import torch
from bentoml.exceptions import BentoMLException
from pydantic import PrivateAttr, model_validator

from rerank_server.api.dependencies import current_engine
from rerank_server.api.errors import from_failure
from rerank_server.api.tracking import RequestContext, current_request
from rerank_server.api.wire import PairResult, PairToScore
from rerank_server.engine.batcher import ContinuousBatcher
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

logger = logging.getLogger("bentoml")
# What fails a whole call rather than its pairs: the routes answer them 429, 504 and 503.
REFUSALS = (QueueFullError, DeadlineExceededError, BatcherClosedError, torch.OutOfMemoryError)

# The `model` label of a call whose pairs named no model that could be used, and of one that used several: metric
# labels take resolved model ids only, so that callers cannot make new series.
UNKNOWN_MODEL = "unknown"
SEVERAL_MODELS = "several"


class Held:
    """A call's pairs that count against the queue bound from its admission until BentoML's dispatcher hands them over
    (or the call ends): a call waiting in the dispatcher is waiting as surely as one in the batcher's queue."""

    def __init__(self, batcher: ContinuousBatcher, pairs: int) -> None:
        self.batcher = batcher
        self.pairs = pairs

    def hand_over(self, pairs: int) -> None:
        """`pairs` of the call reached the engine (or never will): they stop counting here."""
        let_go = min(pairs, self.pairs)
        self.pairs -= let_go
        self.batcher.unreserve(let_go)

    def release(self) -> None:
        """The call has ended: whatever the dispatcher never handed over stops counting."""
        self.hand_over(self.pairs)


class CallerPair(PairToScore):
    """A pair that remembers the call it came in: BentoML validates a call's body in that call's task, and runs the
    merged batch in its dispatcher's, where the call's own request context is out of reach."""

    _request: RequestContext | None = PrivateAttr(default=None)
    _held: Held | None = PrivateAttr(default=None)
    # When the call came (time.monotonic()): its time in BentoML's dispatcher counts against its deadline.
    _arrived: float | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _remember_request(self) -> CallerPair:
        self._request = current_request()
        self._arrived = time.monotonic()
        return self


def refusal(exc: Exception) -> BentoMLException | None:
    """A refusal that fails a whole dispatch, as BentoML answers it: the status and message of the routes' answer to
    the same failure (api/errors.py); the guard adds Retry-After."""
    if not isinstance(exc, REFUSALS):
        return None
    error = from_failure(exc, "vllm")
    assert error is not None
    return BentoMLException(error.message, error_code=HTTPStatus(error.status))


def admit(pairs: list[CallerPair]) -> list[CallerPair]:
    """Validation of a call's `pairs`, in the call's task, before BentoML's dispatcher holds them: a call that would
    overfill the queue is refused at once (429); an admitted call's pairs count as waiting until they are handed over
    for scoring."""
    try:
        engine = current_engine()
    except Exception:  # noqa: BLE001 - no running service (a unit test, a tool): nothing to admit into
        return pairs
    context = current_request()
    context.pairs = len(pairs)  # a refused call is logged with its pairs too
    try:
        engine.batcher.reserve(len(pairs))
    except QueueFullError as exc:
        raise refusal(exc) from exc  # not a ValueError: pydantic lets it through, BentoML answers its status
    held = Held(engine.batcher, len(pairs))
    context.cleanups.append(held.release)
    for pair in pairs:
        pair._held = held
    return pairs


def hand_over(pairs: Sequence[PairToScore]) -> None:
    """The dispatcher handed these pairs to the API: they no longer count as held for their calls."""
    counts: dict[int, tuple[Held, int]] = {}
    for pair in pairs:
        if isinstance(pair, CallerPair) and pair._held is not None:
            held, count = counts.get(id(pair._held), (pair._held, 0))
            counts[id(held)] = (held, count + 1)
    for held, count in counts.values():
        held.hand_over(count)


def pair_options(pair: PairToScore) -> TextOptions:
    """How a pair wants to be tokenized, in the recipes' terms."""
    # A listwise model scores each pair as a list of its own: BentoML merges concurrent calls' pairs into one batch.
    return TextOptions(
        pair.max_length, pair.truncation_side, pair.max_document_tokens, pair.instruction, one_list=False
    )


async def score_pairs(
    engine: RerankEngine,
    pairs: Sequence[PairToScore],
    while_loading: Callable[[], AbstractAsyncContextManager[object]] | None = None,
) -> list[PairResult]:
    """Scores in the order of `pairs`, which may name different models and options; a group's wait for its model to
    load runs inside `while_loading()` (the service lets BentoML's dispatcher go on meanwhile).

    A pair whose model cannot be used, whose options do not fit its model, or whose model failed on it gets an
    `error` instead of a score, and its neighbours are scored. The queue's and the deadline's refusals, shutting down
    and running out of memory fail the whole call (BentoML answers one status for every call merged into it) and
    cancel the call's other groups.
    """
    groups: dict[tuple[str, TextOptions], list[int]] = {}
    for position, pair in enumerate(pairs):
        groups.setdefault((pair.model, pair_options(pair)), []).append(position)
    results: list[PairResult | None] = [None] * len(pairs)

    async def one_group(model: str, options: TextOptions, positions: list[int]) -> None:
        arrivals = [arrived for i in positions if (arrived := getattr(pairs[i], "_arrived", None)) is not None]
        try:
            scored = await engine.score(
                model, [pairs[i].query for i in positions], [pairs[i].document for i in positions], options,
                arrived=min(arrivals, default=None), while_loading=while_loading,
            )  # fmt: skip
        except REFUSALS:
            raise
        except Exception as exc:  # this group's own failure: its pairs say so, the other groups go on
            if not isinstance(exc, UnknownModelError | ModelLoadError | InvalidInputError):
                logger.exception("Scoring %d pairs with %s failed", len(positions), model)
            for i in positions:
                results[i] = PairResult(error=str(exc) or type(exc).__name__)
            return
        parts = zip(positions, scored.scores, scored.logits, scored.document_tokens, strict=True)
        for i, score, logit, tokens in parts:
            results[i] = PairResult(score=score, logit=logit, tokens=tokens, model=scored.model_id)

    try:
        async with asyncio.TaskGroup() as group:
            for (model, options), positions in groups.items():
                group.create_task(one_group(model, options, positions))
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None  # the first refusal; the other groups were cancelled with it
    assert all(result is not None for result in results), "every pair has a result, in its place"
    return results  # type: ignore[return-value]


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
