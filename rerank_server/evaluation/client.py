"""Scoring through any vLLM / Jina / Cohere compatible `POST /v1/rerank`, the way a RAG app calls it: one request per
query with all its candidates, `concurrency` requests in flight, each request's latency measured."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError
from tqdm import tqdm

from clients.rerank_client import DEFAULT_TIMEOUT_S, RerankError, RetryPolicy
from rerank_server.evaluation.data import EvalData, Query
from rerank_server.evaluation.errors import EvaluationError


@dataclass(frozen=True)
class Endpoint:
    """Where and how to ask: the base URL (`/v1/rerank` is added), an API key, an instruction for LLM rerankers."""

    base_url: str
    api_key: str | None = None
    instruction: str | None = None
    concurrency: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class Scores:
    """One model's scores on every query (in candidate order) and what they cost."""

    model: str
    by_query: dict[str, list[float]]
    latencies_ms: list[float]
    seconds: float
    pairs: int
    served_as: str | None = None  # the model id the endpoint named in its answers


_NO_RETRY = RetryPolicy(attempts=0)


class _Result(BaseModel):
    index: int
    relevance_score: float


class _Answer(BaseModel):
    model: str | None = None
    results: list[_Result]


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


class _Scorer:
    def __init__(self, endpoint: Endpoint, model: str | None, raw: bool = False) -> None:
        self.endpoint = endpoint
        self.model = model
        self.raw = raw
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        self.http = httpx.AsyncClient(base_url=endpoint.base_url, headers=headers, timeout=endpoint.timeout_s)
        # The Python clients' policy: a full queue (429) or a restarting replica (502, 503) is waited for, as an app
        # would; any other refusal ends the run.
        self.retry = RetryPolicy()

    def _who(self) -> str:
        return f"{self.endpoint.base_url}/v1/rerank" + (f" (model {self.model})" if self.model else "")

    def _explained(self, exc: RerankError, query: Query) -> str:
        """The failure, with its likely cause and fix where the status tells it: the data is rarely to blame."""
        if exc.status_code is None:  # never answered
            text = f"{_one_line(exc.message)} (sending {query.origin} to {self._who()})"
            if isinstance(exc.__cause__, httpx.ConnectError):
                text += (
                    f": is the server running? Start it with `make serve` (or point --base-url at the endpoint; "
                    f"{self.endpoint.base_url} refused the connection)"
                )
            return text
        text = f"{self._who()} refused {query.origin}: {_one_line(str(exc))}"
        if exc.status_code == 404 and self.model and self.model in exc.message:
            return text + (
                f"; the model is not in the server's store: import it with `.venv/bin/python import_models.py "
                f"{self.model}` (or `--from-dir FOLDER` for a local copy), or pass a --model that GET "
                f"{self.endpoint.base_url}/v1/models lists"
            )
        if exc.status_code == 404:
            return text + f"; no POST /v1/rerank at {self.endpoint.base_url}: --base-url is the server's root"
        if exc.status_code == 401:
            return text + "; pass the server's key with --api-key (or RERANK_API_KEY)"
        return text

    async def _post(self, body: dict[str, Any], retry: RetryPolicy) -> httpx.Response:
        for attempt in itertools.count():
            try:
                response = await self.http.post("/v1/rerank", json=body)
            except httpx.TransportError as exc:
                delay = retry.settle(attempt, error=exc, url=self.endpoint.base_url)
            else:
                if response.status_code < 400:
                    return response
                delay = retry.settle(attempt, response=response)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def rank(self, query: Query, retry: bool = True) -> tuple[list[float], str | None, float]:
        """The scores of `query`'s candidates in their order, the model the endpoint named, and the milliseconds."""
        body: dict[str, Any] = {"query": query.text, "documents": list(query.documents), "return_documents": False}
        if self.raw:
            body["use_activation"] = False  # vLLM's switch: the model's raw score, before any activation
        body |= {
            key: value for key, value in (("model", self.model), ("instruction", self.endpoint.instruction)) if value
        }
        started = time.perf_counter()
        try:
            response = await self._post(body, self.retry if retry else _NO_RETRY)
        except RerankError as exc:
            raise EvaluationError(self._explained(exc, query)) from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        try:
            answer = _Answer.model_validate(response.json())
        except (ValueError, ValidationError):
            raise EvaluationError(
                f"{self._who()} answered {query.origin} with no rerank results ({_one_line(response.text)[:200]})"
            ) from None
        scores = [math.nan] * len(query.documents)
        for result in answer.results:
            if 0 <= result.index < len(scores):
                scores[result.index] = result.relevance_score
        if len(answer.results) != len(scores) or not all(math.isfinite(score) for score in scores):
            raise EvaluationError(
                f"{self._who()} did not score each of the {len(scores)} documents of {query.origin} once "
                f"({len(answer.results)} results): an endpoint that cuts to a top_n cannot be evaluated"
            )
        return scores, answer.model, elapsed_ms


async def _score(data: EvalData, endpoint: Endpoint, model: str | None, progress: bool, raw: bool) -> Scores:
    scorer = _Scorer(endpoint, model, raw)
    try:
        # Untimed: a model loaded on first use, connections opened and caches warmed are no per-request cost. Not
        # retried either: an endpoint that is not there, or refuses the model, is reported at once.
        _, named, _ = await scorer.rank(data.queries[0], retry=False)
        label = model or named or "default model"
        if raw:
            label += " (raw scores)"
        by_query: dict[str, list[float]] = {}
        latencies: list[float] = []
        pending: Iterator[Query] = iter(data.queries)
        with tqdm(
            total=len(data.queries), desc=label, unit="query", disable=None if progress else True, leave=False
        ) as bar:

            async def worker() -> None:
                for query in pending:  # shared: each query is taken by one worker
                    by_query[query.qid], _, elapsed_ms = await scorer.rank(query)
                    latencies.append(elapsed_ms)
                    bar.update()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(endpoint.concurrency, len(data.queries)))))
            seconds = time.perf_counter() - started
    finally:
        await scorer.http.aclose()
    return Scores(label, by_query, latencies, seconds, data.pairs, named)


def score(data: EvalData, endpoint: Endpoint, model: str | None, progress: bool = True, raw: bool = False) -> Scores:
    """Every query of `data` scored by `model` (None: the endpoint's default) at `endpoint`; raises EvaluationError
    with the endpoint's own message when it refuses. `raw`: the model's raw scores (`use_activation: false`)."""
    return asyncio.run(_score(data, endpoint, model, progress, raw))


def store_name(endpoint: Endpoint, model_id: str) -> str:
    """The name the endpoint's model store keeps `model_id` under: the `tag` that this server's `GET /v1/models`
    shows (`baai--bge-reranker-base:<version>`), else the id in that spelling (another vendor's endpoint)."""
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    try:
        cards = httpx.get(f"{endpoint.base_url}/v1/models", headers=headers, timeout=endpoint.timeout_s).json()["data"]
        tag = next(str(card["tag"]) for card in cards if card.get("id") == model_id and card.get("tag"))
        return tag.partition(":")[0]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, StopIteration):
        return model_id.lower().replace("/", "--")
