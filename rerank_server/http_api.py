"""The HTTP face of the server: rerank in the vLLM / Jina / Cohere and TEI formats, vLLM's score, models, status.

The routes know nothing of BentoML or of models: they parse a format, call the `ScoringEngine` (the service's in
production, one of their own in unit tests), and write the format's answer. What can fail is mapped to statuses in
`http_errors.py`; a client that disconnects cancels its request's queued work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rerank_server.engine import Scored, ScoringEngine
from rerank_server.http_errors import ErrorFormat, HTTPError, describe, from_failure, invalid, looks_like_tei
from rerank_server.observability import current_request
from rerank_server.recipes import TextOptions
from rerank_server.registry import ModelRegistry
from rerank_server.schemas import (
    ErrorResponse,
    ModelCard,
    ModelList,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
    ServerStatus,
    TEIError,
    TEIRank,
    TEIRerankRequest,
    Usage,
    unix_time,
)

logger = logging.getLogger("bentoml")
T = TypeVar("T")
# Status written to the access log for a request whose client left before the answer (nginx's convention).
CLIENT_CLOSED_REQUEST = 499


def current_engine() -> ScoringEngine:
    """The running BentoML service's engine (overridden in unit tests)."""
    import bentoml

    return bentoml.get_current_service().engine


Engine = Annotated[ScoringEngine, Depends(current_engine)]


def _docs_assets() -> Path:
    # Swagger UI's files ship inside the fastapi-offline wheel: `/docs` works on hosts that reach no CDN.
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


app = FastAPI(
    title="Rerank API",
    summary="vLLM / Jina / Cohere / TEI compatible reranking with cross-encoders and LLM rerankers, served by BentoML.",
    docs_url=None,  # served below, from local assets
    redoc_url=None,
    # A body without any Content-Type is read as JSON (minimal clients); other types get a clear 400.
    strict_content_type=False,
)
app.mount("/docs-assets", StaticFiles(directory=_docs_assets()), name="docs-assets")


@app.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    """Swagger UI of the rerank routes, with every asset served by this server."""
    return get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - docs",
        swagger_js_url="/docs-assets/swagger-ui-bundle.js", swagger_css_url="/docs-assets/swagger-ui.css",
        swagger_favicon_url="/docs-assets/favicon.png",
    )  # fmt: skip


def _error_format(request: Request) -> ErrorFormat:
    return getattr(request.state, "error_format", "vllm")


@app.exception_handler(HTTPError)
async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
    return JSONResponse(exc.body(_error_format(request)), status_code=exc.status, headers=exc.headers)


@app.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Still a bug to fix (it is logged with its traceback), but the client gets JSON, not a bare text page.
    logger.exception("Unhandled error on %s %s", request.method, request.url.path)
    return await _http_error(
        request, HTTPError(500, f"Internal error: {type(exc).__name__}", "InternalServerError", "Backend")
    )


@app.exception_handler(RequestValidationError)
async def _request_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own answer would be 422 with a list of details; clients of vLLM and TEI expect their error shapes.
    # A body that is not even JSON reaches no route: on `/rerank` its text tells which format it was meant to be.
    if isinstance(exc.body, str | bytes) and looks_like_tei(request.url.path, exc.body):
        request.state.error_format = "tei"
    return await _http_error(request, describe(list(exc.errors()), _error_format(request)))


@app.exception_handler(StarletteHTTPException)
async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_ = {404: "NotFoundError", 405: "MethodNotAllowedError"}.get(exc.status_code, "Error")
    return await _http_error(request, HTTPError(exc.status_code, str(exc.detail), type_, type_))


# --- Scoring shared by every format --------------------------------------------------------------------------------


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _disconnected(request: Request) -> None:
    # The body has been read: the next message the server sends the app is the client's disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled (and its queued pairs dropped) when the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone
    return task.result()


@app.exception_handler(ClientGone)
async def _client_gone(request: Request, exc: ClientGone) -> Response:
    logger.info("The client of %s left before the answer; its queued work was dropped", request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def _check_count(count: int, field: str, registry: ModelRegistry, error_format: ErrorFormat = "vllm") -> None:
    if not count:
        raise invalid(f"`{field}` must not be empty", field, error_format)
    limit = registry.settings.max_documents
    if count > limit:
        raise invalid(f"`{field}` has {count} items, over the limit of {limit} per request", field, error_format)


async def _score(
    request: Request,
    engine: ScoringEngine,
    model: str | None,
    queries: list[str],
    documents: list[str],
    options: TextOptions,
    *,
    max_chunks: int | None = None,
    error_format: ErrorFormat = "vllm",
) -> Scored:
    """The engine's scores; its failures as the format's HTTP errors; cancelled when the client leaves."""
    context = current_request()
    context.pairs = len(documents)
    try:
        scored = await _unless_client_leaves(
            request, engine.score(model, queries, documents, options, max_chunks=max_chunks)
        )
    except ClientGone:
        raise
    except Exception as exc:
        error = from_failure(exc, error_format)
        if error is None:
            raise
        raise error from exc
    context.model = scored.model_id
    return scored


def _ranked(scores: list[float], top_n: int | None) -> list[int]:
    order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
    return order[:top_n] if top_n else order


# --- Rerank: vLLM / Jina / Cohere ------------------------------------------------------------------------------------


async def _rerank(http: Request, request: RerankRequest, engine: ScoringEngine) -> RerankResponse:
    texts = request.texts()
    _check_count(len(texts), "documents", engine.registry)
    options = TextOptions(
        max_length=request.truncate_prompt_tokens, max_document_tokens=request.max_tokens_per_doc,
        instruction=request.instruction,
    )  # fmt: skip
    scored = await _score(
        http, engine, request.model, [request.query] * len(texts), texts, options, max_chunks=request.max_chunks_per_doc
    )
    values = scored.scores if request.use_activation else scored.logits
    results = [
        RerankResult(
            index=i,
            relevance_score=values[i],
            document=RerankDocument(text=texts[i]) if request.return_documents else None,
        )
        for i in _ranked(values, request.top_n)
    ]
    usage = Usage(prompt_tokens=scored.tokens, total_tokens=scored.tokens)
    return RerankResponse(id=current_request().request_id, model=scored.model_id, usage=usage, results=results)


_RERANK_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse},
    401: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    429: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
    504: {"model": ErrorResponse},
}


@app.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True, responses=_RERANK_RESPONSES)
async def rerank_v1(http: Request, request: RerankRequest, engine: Engine) -> RerankResponse:
    """Rank `documents` by relevance to `query`, best first (vLLM, Jina and Cohere v1 request and answer).

    `relevance_score` is the sigmoid of the model's logit, as `sentence_transformers.CrossEncoder.predict` returns it
    (the raw logit with `use_activation: false`); for LLM rerankers it is their published probability of "yes".
    `usage` counts the tokens the model saw, after truncation, prompt templates included.
    """
    return await _rerank(http, request, engine)


@app.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, responses=_RERANK_RESPONSES)
async def rerank_v2(http: Request, request: RerankRequest, engine: Engine) -> RerankResponse:
    """Cohere v2 rerank (and vLLM's `/v2/rerank`): the same request and answer as `/v1/rerank`."""
    return await _rerank(http, request, engine)


async def _rerank_tei(http: Request, request: TEIRerankRequest, engine: ScoringEngine) -> list[TEIRank]:
    _check_count(len(request.texts), "texts", engine.registry, "tei")
    options = TextOptions(
        side="left" if request.truncation_direction.lower() == "left" else "right", instruction=request.instruction,
        truncate=request.truncate,
    )  # fmt: skip
    scored = await _score(
        http, engine, request.model, [request.query] * len(request.texts), request.texts, options, error_format="tei"
    )
    values = scored.logits if request.raw_scores else scored.scores
    return [
        TEIRank(index=i, score=values[i], text=request.texts[i] if request.return_text else None)
        for i in _ranked(values, None)
    ]


@app.post(
    "/rerank",
    response_model=RerankResponse | list[TEIRank],
    response_model_exclude_none=True,
    # A TEI body gets TEI's error shape, any other body vLLM's: both are documented for the codes they share.
    responses={
        **{code: {"model": ErrorResponse | TEIError} for code in _RERANK_RESPONSES},
        422: {"model": TEIError},
    },
)
async def rerank(
    http: Request,
    engine: Engine,
    body: Annotated[
        Any, Body(description="A Jina / Cohere / vLLM rerank body, or TEI's `{query, texts, raw_scores, ...}`.")
    ] = None,
) -> RerankResponse | list[TEIRank]:
    """Rerank in either format: a body with `texts` is a text-embeddings-inference request and gets TEI's answer (a
    bare list of `{index, score, text?}` sorted by score); a body with `documents` is handled as `/v1/rerank`."""
    if isinstance(body, dict) and "texts" in body:
        http.state.error_format = "tei"
        try:
            tei_request = TEIRerankRequest.model_validate(body)
        except ValidationError as exc:
            raise describe(exc.errors(), "tei") from exc
        return await _rerank_tei(http, tei_request, engine)
    try:
        request = RerankRequest.model_validate(body)
    except ValidationError as exc:
        raise describe(exc.errors()) from exc
    return await _rerank(http, request, engine)


# --- vLLM score -----------------------------------------------------------------------------------------------------


@app.post("/score", response_model=ScoreResponse, responses=_RERANK_RESPONSES)
@app.post("/v1/score", response_model=ScoreResponse, responses=_RERANK_RESPONSES, include_in_schema=False)
async def score(http: Request, request: ScoreRequest, engine: Engine) -> ScoreResponse:
    """vLLM's score API: `text_1` against each `text_2` (or pairwise for two lists), scores in input order."""
    firsts = [request.text_1] if isinstance(request.text_1, str) else request.text_1
    seconds = [request.text_2] if isinstance(request.text_2, str) else request.text_2
    _check_count(len(firsts), "text_1", engine.registry)
    _check_count(len(seconds), "text_2", engine.registry)
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    if len(firsts) != len(seconds):
        message = f"`text_1` has {len(firsts)} items and `text_2` {len(seconds)}: give one text_1 or as many as text_2"
        raise invalid(message, "text_1")
    options = TextOptions(max_length=request.truncate_prompt_tokens, instruction=request.instruction)
    scored = await _score(http, engine, request.model, firsts, seconds, options)
    values = scored.scores if request.use_activation else scored.logits
    data = [ScoreData(index=i, score=s) for i, s in enumerate(values)]
    usage = Usage(prompt_tokens=scored.tokens, total_tokens=scored.tokens)
    return ScoreResponse(id=current_request().request_id, model=scored.model_id, data=data, usage=usage)


# --- Models and status ----------------------------------------------------------------------------------------------


def _model_cards(registry: ModelRegistry) -> list[ModelCard]:
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
            recipe=stored.recipe,
            backend=stored.backend,
        )
        for stored in registry.refresh()
    ]


@app.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}})
async def list_models(engine: Engine) -> ModelList:
    """Every reranker in the model store (OpenAI-style list), with whether it is loaded and its max_length."""
    return ModelList(data=await anyio.to_thread.run_sync(_model_cards, engine.registry))


def _bentoml_index_page() -> Path | None:
    # The mounted app shadows BentoML's own `/`, so browsers are handed BentoML's UI page from its package.
    import _bentoml_impl.server as bentoml_server

    page = Path(bentoml_server.__file__).parent / "main-openapi.html"
    return page if page.is_file() else None


@app.get("/", response_model=ServerStatus, responses={200: {"content": {"text/html": {}}}})
async def status(request: Request, engine: Engine) -> Response | ServerStatus:
    """Server status for programs: loaded models, the default model and every servable model.

    A browser (asking for HTML) gets BentoML's API UI instead.
    """
    if "text/html" in request.headers.get("accept", ""):
        page = _bentoml_index_page()
        if page is not None:
            return FileResponse(page, media_type="text/html")
    registry = engine.registry
    stored = await anyio.to_thread.run_sync(registry.refresh)
    return ServerStatus(
        loaded_models=registry.loaded_ids(),
        default_model=registry.default_model_id,
        supported_models=[s.model_id for s in stored],
    )
