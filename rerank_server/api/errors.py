"""Errors as clients see them: every failure mapped once to a status code and the error shape of the client's format.

vLLM, Jina and Cohere clients read vLLM's (OpenAI's) `{"error": {"message", "type", "param", "code"}}`, Jina's
clients a top-level `"detail"` beside it; text-embeddings-inference clients read TEI's `{"error", "error_type"}`. A
route says which format it speaks; the failure says what went wrong; this module decides the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rerank_server.api.wire import ErrorInfo, ErrorResponse, TEIError
from rerank_server.errors import (
    BatcherClosedError,
    DeadlineExceededError,
    InputTooLongError,
    InvalidInputError,
    ModelLoadError,
    QueueFullError,
    UnknownModelError,
)

ErrorFormat = Literal["vllm", "tei"]
RETRY_SOON = {"Retry-After": "1"}


@dataclass
class HTTPError(Exception):
    """A failure with its HTTP status; `vllm_type` and `tei_type` are the error types of each format."""

    status: int
    message: str
    vllm_type: str
    tei_type: str = "Validation"
    param: str | None = None
    headers: dict[str, str] | None = None

    def body(self, error_format: ErrorFormat) -> dict[str, Any]:
        if error_format == "tei":
            return TEIError(error=self.message, error_type=self.tei_type).model_dump()
        info = ErrorInfo(message=self.message, type=self.vllm_type, param=self.param, code=self.status)
        return ErrorResponse(error=info, detail=self.message).model_dump()


def invalid(message: str, param: str | None = None, error_format: ErrorFormat = "vllm") -> HTTPError:
    """A request that cannot be served as sent: vLLM answers 400, TEI 422 ("Input validation error: ...")."""
    if error_format == "tei":
        return HTTPError(422, f"Input validation error: {message}", "BadRequestError", "Validation", param)
    return HTTPError(400, message, "BadRequestError", "Validation", param)


def from_failure(exc: BaseException, error_format: ErrorFormat) -> HTTPError | None:
    """The HTTP answer to a failure of the engine or the model (None: not one of ours, a bug)."""
    if isinstance(exc, InputTooLongError):
        return HTTPError(413 if error_format == "tei" else 400, str(exc), "BadRequestError", "Validation", exc.param)
    if isinstance(exc, InvalidInputError):
        return invalid(exc.message, exc.param, error_format)
    if isinstance(exc, UnknownModelError):
        return HTTPError(404, str(exc), "NotFoundError", "NotFound", "model")
    if isinstance(exc, ModelLoadError):
        # A model in its load back-off says when the next try is: clients that honour Retry-After wait that long.
        retry = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else RETRY_SOON
        return HTTPError(503, str(exc), "ServiceUnavailableError", "Unhealthy", "model", retry)
    if isinstance(exc, QueueFullError):
        message = f"Too many pairs are waiting, retry shortly: {exc}"
        return HTTPError(429, message, "TooManyRequestsError", "Overloaded", headers=RETRY_SOON)
    if isinstance(exc, DeadlineExceededError):
        return HTTPError(504, str(exc), "TimeoutError", "Backend")
    if isinstance(exc, BatcherClosedError):
        return HTTPError(
            503, str(exc), "ServiceUnavailableError", "Unhealthy", headers={**RETRY_SOON, "Connection": "close"}
        )
    if isinstance(exc, torch.OutOfMemoryError):
        message = "The accelerator ran out of memory on this request; retry, or send fewer or shorter documents"
        return HTTPError(503, message, "ServiceUnavailableError", "Backend", headers=RETRY_SOON)
    return None


# --- Request validation, worded for the person who has to fix the request ------------------------------------------

# What a field accepts, where pydantic would only list the failed alternatives of a union one by one.
_ACCEPTS = {
    "documents": 'a list of strings or of objects (`{text}`, `{text?, image?}`, `{"content": [parts]}`)',
    "documents[]": 'a string, an object with `text` and/or `image`, or `{"content": [parts]}`',
    "query": 'a string, an object with `text` and/or `image`, or `{"content": [parts]}`',
    **dict.fromkeys(
        ("text_1", "text_2", "data_1", "data_2", "queries", "items"),
        "a string, an object with `text` and/or `image`, or a list of them",
    ),
    "texts": "a list of strings",
}
_EXAMPLES = {
    "vllm": '{"query": "...", "documents": ["...", "..."]}',
    "tei": '{"query": "...", "texts": ["...", "..."]}',
}


def _path(loc: Sequence[Any]) -> list[str | int]:
    # pydantic adds validator and union-branch names ("function-after[...]", "str", "TextDocument") to a location.
    return [part for part in loc if isinstance(part, int) or (part != "body" and part.isidentifier())]


def _dotted(path: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in path)


def describe(
    errors: Sequence[dict[str, Any]], error_format: ErrorFormat = "vllm", example: str | None = None
) -> HTTPError:
    """The first validation error as one sentence that names the field and what to send (`example`, else the rerank
    body of the format)."""
    if not errors:
        return invalid("invalid request", None, error_format)
    first = errors[0]
    kind, loc = first.get("type", ""), tuple(first.get("loc", ()))
    example = example or _EXAMPLES[error_format]
    if kind == "json_invalid":
        position = loc[1] if len(loc) > 1 else "?"
        reason = (first.get("ctx") or {}).get("error", "malformed")
        return invalid(
            f"The request body is not valid JSON ({reason} at character {position}); send {example}", None, error_format
        )
    path = _path(loc)
    if not path:
        if kind == "missing":
            return invalid(f"The request body is empty; send a JSON object such as {example}", None, error_format)
        if isinstance(first.get("input"), bytes | str):
            return invalid(
                "The request body must be JSON, sent with the header `Content-Type: application/json` (curl: -H "
                f"'Content-Type: application/json'); for example {example}",
                None, error_format,
            )  # fmt: skip
        return invalid(f"The request body must be a JSON object such as {example}", None, error_format)
    field = _dotted(path)
    if kind == "missing":
        return invalid(f"`{field}` is required; send {example}", field, error_format)
    named = next((part for part in reversed(path) if isinstance(part, str)), "")
    if isinstance(path[-1], int) and f"{named}[]" in _ACCEPTS:  # an item of the list, not the list
        named = f"{named}[]"
    same_place = [e for e in errors if _path(e.get("loc", ()))[: len(path)] == path]
    if named in _ACCEPTS and len(same_place) > 1:
        return invalid(f"`{field}` must be {_ACCEPTS[named]}", field, error_format)
    return invalid(f"`{field}`: {first.get('msg', 'invalid value')}", field, error_format)


def looks_like_tei(path: str, body_start: bytes | str) -> bool:
    """Whether a request is in TEI's format, judged from its body's first bytes even when they are not valid JSON
    (a refusal before parsing, malformed JSON): only `/rerank` takes both formats, and only TEI's body has `texts`."""
    if path != "/rerank":
        return False
    data = body_start.encode("utf-8", "replace") if isinstance(body_start, str) else body_start
    return b'"texts"' in data[:65536]
