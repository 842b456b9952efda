"""What the server holds: `/v1/models` (OpenAI-style) and the status document at `/`."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response

from rerank_server.api.dependencies import Engine
from rerank_server.api.playground import home_page
from rerank_server.api.wire import ErrorResponse, ModelCard, ModelList, ServerStatus, unix_time
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


@router.get("/", response_model=ServerStatus, responses={200: {"content": {"text/html": {}}}})
async def status(request: Request, engine: Engine) -> Response | ServerStatus:
    """Server status for programs: loaded models, the default model and every servable model.

    A browser (asking for HTML) gets a page of links instead: the playground, the API docs and BentoML's UI.
    """
    if "text/html" in request.headers.get("accept", ""):
        return home_page()
    served = await anyio.to_thread.run_sync(engine.served_models)
    return ServerStatus(
        loaded_models=engine.loaded_ids(),
        default_model=engine.default_model_id,
        supported_models=[model.stored.model_id for model in served],
    )
