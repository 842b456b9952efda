"""What the server holds and whether it can serve: `/v1/models` (OpenAI-style), the status document at `/`, and
`/health` as text-embeddings-inference and vLLM answer it."""

from __future__ import annotations

from pathlib import Path

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from rerank_server.api.dependencies import Engine, Health
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
    )


@router.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}})
async def list_models(engine: Engine) -> ModelList:
    """Every reranker in the model store (OpenAI-style list), with whether it is loaded and its max_length."""
    served = await anyio.to_thread.run_sync(engine.served_models)
    return ModelList(data=[_card(model) for model in served])


def _bentoml_index_page() -> Path | None:
    # BentoML's UI page, from its package: our status route at `/` takes the path from BentoML's own index, so
    # browsers are handed BentoML's page here (a private module: the page has no public accessor).
    import _bentoml_impl.server as bentoml_server

    page = Path(bentoml_server.__file__).parent / "main-openapi.html"
    return page if page.is_file() else None


@router.get("/", response_model=ServerStatus, responses={200: {"content": {"text/html": {}}}})
async def status(request: Request, engine: Engine) -> Response | ServerStatus:
    """Server status for programs: loaded models, the default model and every servable model.

    A browser (asking for HTML) gets BentoML's API UI instead.
    """
    if "text/html" in request.headers.get("accept", ""):
        page = _bentoml_index_page()
        if page is not None:
            return FileResponse(page, media_type="text/html")
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
