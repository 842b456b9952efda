"""The rerank server: a BentoML service whose batchable API and vLLM / Jina / Cohere / TEI routes share one engine.

Serve it with `bentoml serve` (port 8000) or `make serve`; build a Bento with `bentoml build`. The parts it wires
together: `rerank_server.api` (the mounted HTTP app, its guard and request tracking), `rerank_server.engine` (the
continuous batcher every caller feeds), and `rerank_server.serving` (workers per GPU, start-up refusals).
"""

from __future__ import annotations

import logging
from typing import Annotated

import bentoml
from pydantic import AfterValidator, Field

from rerank_server import metrics
from rerank_server.api import pairs as api_pairs
from rerank_server.api.app import app as http_app
from rerank_server.api.guard import RequestGuard
from rerank_server.api.pairs import CallerPair
from rerank_server.api.tracking import RequestTracking
from rerank_server.api.wire import PairResult
from rerank_server.errors import ModelLoadError, UnknownModelError
from rerank_server.models.store import find_reranker
from rerank_server.serving import dispatcher, startup, workers
from rerank_server.settings import get_settings

logger = logging.getLogger("bentoml")
settings = get_settings()
# Decided the same way in `bentoml serve` and in each worker (see rerank_server.serving.workers).
GPUS = workers.visible_gpus()
WORKERS = workers.worker_count(settings.workers, GPUS)
dispatcher.bound_learned_wait(settings.api_max_wait_ms / 1000)
dispatcher.lend_dispatch_slots()
# A call's pairs: at most RERANK_MAX_DOCUMENTS, as on the routes, and admitted into the queue's bound before BentoML's
# dispatcher holds them (see rerank_server.api.pairs).
Pairs = Annotated[list[CallerPair], Field(max_length=settings.max_documents), AfterValidator(api_pairs.admit)]


@bentoml.asgi_app(http_app, path="/")
@bentoml.service(
    name="rerank",
    # Every GPU of the host, one worker each by default: BentoML shows each worker all of them, and each worker
    # takes its own (Reranker.__init__). A host without a GPU still declares one, for the Bento's deployment.
    resources={"gpu": max(1, GPUS)},
    workers=WORKERS,
    http={"port": 8000},
    # BentoML's own limit on a request stays above RERANK_REQUEST_TIMEOUT_S, so that a slow request ends in the
    # engine's 504 (its queued pairs dropped), never in BentoML cutting it first.
    traffic={"timeout": max(300.0, settings.request_timeout_s + 30)},
    # The server writes its own access line per request (request id, model, pairs; control characters escaped):
    # BentoML's would repeat it, with the path as the client sent it.
    logging={"access": {"enabled": False}},
)
class Reranker:
    """Scores (query, document) pairs with BGE cross-encoders and LLM rerankers from the BentoML model store."""

    def __init__(self) -> None:
        import torch

        from rerank_server.backends.torch_backend import resolve_device
        from rerank_server.engine.engine import RerankEngine

        self.worker = bentoml.server_context.worker_index
        self.readiness = workers.Readiness(WORKERS)
        device = workers.worker_device(resolve_device(settings.device), self.worker, torch.cuda.device_count())
        if device.startswith("cuda:"):
            torch.cuda.set_device(device)  # else CUDA calls that name no device open a context on GPU 0 as well
        # One engine per worker: its model thread serves the HTTP routes and the API alike.
        self.engine = RerankEngine(settings, device=device)
        try:
            # A preloaded model that cannot load is logged and answers 503; the default model must load.
            self.engine.registry.preload(settings.default_model, settings.preload_names)
        except (UnknownModelError, ModelLoadError) as exc:
            startup.cannot_serve(f"RERANK_DEFAULT_MODEL={settings.default_model!r} cannot be served: {exc}")
        self.readiness.mark_ready(self.worker)
        if WORKERS > 1:
            logger.info("Worker %d of %d ready on %s", self.worker or 1, WORKERS, device)

    def __is_ready__(self) -> bool:
        """/readyz: 200 once every worker has loaded its models, 503 while one is loading, draining or dead."""
        return self.readiness.all_ready()

    def __is_alive__(self) -> bool:
        """/livez: 503 when a worker was killed (inside a container BentoML does not restart it: the pod must be), or
        when this worker's model thread is stuck or its device fails every call (rerank_server.engine.liveness)."""
        if self.readiness.lost_a_worker():
            return False
        problem = self.engine.liveness.problem()
        if problem:
            logger.error("Worker %d is not alive: %s", self.worker or 1, problem)
        return problem is None

    @bentoml.on_deployment
    def check_default_model() -> None:
        """Once, in `bentoml serve`'s own process before any worker starts: stop at once, with one line and a non-zero
        exit, when the default model is not in the store; and stop the same way if a worker cannot load it."""
        startup.supervise()
        if find_reranker(settings.default_model) is None:
            raise SystemExit(
                f"error: RERANK_DEFAULT_MODEL={settings.default_model!r} is not in the model store; import it first "
                "(python import_models.py NAME, or --from-dir DIR) or set RERANK_DEFAULT_MODEL to a stored model "
                "(python import_models.py --list)"
            )

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        # Pairs per dispatch and the dispatcher's latency bound, chosen by measurement (docs/benchmarks.md,
        # "BentoML's batchable API"): the continuous batcher behind it cuts the pairs into forward passes itself.
        max_batch_size=settings.api_max_batch_pairs,
        max_latency_ms=settings.api_max_latency_ms,
    )
    async def score_pairs(self, pairs: Pairs) -> list[PairResult]:
        """Score (query, document) pairs, each naming its model; they join the same batches as the HTTP routes'.

        BentoML's adaptive batching merges the pairs of concurrent calls into one list. Each result holds the
        relevance `score` (as on the routes: the model's, or calibrated), the raw `logit`, the `tokens` the model saw
        and the `model` that scored it, or an `error` when that pair's model cannot be used. At most
        RERANK_MAX_DOCUMENTS pairs per call; a full queue answers 429 (retry after a second), a missed deadline 504,
        out of memory 503.
        """
        api_pairs.hand_over(pairs)
        try:
            # A wait for a model's load lets BentoML dispatch the calls behind this one (for loaded models).
            results = await api_pairs.score_pairs(self.engine, pairs, dispatcher.slot_set_aside)
        except Exception as exc:
            if (refused := api_pairs.refusal(exc)) is None:
                raise
            raise refused from exc
        api_pairs.record_calls(pairs, results)
        return results

    @bentoml.on_shutdown
    def drain(self) -> None:
        """Finish the queued work before the worker exits (BentoML stops taking requests first)."""
        self.readiness.mark_leaving(self.worker)
        self.engine.close(timeout=settings.request_timeout_s)
        metrics.forget_this_process()


# BentoML nests middlewares in the order added, the first outermost: tracking wraps the guard, so that refused
# requests get an id, a log line and a count too.
Reranker.add_asgi_middleware(RequestTracking)
Reranker.add_asgi_middleware(RequestGuard, api_keys=settings.api_keys, max_body_bytes=settings.max_body_bytes)
# A Bento carries the exact stored versions the server loads at start-up: the default model and RERANK_PRELOAD.
for _name in dict.fromkeys([settings.default_model, *settings.preload_names]):
    if (_stored := find_reranker(_name)) is not None:
        Reranker.models.append(bentoml.models.BentoModel(_stored.tag))
