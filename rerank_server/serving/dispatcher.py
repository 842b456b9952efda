"""BentoML's adaptive batching for the batchable `/score_pairs`, with the wait it learns bounded.

BentoML's dispatcher (1.4.39, `bentoml/_internal/marshal/dispatcher.py`) holds a lone call back while it expects
partners, for as long as the mean wait of its recent dispatches. After a burst those waits were long (calls queued
behind the dispatch in flight), so for a while every lone call waits about one batch's time for partners that do not
come: +1.2 s per call on this CPU after bursts (docs/benchmarks.md, "BentoML's batchable API"). Here merging does not
need that wait: calls that arrive while a dispatch is in flight are merged anyway, and the continuous batcher behind
merges everything queued for the model. So the learned wait is capped; a small cap still lets calls that arrive
together share a dispatch. Tested by tests/test_server.py::test_bentomls_learned_wait_is_bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any


class _Lease:
    """One dispatch's slot in BentoML's semaphore, and how many of the dispatch's groups have set it aside now: a
    dispatch holds one slot, so it is given back once however many groups wait on loads, and taken back when the last
    of them is done."""

    def __init__(self, semaphore: Any) -> None:
        self.semaphore = semaphore
        self.aside = 0


# The lease of the BentoML dispatch running in this task (set by `lend_dispatch_slots`' outbound call); the tasks a
# dispatch starts for its groups copy this context, so they share the lease.
_dispatch_slot: ContextVar[_Lease | None] = ContextVar("bentoml_dispatch_slot", default=None)


def bound_learned_wait(max_wait_s: float) -> None:
    """Cap the wait BentoML's dispatcher learns (for every batchable API of this process) at `max_wait_s`."""
    from bentoml._internal.marshal import dispatcher

    learned = getattr(dispatcher.Optimizer, "learned", dispatcher.Optimizer)

    class BoundedWait(learned):  # type: ignore[misc, valid-type]
        """BentoML's optimizer, whose learned `wait` never exceeds the cap."""

        @property
        def wait(self) -> float:
            return self._bounded_wait

        @wait.setter
        def wait(self, value: Any) -> None:
            self._bounded_wait = min(float(value), max_wait_s)

    BoundedWait.learned = learned
    dispatcher.Optimizer = BoundedWait


def lend_dispatch_slots() -> None:
    """Let a dispatch set its slot aside while it waits for a model to load (see `slot_set_aside`).

    BentoML runs one dispatch of a batchable API at a time: a dispatch whose pairs wait for a model's load (seconds,
    on slow storage) would hold up every call behind it, for loaded models too. Merging stays BentoML's otherwise.
    """
    from bentoml._internal.marshal import dispatcher

    original = dispatcher.CorkDispatcher.outbound_call
    if getattr(original, "lends_its_slot", False):
        return

    async def outbound_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        _dispatch_slot.set(_Lease(self._sema))  # this task's context only: the dispatch's callback runs in it
        return await original(self, *args, **kwargs)

    outbound_call.lends_its_slot = True  # type: ignore[attr-defined]
    dispatcher.CorkDispatcher.outbound_call = outbound_call  # type: ignore[method-assign]


@asynccontextmanager
async def slot_set_aside() -> AsyncIterator[None]:
    """Within this block the dispatch running in this task does not count as in flight: BentoML's dispatcher starts
    the next one. Taken back when the dispatch's last such block ends (even when that puts the count below zero: the
    next release evens it). The event loop's thread is the only one that enters: no lock."""
    lease = _dispatch_slot.get()
    if lease is None:  # not inside a BentoML dispatch
        yield
        return
    lease.aside += 1
    if lease.aside == 1:
        lease.semaphore.release()
    try:
        yield
    finally:
        lease.aside -= 1
        if lease.aside == 0:
            lease.semaphore.sema -= 1
