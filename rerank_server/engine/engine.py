"""Scoring a request end to end: model name → stored model (once) → windows of long documents → result cache →
tokens → the continuous batcher → deadline or cancellation → each document's best window.

Every route and BentoML's API come here, so one model thread serves every caller of a worker process. The blocking
part runs on threads: resolving and tokenizing on one pool, waiting for a model to load on another (so that a slow
load never holds up requests for loaded models); the event loop only waits, within the request's deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from rerank_server.engine.batcher import ContinuousBatcher
from rerank_server.engine.cache import ScoreCache, look_up
from rerank_server.engine.image_memory import ImageMemory, distinct_images
from rerank_server.engine.liveness import CHECK_DOCUMENT, CHECK_QUERY, Liveness
from rerank_server.engine.scores import DocumentScores, ServedModel
from rerank_server.errors import (
    BatcherClosedError,
    DeadlineExceededError,
    InputTooLongError,
    InvalidInputError,
    ModelLoadError,
)
from rerank_server.metrics import RerankMetrics, get_metrics
from rerank_server.models.calibration import Calibration
from rerank_server.models.loaded import LoadedReranker
from rerank_server.models.registry import ModelRegistry
from rerank_server.models.store import StoredReranker
from rerank_server.recipes import DEFAULT_OPTIONS, RECIPES, Content, Item, Recipe, TextOptions
from rerank_server.settings import Settings

T = TypeVar("T")


@dataclass
class _Work:
    """One request's pairs while they are scored: what the cache knew, and what the batcher computes."""

    stored: StoredReranker
    owners: list[int]  # the document each pair (window) belongs to
    logits: list[float | None]
    tokens: list[int]
    relevance: Callable[[list[float]], list[float]]  # the recipe's own map from raw scores
    keys: list[bytes] = field(default_factory=list)
    computed: list[int] = field(default_factory=list)  # pairs sent to the model, in the order of `future`'s logits
    future: concurrent.futures.Future[torch.Tensor] | None = None
    calibration: Calibration | None = None
    passes: int | None = None  # a listwise list's passes (cached under `passes_key`, since a hit must say it too)
    passes_key: bytes | None = None

    def cancel(self) -> None:
        if self.future is not None:
            self.future.cancel()


class RerankEngine:
    """The registry of models, the batcher that feeds them, and the result cache of one worker process."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry | None = None,
        metrics: RerankMetrics | None = None,
        device: str | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or get_metrics()
        self.registry = registry or ModelRegistry(settings, metrics=self.metrics, device=device)
        self.batcher = ContinuousBatcher(
            max_batch_pairs=settings.max_batch_pairs, max_queue_pairs=settings.max_queue_pairs,
            token_budget=settings.token_budget, metrics=self.metrics,
        )  # fmt: skip
        self.cache = ScoreCache(settings.cache_size) if settings.cache_size else None
        self.image_memory = ImageMemory(settings.max_image_memory_mb * 2**20, self.metrics)
        # Resolving and tokenizing block: they get threads of their own, so they never take the event loop's default
        # pool from other work. Waiting for a model to load (or for room to load it) gets a pool of its own, so that
        # requests waiting on a slow load never hold up requests for loaded models.
        self._preparing = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="rerank-prepare")
        self._waiting_for_load = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="rerank-load")
        self.liveness = Liveness(
            thread_alive=lambda: self.batcher.thread_alive, busy_for=lambda: self.batcher.busy_for,
            last_call_failed=lambda: self.batcher.last_call_failed, run_check=self._check_model,
            stall_timeout_s=settings.stall_timeout_s,
        )  # fmt: skip

    @property
    def max_documents(self) -> int:
        """Most documents (or pairs) one request may bring (RERANK_MAX_DOCUMENTS)."""
        return self.settings.max_documents

    def served_models(self) -> list[ServedModel]:
        """Every stored reranker, read from the store now (blocking), with whether it is loaded and the default."""
        loaded = set(self.registry.loaded_ids())
        default = self.registry.default_model_id
        return [
            ServedModel(s, s.model_id in loaded, s.model_id == default, self.registry.failure(s))
            for s in self.registry.refresh()
        ]

    def served_model(self, name: str | None) -> ServedModel:
        """The stored reranker `name` means (the default when None), as `served_models` shows it. Blocking: may
        rescan the store; raises UnknownModelError."""
        stored = self.registry.resolve(name)
        default = stored.model_id == self.registry.default_model_id
        loaded = stored.model_id in self.registry.loaded_ids()
        return ServedModel(stored, loaded, default, self.registry.failure(stored))

    def check_takes_images(self, model: str | None, field: str) -> None:
        """Refuse images for `model` before any is fetched or decoded: UnknownModelError when it is not stored,
        InvalidInputError (naming `field`) when it ranks text only. Blocking: may rescan the store."""
        stored = self.registry.resolve(model)
        if not getattr(RECIPES.get(stored.recipe), "takes_images", False):
            raise InvalidInputError(_text_only(stored, field), field)

    def loaded_ids(self) -> list[str]:
        return self.registry.loaded_ids()

    @property
    def default_model_id(self) -> str:
        return self.registry.default_model_id

    async def score(
        self,
        model: str | None,
        queries: Sequence[Item],
        documents: Sequence[Item],
        options: TextOptions = DEFAULT_OPTIONS,
        *,
        max_chunks: int | None = None,
        arrived: float | None = None,
        while_loading: Callable[[], AbstractAsyncContextManager[object]] | None = None,
        images_held: int = 0,
        documents_field: str = "documents",
    ) -> DocumentScores:
        """Score each (queries[i], documents[i]) pair with `model` (the default model when None). A query or document
        is a text, or a `Content` with images for a multimodal model (a text-only model refuses it, naming itself).

        With `max_chunks` > 1 a text document too long for the model is split into up to that many windows and keeps
        its best window's logit. Raises the errors of `rerank_server.errors` (and torch.OutOfMemoryError);
        cancelling the call (a client that went away) takes its pairs that have not started out of the queue.
        `arrived` (time.monotonic()) is when the request came, if it waited before this call (in BentoML's
        dispatcher): the deadline counts from then. A wait for the model to load runs inside `while_loading()`.
        `images_held`: bytes of `image_memory` the request holds already (its image files). `documents_field` names
        the documents in a refusal (a listwise model's list over RERANK_MAX_LIST_DOCUMENTS).
        """
        deadline = (time.monotonic() if arrived is None else arrived) + self.settings.request_timeout_s
        arguments = (model, queries, documents, options, max_chunks, deadline, images_held, documents_field)
        # Preparing counts against the deadline too: a first load, or a wait for room, is part of the request's time.
        work = await self._within(deadline, self._submit(self._preparing, *arguments, False))
        if work is None:  # the model must be loaded first (or room made for it)
            async with while_loading() if while_loading else contextlib.nullcontext():
                work = await self._within(deadline, self._submit(self._waiting_for_load, *arguments, True))
        if work.future is not None:
            await self._within(deadline, work.future)  # cancelling this wait cancels the batcher's future too
        return self._finish(work, len(documents))

    def _submit(self, pool: concurrent.futures.ThreadPoolExecutor, *arguments: object) -> concurrent.futures.Future:
        try:
            return pool.submit(self._start, *arguments)
        except RuntimeError as exc:  # the pool was shut down: the worker is draining
            raise BatcherClosedError("The server is shutting down") from exc

    async def _within(self, deadline: float, pending: concurrent.futures.Future[T]) -> T:
        """`pending`'s result, or DeadlineExceededError once `deadline` passes; on either that or the caller's
        cancellation, work it prepares is cancelled as soon as it exists (its queued pairs leave the queue)."""
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                return await asyncio.wrap_future(pending)
        except (TimeoutError, asyncio.CancelledError) as exc:
            pending.add_done_callback(_cancel_prepared_work)
            if not isinstance(exc, TimeoutError):
                raise
        self.metrics.rejected.labels("timeout").inc()
        limit = self.settings.request_timeout_s
        raise DeadlineExceededError(f"The request was not scored within {limit:g} s (RERANK_REQUEST_TIMEOUT_S)")

    def _check_model(self) -> concurrent.futures.Future:
        """Score one pair with the default model through the queue, for `Liveness`: a future of its logit."""
        outcome: concurrent.futures.Future = concurrent.futures.Future()

        def prepare() -> None:
            stored = self.registry.resolve(None)
            model = self.registry.acquire(stored, timeout=self.settings.request_timeout_s)
            try:
                encoded = model.encode([CHECK_QUERY], [CHECK_DOCUMENT])
                scored = self.batcher.submit(
                    stored.model_id, model, encoded, on_finished=lambda: self.registry.release(model)
                )
            except BaseException:
                self.registry.release(model)
                raise
            scored.add_done_callback(lambda done: _copy_outcome(done, outcome))

        try:
            preparing = self._preparing.submit(prepare)
        except RuntimeError as exc:  # draining: no verdict on the device
            raise BatcherClosedError("The server is shutting down") from exc
        preparing.add_done_callback(lambda done: done.exception() is not None and _copy_outcome(done, outcome))
        return outcome

    def close(self, timeout: float | None = None) -> None:
        """Finish queued work and stop the model thread."""
        self.batcher.close(timeout)
        self._preparing.shutdown(wait=False)
        self._waiting_for_load.shutdown(wait=False)

    def _start(
        self,
        model: str | None,
        queries: Sequence[Item],
        documents: Sequence[Item],
        options: TextOptions,
        max_chunks: int | None,
        deadline: float,
        images_held: int,
        documents_field: str,
        wait_for_load: bool,
    ) -> _Work | None:
        """Resolve and pin the model, cut windows, answer what the cache knows, tokenize and queue the rest.

        None when the model is not loaded and `wait_for_load` is false: the caller waits for it on the load pool.
        """
        stored = self.registry.resolve(model)
        if stored.calibration_problem:  # scores that would silently mean something else are not served
            raise ModelLoadError(
                f"The model `{stored.model_id}` is not served: {self.registry.failure(stored)}; attach a valid one "
                "(import_models.py NAME --calibration FILE) or none (--no-calibration)"
            )
        if wait_for_load:
            loaded = self.registry.acquire(stored, timeout=max(deadline - time.monotonic(), 0.0))
        elif (loaded := self.registry.try_acquire(stored)) is None:
            return None
        queued = False
        release_images = None
        try:
            loaded.limit(options)  # a bad truncate_prompt_tokens is refused before any work
            queries, documents = _for_model(stored, loaded, queries, documents)
            chunks = max_chunks if max_chunks is not None else self.settings.max_chunks_per_doc
            if loaded.recipe.listwise:  # windows would add documents to the list, which reads each one whole
                chunks = self._check_list(len(documents), options, max_chunks, documents_field)
            if chunks > 1:
                pieces = [
                    loaded.windows(q, d, chunks, options) if isinstance(q, str) and isinstance(d, str) else [d]
                    for q, d in zip(queries, documents, strict=True)
                ]
            else:
                pieces = [[d] for d in documents]
            owners = [i for i, windows in enumerate(pieces) for _ in windows]
            pair_queries = [queries[i] for i in owners]
            pair_documents = [window for windows in pieces for window in windows]
            source = self.registry.loaded_from(loaded)
            # The calibration of the weights that score: the store's newest record when the copy is that version, else
            # the one it was loaded with (a newer import still loading, or refused, leaves the older copy serving).
            calibration = stored.calibration if source.tag == stored.tag else source.calibration
            work = _Work(
                stored, owners, [None] * len(owners), [0] * len(owners), relevance=loaded.recipe.relevance,
                calibration=calibration,
            )  # fmt: skip
            listed = loaded.recipe.listwise and options.one_list
            self._look_up(work, source.tag, loaded.recipe, options, pair_queries, pair_documents)
            if work.computed:
                computed = [(pair_queries[i], pair_documents[i]) for i in work.computed]
                # What the images will take is reserved before any is decoded (429 when the bound is reached).
                images = loaded.image_bytes(distinct_images(computed), self.settings.max_image_pixels)
                release_images = self.image_memory.reserve(images, own=images_held)
                encoded = loaded.encode([q for q, _ in computed], [d for _, d in computed], options)
                for position, length in zip(work.computed, encoded.lengths, strict=True):
                    work.tokens[position] = length
                longest = max(encoded.lengths)
                if listed and encoded.lists:
                    work.passes = len(encoded.lists[0].passes)
                if not options.truncate and longest > loaded.recipe.max_length and not loaded.recipe.listwise:
                    raise InputTooLongError(
                        f"`inputs` must have less than {loaded.recipe.max_length} tokens. Given: {longest}", "texts"
                    )
                work.future = self.batcher.submit(
                    stored.model_id, loaded, encoded, on_finished=lambda: self.registry.release(loaded)
                )
                queued = True
                work.future.add_done_callback(lambda _: release_images())
            return work
        finally:
            if not queued:
                self.registry.release(loaded)
                if release_images is not None:
                    release_images()

    def _check_list(self, documents: int, options: TextOptions, max_chunks: int | None, field: str) -> int:
        """Refuse what a listwise model cannot read: windows (max_chunks_per_doc over 1), a list over
        RERANK_MAX_LIST_DOCUMENTS. The windows per document it reads: 0, none (each document is cut at its cap)."""
        if max_chunks is not None and max_chunks > 1:
            raise InvalidInputError(
                "max_chunks_per_doc does not apply to a listwise model: each document is one passage of the list, "
                "cut at the model's own cap", "max_chunks_per_doc",
            )  # fmt: skip
        limit = self.settings.max_list_documents
        if options.one_list and documents > limit:
            raise InvalidInputError(
                f"`{field}` has {documents} items, over the limit of {limit} per request for a listwise model "
                "(RERANK_MAX_LIST_DOCUMENTS)", field,
            )  # fmt: skip
        return 0

    def _look_up(
        self,
        work: _Work,
        version: str,
        recipe: Recipe,
        options: TextOptions,
        queries: list[Item],
        documents: list[Item],
    ) -> None:
        """What the cache knows of the pairs; a listwise list is keyed by the whole list and each position in it,
        and is scored again whole unless every document and its pass count are found."""
        if self.cache is None:
            work.computed = list(range(len(queries)))
            return
        # The loaded version's tag: a re-import (other weights, another backend) never meets the old scores.
        variant = f"{version}|{options.max_length}|{options.side}|{options.max_document_tokens}|{options.truncate}"
        if recipe.uses_instruction:
            variant += f"|{options.instruction!r}"
        found = look_up(self.cache, variant, queries, documents, recipe.listwise and options.one_list)
        work.computed, work.keys, work.passes, work.passes_key = found.computed, found.keys, found.passes, found.key
        for position, (logit, tokens) in found.hits.items():
            work.logits[position], work.tokens[position] = logit, tokens
        self.metrics.cache_hits.inc(len(found.hits))
        self.metrics.cache_misses.inc(len(work.computed))

    def _finish(self, work: _Work, documents: int) -> DocumentScores:
        if work.future is not None:
            computed = work.future.result().tolist()
            for j, (position, logit) in enumerate(zip(work.computed, computed, strict=True)):
                work.logits[position] = logit
                if self.cache is not None and math.isfinite(logit):
                    self.cache.put(work.keys[j], logit, work.tokens[position])
            if self.cache is not None and work.passes_key is not None and work.passes is not None:
                self.cache.put(work.passes_key, float(work.passes), 0)
        best: list[float] = [-math.inf] * documents
        tokens = [0] * documents
        for owner, logit, count in zip(work.owners, work.logits, work.tokens, strict=True):
            assert logit is not None
            best[owner] = max(best[owner], logit)
            tokens[owner] += count
        return DocumentScores(work.stored.model_id, best, tokens, work.relevance, work.calibration, work.passes)


def _for_model(
    stored: StoredReranker, loaded: LoadedReranker, queries: Sequence[Item], documents: Sequence[Item]
) -> tuple[Sequence[Item], Sequence[Item]]:
    """The pairs as `loaded` takes them: a text-only model refuses images (400 naming the model and the field) and
    gets a `Content` without images as its text."""
    if loaded.recipe.takes_images:
        return queries, documents
    for item in (*queries, *documents):
        if isinstance(item, Content) and item.images:
            raise InvalidInputError(_text_only(stored, item.images[0].field), item.images[0].field)

    def text(item: Item) -> str:
        return item if isinstance(item, str) else item.text or ""

    return [text(q) for q in queries], [text(d) for d in documents]


def _text_only(stored: StoredReranker, field: str) -> str:
    return (
        f"`{field}` is an image, and {stored.model_id} ranks text only; send images to a multimodal reranker (recipe "
        "qwen3-vl, such as Qwen/Qwen3-VL-Reranker-2B)"
    )


def _cancel_prepared_work(done: concurrent.futures.Future) -> None:
    """Cancel the work a preparation made for a caller that has gone (timed out, or its client left)."""
    if done.cancelled() or done.exception() is not None:
        return
    if isinstance(work := done.result(), _Work):
        work.cancel()


def _copy_outcome(source: concurrent.futures.Future, target: concurrent.futures.Future) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())
