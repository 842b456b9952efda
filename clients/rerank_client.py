"""Async and sync Python clients for the rerank server (and any vLLM / Jina compatible `/v1/rerank`).

    async with RerankClient("http://localhost:8000", api_key="...") as client:
        for r in await client.rerank("what is ML?", ["ML is a branch of AI", "Python is a language"], top_n=1):
            print(r.index, r.relevance_score, r.document)

The only dependency is httpx, so this file can be copied into another project as it is. `base_url` defaults to
RERANK_BASE_URL or http://localhost:8000, `api_key` to RERANK_API_KEY.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

DEFAULT_BASE_URL = "http://localhost:8000"
# Longer than the server's own deadline (RERANK_REQUEST_TIMEOUT_S, 60 s by default), so that a slow request ends in the
# server's 504 rather than in the client giving up while the server still works on it.
DEFAULT_TIMEOUT_S = 90.0
# Answers that mean "not done, try again": a full queue (429), a proxy that could not reach a replica (502), a server
# that is starting, stopping or out of memory (503). A 504 is not retried: the server already spent its budget on it.
RETRY_STATUSES = frozenset({429, 502, 503})
# Failures that happen before the server can have started the work: safe to send again.
RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RerankResult:
    """One ranked document: its position in the request, its score, and its text when the server echoed it."""

    index: int
    relevance_score: float
    document: str | None = None


class RerankError(Exception):
    """Any failed call: `status_code` is the HTTP status (None when the server could not be reached)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(f"{status_code}: {message}" if status_code else message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class RetryPolicy:
    """Retries 429/502/503 and failures to connect with exponential backoff, honouring `Retry-After`.

    A read timeout is not retried: the server is still working on the request, and a copy would only add load.
    """

    attempts: int = 3
    backoff: float = 0.5
    max_delay: float = 30.0

    def settle(
        self, attempt: int, *, response: httpx.Response | None = None, error: Exception | None = None, url: str = ""
    ) -> float:
        """Seconds to wait before retrying a failed attempt; raises RerankError when it should not be retried."""
        if response is not None and (response.status_code not in RETRY_STATUSES or attempt >= self.attempts):
            raise _error_from(response)
        if error is not None and (attempt >= self.attempts or not isinstance(error, RETRY_ERRORS)):
            if isinstance(error, httpx.TimeoutException):
                raise RerankError(f"no answer from {url} in time ({type(error).__name__}); raise `timeout`") from error
            raise RerankError(f"cannot reach {url}: {error!r}") from error
        return self._delay(attempt, response)

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        try:
            seconds = float(retry_after) if retry_after else math.nan
        except ValueError:
            seconds = math.nan  # an HTTP date: fall back to backoff
        if math.isfinite(seconds) and seconds >= 0:  # a proxy's "-1" or "nan" is no delay to sleep
            return min(seconds, self.max_delay)
        return min(self.backoff * 2**attempt * (1 + random.random() / 4), self.max_delay)


# A text, or for a multimodal reranker an object such as {"text": "...", "image": "data:image/png;base64,..."}.
Item = str | dict[str, Any]


def _rerank_body(
    query: Item,
    documents: list[Item],
    top_n: int | None,
    model: str | None,
    return_documents: bool,
    instruction: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"query": query, "documents": list(documents), "return_documents": return_documents}
    optional = {"top_n": top_n, "model": model, "instruction": instruction}
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


def _parse_results(payload: Any, status: int) -> list[RerankResult]:
    try:
        return [
            RerankResult(
                index=int(item["index"]),
                relevance_score=float(item["relevance_score"]),
                document=(item.get("document") or {}).get("text"),
            )
            for item in payload["results"]
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RerankError(f"the answer is not a rerank result ({exc!r}): {str(payload)[:200]}", status) from exc


def _json(response: httpx.Response) -> Any:
    """A successful answer's JSON; a body that is not JSON (a captive portal's or a proxy's page) is a RerankError."""
    try:
        return response.json()
    except ValueError as exc:
        message = f"the answer is not JSON ({response.headers.get('content-type', 'no content type')}): "
        raise RerankError(message + response.text[:200], response.status_code) from exc


def _field(payload: Any, key: str, status: int) -> Any:
    if not isinstance(payload, dict) or key not in payload:
        raise RerankError(f"the answer has no `{key}`: {str(payload)[:200]}", status)
    return payload[key]


def _error_from(response: httpx.Response) -> RerankError:
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    except ValueError:
        message = response.text or response.reason_phrase
    return RerankError(message, response.status_code)


def _healthy(response: httpx.Response) -> bool:
    if response.status_code in (200, 503):
        return response.status_code == 200
    raise _error_from(response)  # not a health answer at all: a wrong base URL or key


class _BaseClient(ABC):
    """Settings shared by both clients; each subclass makes its own httpx client."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
    ) -> None:
        """`base_url` defaults to RERANK_BASE_URL or http://localhost:8000, `api_key` to RERANK_API_KEY."""
        self.base_url = (base_url or os.environ.get("RERANK_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("RERANK_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.retry = retry or RetryPolicy()
        self._http = self._http_client(base_url=self.base_url, headers=headers, timeout=timeout)

    @abstractmethod
    def _http_client(self, **options: Any) -> Any:
        """The httpx client (sync or async) the subclass talks through."""


class RerankClient(_BaseClient):
    """Async client (httpx.AsyncClient). Close it with `await client.close()` or use `async with`."""

    def _http_client(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(**options)

    async def rerank(
        self,
        query: Item,
        documents: list[Item],
        top_n: int | None = None,
        model: str | None = None,
        return_documents: bool = True,
        instruction: str | None = None,
    ) -> list[RerankResult]:
        """Rank `documents` against `query`, best first (all of them unless `top_n`); `instruction` for LLM
        rerankers such as Qwen3-Reranker. For a multimodal reranker (Qwen3-VL-Reranker) the query and documents may
        be `{"text"?, "image"?}` objects, an image as a data URI or base64."""
        body = _rerank_body(query, documents, top_n, model, return_documents, instruction)
        return _parse_results(*await self._call("POST", "/v1/rerank", json=body))

    async def models(self) -> list[dict[str, Any]]:
        """The server's models (`GET /v1/models` data)."""
        payload, status = await self._call("GET", "/v1/models")
        return _field(payload, "data", status)

    async def status(self) -> dict[str, Any]:
        """The server's status document (`GET /`): loaded, default and supported models."""
        return (await self._call("GET", "/", headers={"Accept": "application/json"}))[0]

    async def health(self) -> bool:
        """Whether the server can serve now (`GET /health` answers 200, not 503); asked once, not retried: a probe
        wants the answer of this moment."""
        try:
            response = await self._http.get("/health")
        except httpx.TransportError as exc:
            raise RerankError(f"cannot reach {self.base_url}: {exc!r}") from exc
        return _healthy(response)

    async def _call(self, method: str, path: str, **kwargs: Any) -> tuple[Any, int]:
        for attempt in itertools.count():
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                await asyncio.sleep(self.retry.settle(attempt, error=exc, url=self.base_url))
                continue
            if response.status_code < 400:
                return _json(response), response.status_code
            await asyncio.sleep(self.retry.settle(attempt, response=response))

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RerankClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class SyncRerankClient(_BaseClient):
    """Blocking client (httpx.Client) with the same calls as RerankClient; use `with` or `close()`."""

    def _http_client(self, **options: Any) -> httpx.Client:
        return httpx.Client(**options)

    def rerank(
        self,
        query: Item,
        documents: list[Item],
        top_n: int | None = None,
        model: str | None = None,
        return_documents: bool = True,
        instruction: str | None = None,
    ) -> list[RerankResult]:
        """Rank `documents` against `query`, best first (all of them unless `top_n`); `instruction` for LLM
        rerankers such as Qwen3-Reranker. For a multimodal reranker (Qwen3-VL-Reranker) the query and documents may
        be `{"text"?, "image"?}` objects, an image as a data URI or base64."""
        body = _rerank_body(query, documents, top_n, model, return_documents, instruction)
        return _parse_results(*self._call("POST", "/v1/rerank", json=body))

    def models(self) -> list[dict[str, Any]]:
        """The server's models (`GET /v1/models` data)."""
        payload, status = self._call("GET", "/v1/models")
        return _field(payload, "data", status)

    def status(self) -> dict[str, Any]:
        """The server's status document (`GET /`): loaded, default and supported models."""
        return self._call("GET", "/", headers={"Accept": "application/json"})[0]

    def health(self) -> bool:
        """Whether the server can serve now (`GET /health` answers 200, not 503); asked once, not retried: a probe
        wants the answer of this moment."""
        try:
            response = self._http.get("/health")
        except httpx.TransportError as exc:
            raise RerankError(f"cannot reach {self.base_url}: {exc!r}") from exc
        return _healthy(response)

    def _call(self, method: str, path: str, **kwargs: Any) -> tuple[Any, int]:
        for attempt in itertools.count():
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                time.sleep(self.retry.settle(attempt, error=exc, url=self.base_url))
                continue
            if response.status_code < 400:
                return _json(response), response.status_code
            time.sleep(self.retry.settle(attempt, response=response))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SyncRerankClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
