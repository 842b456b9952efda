"""What can go wrong with a request, independent of any wire format: the HTTP layer maps each to a status code and
its client's error shape in one place (`rerank_server/api/errors.py`)."""

from __future__ import annotations

from collections.abc import Sequence


class InvalidInputError(ValueError):
    """The request cannot be served as sent (400); `param` names the field to fix."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InputTooLongError(InvalidInputError):
    """A pair is longer than the model takes and the request asked for no truncation (TEI's `truncate: false`)."""


class UnknownModelError(LookupError):
    """A request named a model that is not in the store (404)."""

    def __init__(self, name: str, available: Sequence[str]) -> None:
        self.name = name
        self.available = list(available)
        listing = ", ".join(self.available) or "none (import one with import_models.py)"
        super().__init__(f"The model `{name}` does not exist. Available models: {listing}")


class ModelLoadError(RuntimeError):
    """A stored model cannot be used now: it failed to load, or the loaded-model budget has no room (503).
    `retry_after_s`: when a new try can succeed (a failed load's back-off), if known."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFullError(RuntimeError):
    """The queue holds as many pairs as it may; the caller should retry shortly (429)."""


class DeadlineExceededError(TimeoutError):
    """The request was not scored within RERANK_REQUEST_TIMEOUT_S (504); its queued pairs were dropped."""


class BatcherClosedError(RuntimeError):
    """The server is shutting down and takes no new work (503)."""
