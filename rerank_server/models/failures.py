"""Models that failed to load, and when to try them again: a growing back-off, so that a passing fault (weights
briefly unreadable, a GPU out of memory while another model runs a large batch) heals by itself, while a model that
cannot load is not retried on every request. Not thread-safe: the registry calls it holding its lock."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from rerank_server.models.canary import CanaryFailed
from rerank_server.models.loaded import RemoteCodeRefused
from rerank_server.models.store import StoredReranker

# Seconds before a model that failed to load is tried again, after 1, 2, 3, ... failures in a row.
LOAD_RETRY_BACKOFF_S = (2.0, 5.0, 15.0, 30.0, 60.0)
# An absolute path in an error's text (not the "/" inside a model id such as BAAI/bge-reranker-base).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/-])(?:[A-Za-z]:)?[/\\][^\s'\"`,;]+")


def without_paths(text: str, stored: StoredReranker) -> str:
    """`text` without the server's file paths, for API callers: where the model store is stays in the log."""
    text = text.replace(str(stored.path), f"<the stored files of {stored.tag}>")
    return _ABSOLUTE_PATH.sub("<path>", text)


@dataclass(frozen=True)
class _Failure:
    tag: str  # the stored version that failed
    message: str
    failures: int  # in a row
    retry_at: float  # time.monotonic() from which a request tries again
    lasting: bool  # a refusal that no retry changes (the reason says what to do): no countdown is shown


class LoadFailures:
    """The last failed load of each model id, by stored version."""

    def __init__(self) -> None:
        self._failed: dict[str, _Failure] = {}

    def remember(self, stored: StoredReranker, exc: Exception) -> str:
        """Record a failed load of `stored`; the message a caller gets."""
        earlier = self._failed.get(stored.model_id)
        failures = earlier.failures + 1 if earlier and earlier.tag == stored.tag else 1
        backoff = LOAD_RETRY_BACKOFF_S[min(failures, len(LOAD_RETRY_BACKOFF_S)) - 1]
        lasting = isinstance(exc, (RemoteCodeRefused, CanaryFailed))
        reason = without_paths(str(exc) if lasting else f"{type(exc).__name__}: {str(exc)[:500]}", stored)
        message = f"The model `{stored.model_id}` could not be loaded: {reason}"
        self._failed[stored.model_id] = _Failure(stored.tag, message, failures, time.monotonic() + backoff, lasting)
        return self.blocking(stored) or message

    def blocking(self, stored: StoredReranker) -> str | None:
        """Why `stored` is not to be loaded now (its version failed and its back-off has not passed), or None."""
        failure = self._failed.get(stored.model_id)
        if failure is None or failure.tag != stored.tag or time.monotonic() >= failure.retry_at:
            return None
        if failure.lasting:
            return failure.message
        return f"{failure.message}; the next try is in {self.retry_after(stored)} s"

    def backoff(self, stored: StoredReranker) -> float:
        """Seconds until `stored` is tried again (0: now)."""
        failure = self._failed.get(stored.model_id)
        return max(failure.retry_at - time.monotonic(), 0.0) if failure and failure.tag == stored.tag else 0.0

    def reason(self, stored: StoredReranker) -> str | None:
        """Why `stored`'s last load failed, until a load of it works (back-off or not), or None."""
        failure = self._failed.get(stored.model_id)
        return failure.message if failure and failure.tag == stored.tag else None

    def retry_after(self, stored: StoredReranker) -> int | None:
        """Whole seconds until a new try of `stored` (what a 503's Retry-After says and its message shows); None
        when it is not in a back-off, or failed for a reason no retry changes."""
        failure = self._failed.get(stored.model_id)
        if failure is None or failure.lasting or not self.backoff(stored):
            return None
        return max(math.ceil(self.backoff(stored)), 1)

    def forget(self, model_id: str) -> None:
        self._failed.pop(model_id, None)
