"""Whether the model thread makes progress: what `/livez` and `/health` report beside the workers' marks.

A device-side assert or a broken driver makes every model call fail after it, and a hung kernel makes one call last
for ever; both leave the HTTP side answering. text-embeddings-inference's health check runs a forward pass; here one
runs only when it can tell something: after a model call failed (a bad request fails alone, a broken device fails the
check too), in the background, so that a probe never waits behind the queue. A forward pass running longer than
RERANK_STALL_TIMEOUT_S is a hung model thread (a long batch is many passes, each of which counts as progress).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future

from rerank_server.errors import BatcherClosedError, DeadlineExceededError, QueueFullError

logger = logging.getLogger("bentoml")
# A check the queue or the deadline turned away says nothing about the device.
_NO_VERDICT = (QueueFullError, BatcherClosedError, DeadlineExceededError, TimeoutError)

CHECK_QUERY = "health check"
CHECK_DOCUMENT = "a short document scored to see that the model still runs"


class Liveness:
    """The model thread's health, judged from the batcher and, after a failed call, from one checking pass."""

    def __init__(
        self,
        *,
        thread_alive: Callable[[], bool],
        busy_for: Callable[[], float],
        last_call_failed: Callable[[], bool],
        run_check: Callable[[], Future],
        stall_timeout_s: float,
    ) -> None:
        self._thread_alive = thread_alive
        self._busy_for = busy_for
        self._last_call_failed = last_call_failed
        self._run_check = run_check
        self.stall_timeout_s = stall_timeout_s
        self._check: Future | None = None
        self._failed_check: str | None = None  # why the last finished check failed (None: it passed)
        self._lock = threading.Lock()

    def problem(self) -> str | None:
        """Why the model thread is not healthy, or None. Never blocks: a check it starts is judged by a later call."""
        if not self._thread_alive():
            return "the model thread has stopped"
        busy = self._busy_for()
        if busy > self.stall_timeout_s:
            return f"a forward pass has run for {busy:.0f} s (RERANK_STALL_TIMEOUT_S={self.stall_timeout_s:g})"
        with self._lock:
            if self._check is not None and self._check.done():
                self._failed_check = _why_failed(self._check)
                self._check = None
                if self._failed_check:
                    logger.error("Liveness: the model failed its check: %s", self._failed_check)
            if self._last_call_failed() and self._check is None:
                self._check = self._start_check()
            if not self._last_call_failed():
                self._failed_check = None  # a call has succeeded since: the device works
            return self._failed_check

    def _start_check(self) -> Future | None:
        try:
            return self._run_check()
        except _NO_VERDICT:
            return None  # tried again at the next probe
        except Exception as exc:  # noqa: BLE001 - a check that cannot even start is a failed check
            failed: Future = Future()
            failed.set_exception(exc)
            return failed


def _why_failed(check: Future) -> str | None:
    if check.cancelled():
        return None
    error = check.exception()
    if error is None or isinstance(error, _NO_VERDICT):
        return None
    return f"the model check failed: {type(error).__name__}: {str(error)[:300]}"
