"""The rerank server: a BentoML service with an adaptive-batching scoring API and vLLM-compatible HTTP routes.

Serve it with `bentoml serve` (port 8000) or `make serve`; build a Bento with `bentoml build`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import bentoml
from bentoml.exceptions import BentoMLException

from rerank_server.catalog import store_name
from rerank_server.http_api import BackendBusyError
from rerank_server.http_api import app as http_app
from rerank_server.middleware import INTERNAL_CALL, RequestGuard
from rerank_server.registry import ModelRegistry
from rerank_server.schemas import PairScore, ScorePair
from rerank_server.settings import get_settings

logger = logging.getLogger("bentoml")
settings = get_settings()


@bentoml.asgi_app(http_app, path="/")
@bentoml.service(
    name="rerank",
    resources={"gpu": 1},
    http={"port": 8000},
    traffic={"timeout": 300},
    # The routes reach the batcher through BentoML's in-process client, which by default drops its session (and the
    # requests in flight on it) every 100 requests; a long-lived session avoids those failures under load.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 365 * 24 * 3600.0},
)
class Reranker:
    """Scores (query, document) pairs with BGE / sentence-transformers cross-encoders from the model store."""

    def __init__(self) -> None:
        self.registry = ModelRegistry(settings)
        self.registry.preload(settings.preload_ids)

    @bentoml.api(batchable=True, max_batch_size=settings.max_batch_pairs, max_latency_ms=settings.max_latency_ms)
    def score_pairs(self, pairs: list[ScorePair]) -> list[PairScore]:
        """Score (query, document) pairs; concurrent calls are merged into one model batch.

        Each result holds the relevance `score` (sigmoid of the logit), the raw `logit` and the `tokens` the model saw,
        or an `error` when that pair's model cannot be used.
        """
        return self.registry.score(pairs)

    async def batch_score(self, pairs: list[ScorePair]) -> list[PairScore]:
        """Send pairs through the adaptive batcher (from the HTTP routes, which run in the event loop)."""
        marker = INTERNAL_CALL.set(True)
        try:
            scored = await self.to_async.score_pairs(pairs)
        except BentoMLException as exc:
            # The dispatcher sheds load it predicts it cannot finish within max_latency_ms (503), as does a full queue.
            if exc.error_code in (HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.TOO_MANY_REQUESTS):
                raise BackendBusyError(str(exc)) from exc
            raise
        finally:
            INTERNAL_CALL.reset(marker)
        return [PairScore.model_validate(item) for item in scored]


Reranker.add_asgi_middleware(RequestGuard, api_keys=settings.api_keys, max_body_bytes=settings.max_body_bytes)
# A Bento carries the models the server loads at start-up: the default model and RERANK_PRELOAD.
Reranker.models.extend(bentoml.models.BentoModel(f"{store_name(model_id)}:latest") for model_id in settings.preload_ids)
