"""The rerank server: a BentoML service with an adaptive-batching scoring API and vLLM-compatible HTTP routes.

Serve it with `bentoml serve` (port 8000) or `make serve`; build a Bento with `bentoml build`.
"""

from __future__ import annotations

import logging

import bentoml
from bentoml.exceptions import ServiceUnavailable

from rerank_server.catalog import store_name
from rerank_server.engine import BatcherClosedError, DeadlineExceededError, QueueFullError, ScoringEngine
from rerank_server.http_api import app as http_app
from rerank_server.middleware import RequestGuard
from rerank_server.observability import RequestTracking
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
)
class Reranker:
    """Scores (query, document) pairs with BGE / sentence-transformers cross-encoders from the model store."""

    def __init__(self) -> None:
        # One engine per worker: its model thread serves the HTTP routes and the batchable API alike.
        self.engine = ScoringEngine(settings)
        self.engine.registry.preload(settings.preload_ids)

    @bentoml.api(batchable=True, max_batch_size=settings.max_batch_pairs, max_latency_ms=settings.max_latency_ms)
    def score_pairs(self, pairs: list[ScorePair]) -> list[PairScore]:
        """Score (query, document) pairs; concurrent calls are merged into one model batch.

        Each result holds the relevance `score` (sigmoid of the logit), the raw `logit` and the `tokens` the model saw,
        or an `error` when that pair's model cannot be used.
        """
        try:
            return self.engine.score_blocking(pairs)
        except (QueueFullError, DeadlineExceededError, BatcherClosedError) as exc:
            raise ServiceUnavailable(str(exc)) from exc

    @bentoml.on_shutdown
    def drain(self) -> None:
        """Finish the queued work before the worker exits (BentoML stops taking requests first)."""
        self.engine.close(timeout=settings.request_timeout_s)


# BentoML nests middlewares in the order added, the first outermost: tracking wraps the guard, so that refused
# requests get an id, a log line and a count too.
Reranker.add_asgi_middleware(RequestTracking)
Reranker.add_asgi_middleware(RequestGuard, api_keys=settings.api_keys, max_body_bytes=settings.max_body_bytes)
# A Bento carries the models the server loads at start-up: the default model and RERANK_PRELOAD.
Reranker.models.extend(bentoml.models.BentoModel(f"{store_name(model_id)}:latest") for model_id in settings.preload_ids)
