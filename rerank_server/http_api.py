"""The HTTP face of the server: `/v1/rerank`, `/v1/models` and `/`, as rerank clients expect them.

The routes know nothing of BentoML: they talk to a `RerankBackend` (the service in production, a fake in unit tests),
which scores pairs through the adaptive batcher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Protocol

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rerank_server.registry import ModelLoadError, ModelRegistry, UnknownModelError
from rerank_server.schemas import (
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    PairScore,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    ScorePair,
    ServerStatus,
    Usage,
    unix_time,
)


class RerankBackend(Protocol):
    """What the routes need from the service."""

    registry: ModelRegistry

    async def score_pairs(self, pairs: list[ScorePair]) -> list[PairScore]: ...


def current_backend() -> RerankBackend:
    """The running BentoML service instance (overridden in unit tests)."""
    import bentoml

    return bentoml.get_current_service()


Backend = Annotated[RerankBackend, Depends(current_backend)]


class APIError(Exception):
    """An error answered in vLLM's error shape."""

    def __init__(self, status: int, message: str, type_: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param


def error_response(status: int, message: str, type_: str, param: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorInfo(message=message, type=type_, param=param, code=status))
    return JSONResponse(body.model_dump(), status_code=status)


app = FastAPI(
    title="Rerank API",
    summary="vLLM / Jina / Cohere compatible reranking with BGE cross-encoders, served by BentoML.",
    # BentoML keeps its own Swagger UI at `/` for browsers; ours documents the rerank routes.
    docs_url="/docs",
)


@app.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.type, exc.param)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    # vLLM answers malformed requests with 400 and its error shape, not FastAPI's 422 detail list.
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = f"{param}: {first.get('msg', 'invalid request')}" if param else str(first.get("msg", "invalid request"))
    return error_response(400, message, "BadRequestError", param)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), "NotFoundError" if exc.status_code == 404 else "Error")


async def _resolve_and_load(backend: RerankBackend, name: str | None) -> str:
    """The public id of the requested model, loaded (in a thread: loading takes seconds)."""
    registry = backend.registry
    try:
        stored = registry.resolve(name)
        await anyio.to_thread.run_sync(registry.get, stored.model_id)
    except UnknownModelError as exc:
        raise APIError(404, str(exc), "NotFoundError", "model") from exc
    except ModelLoadError as exc:
        raise APIError(503, str(exc), "ServiceUnavailableError", "model") from exc
    return stored.model_id


@app.post(
    "/v1/rerank",
    response_model=RerankResponse,
    response_model_exclude_none=True,
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
async def rerank(request: RerankRequest, backend: Backend) -> RerankResponse:
    """Rank `documents` by relevance to `query`, best first (vLLM / Jina / Cohere v1 request and answer).

    `relevance_score` is the sigmoid of the cross-encoder's logit, as `sentence_transformers.CrossEncoder.predict`
    returns it. `usage` counts the tokens the model actually saw, after truncation to the model's max_length.
    """
    if not request.documents:
        raise APIError(400, "documents must not be empty", "BadRequestError", "documents")
    model_id = await _resolve_and_load(backend, request.model)
    pairs = [ScorePair(model=model_id, query=request.query, document=doc) for doc in request.documents]
    scored = await backend.score_pairs(pairs)
    failed = next((s.error for s in scored if s.error), None)
    if failed:
        raise APIError(503, failed, "ServiceUnavailableError", "model")
    order = sorted(range(len(scored)), key=lambda i: scored[i].score or 0.0, reverse=True)
    if request.top_n:
        order = order[: request.top_n]
    tokens = sum(s.tokens for s in scored)
    results = [
        RerankResult(
            index=i,
            relevance_score=scored[i].score or 0.0,
            document=RerankDocument(text=request.documents[i]) if request.return_documents else None,
        )
        for i in order
    ]
    return RerankResponse(model=model_id, usage=Usage(prompt_tokens=tokens, total_tokens=tokens), results=results)


def _model_cards(backend: RerankBackend) -> list[ModelCard]:
    registry = backend.registry
    loaded = set(registry.loaded_ids())
    return [
        ModelCard(
            id=stored.model_id,
            created=unix_time(stored.created.timestamp()),
            owned_by=stored.owned_by,
            max_length=stored.max_length,
            loaded=stored.model_id in loaded,
            default=stored.model_id == registry.default_model_id,
            tag=stored.tag,
        )
        for stored in registry.refresh()
    ]


@app.get("/v1/models", response_model=ModelList)
async def list_models(backend: Backend) -> ModelList:
    """Every reranker in the model store (OpenAI-style list), with whether it is loaded and its max_length."""
    return ModelList(data=await anyio.to_thread.run_sync(_model_cards, backend))


def _bentoml_index_page() -> Path | None:
    # The mounted app shadows BentoML's own `/`, so browsers are handed BentoML's UI page from its package.
    import _bentoml_impl.server as bentoml_server

    page = Path(bentoml_server.__file__).parent / "main-openapi.html"
    return page if page.is_file() else None


@app.get("/", response_model=ServerStatus, responses={200: {"content": {"text/html": {}}}})
async def status(request: Request, backend: Backend) -> Response | ServerStatus:
    """Server status for programs: loaded models, the default model and every servable model.

    A browser (asking for HTML) gets BentoML's API UI instead.
    """
    if "text/html" in request.headers.get("accept", ""):
        page = _bentoml_index_page()
        if page is not None:
            return FileResponse(page, media_type="text/html")
    registry = backend.registry
    stored = await anyio.to_thread.run_sync(registry.refresh)
    return ServerStatus(
        loaded_models=registry.loaded_ids(),
        default_model=registry.default_model_id,
        supported_models=[s.model_id for s in stored],
    )
