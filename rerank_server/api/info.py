"""What the server holds and whether it can serve: `/v1/models` (OpenAI-style), the status document at `/`, and
`/health` as text-embeddings-inference and vLLM answer it."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from rerank_server.api.dependencies import Engine, Health
from rerank_server.api.guard import asks_for_html
from rerank_server.api.playground import home_page
from rerank_server.api.wire import ErrorResponse, TEIError, unix_time
from rerank_server.api.wire_info import CalibrationInfo, ModelCard, ModelList, ScoreInfo, ServerStatus
from rerank_server.catalog import non_commercial
from rerank_server.engine.scores import ServedModel
from rerank_server.models.store import StoredReranker
from rerank_server.recipes import RECIPES, Recipe

router = APIRouter()


def _score_info(stored: StoredReranker) -> ScoreInfo:
    recipe = RECIPES.get(stored.recipe, Recipe)  # a recipe this version does not know: the base's account
    calibration = stored.calibration
    if calibration is None:
        return ScoreInfo(kind=recipe.score_kind, raw=recipe.raw_score)
    info = CalibrationInfo.model_validate(calibration.model_dump(include=set(CalibrationInfo.model_fields)))
    return ScoreInfo(kind="calibrated", raw=recipe.raw_score, calibration=info)


def _card(served: ServedModel) -> ModelCard:
    stored = served.stored
    # A calibration that cannot be used refuses every request, loaded or not.
    status = (
        "failed"
        if stored.calibration_problem
        else "loaded"
        if served.loaded
        else "failed"
        if served.failure
        else "available"
    )
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
        remote_code=stored.runs_code,
        license=stored.license,
        non_commercial=non_commercial(stored.license),
        score=_score_info(stored),
        status=status,
        error=served.failure,
    )


@router.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}})
async def list_models(engine: Engine) -> ModelList:
    """Every reranker in the model store (OpenAI-style list): whether it is loaded (or failed to load, and why), its
    max_length, license, and what its scores mean (`score`: sigmoid, p-yes, mean-maxsim, cosine or calibrated, with
    the calibration)."""
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
        failed_models={model.stored.model_id: model.failure for model in served if model.failure},
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
