"""What the server holds and whether it can serve: `/v1/models` (OpenAI-style), the status document at `/`, and
`/health` as text-embeddings-inference and vLLM answer it."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from rerank_server.api.dependencies import Engine, Health
from rerank_server.api.guard import asks_for_html
from rerank_server.api.playground import home_page
from rerank_server.api.wire import ErrorResponse, ModelCard, ModelList, ServerStatus, TEIError, unix_time
from rerank_server.engine.engine import ServedModel

router = APIRouter()


def _card(served: ServedModel) -> ModelCard:
    stored = served.stored
    return ModelCard(
        id=stored.model_id,
        created=unix_time(stored.created.timestamp()),
        owned_by=stored.owned_by,
        max_length=stored.max_length,
        loaded=served.loaded,
        default=served.default,
        tag=stored.tag,
        recipe=stored.recipe,
        backend=stored.backend,
        remote_code=bool(stored.remote_code),
    )


@router.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}})
async def list_models(engine: Engine) -> ModelList:
    """Every reranker in the model store (OpenAI-style list), with whether it is loaded and its max_length."""
    served = await anyio.to_thread.run_sync(engine.served_models)
    return ModelList(data=[_card(model) for model in served])


@router.get("/", response_model=ServerStatus, responses={200: {"content": {"text/html": {}}}})
async def status(request: Request, response: Response, engine: Engine) -> Response | ServerStatus:
    """Server status for programs: loaded models, the default model and every servable model.

    A browser (asking for HTML) gets a page of links instead: the playground, the API docs and BentoML's UI.
    """
    if asks_for_html(request.headers.getlist("accept")):
        return home_page()
    response.headers["Vary"] = "Accept"  # browsers get a page here: a cache must keep the two apart
    served = await anyio.to_thread.run_sync(engine.served_models)
    return ServerStatus(
        loaded_models=engine.loaded_ids(),
        default_model=engine.default_model_id,
        supported_models=[model.stored.model_id for model in served],
    )


@router.head("/health", include_in_schema=False)
@router.get(
    "/health",
    response_class=Response,
    responses={200: {"description": "Ready: an empty body"}, 503: {"model": TEIError}},
)
async def health(healthy: Health) -> Response:
    """200 with an empty body when the server can serve (every worker ready, the model thread alive), else 503: what
    text-embeddings-inference and vLLM answer, for clients that probe `/health` (AstrBot's TEI provider does before
    it uses a server). Open without a key, like `/readyz`."""
    if await anyio.to_thread.run_sync(healthy):
        return Response(status_code=200)
    body = TEIError(error="The server is not ready or a worker is not alive", error_type="Unhealthy")
    return JSONResponse(body.model_dump(), status_code=503)
