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

from typing import Any


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
