"""The HTTP face of the server: rerank in the vLLM / Jina / Cohere and TEI formats, vLLM's score, models, status.

The routes know nothing of BentoML: they talk to a `ScoringEngine` (the service's in production, one of their own in
unit tests), which scores pairs through the continuous batcher.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import torch
from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rerank_server.engine import BatcherClosedError, DeadlineExceededError, QueueFullError, ScoringEngine
from rerank_server.observability import current_request
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
    ScoreData,
    ScorePair,
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


def current_engine() -> ScoringEngine:
    """The running BentoML service's engine (overridden in unit tests)."""
    import bentoml

    return bentoml.get_current_service().engine


Engine = Annotated[ScoringEngine, Depends(current_engine)]


class APIError(Exception):
    """An error answered in vLLM's shape, or in TEI's when `tei` is set."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        param: str | None = None,
        *,
        tei: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.tei = status, message, type_, param, tei
        self.headers = headers


app = FastAPI(
    title="Rerank API",
    summary="vLLM / Jina / Cohere / TEI compatible reranking with cross-encoders, served by BentoML.",
    # BentoML keeps its own Swagger UI at `/` for browsers; this one documents the rerank routes.
    docs_url="/docs",
)


@app.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    if exc.tei:
        body = TEIError(error=exc.message, error_type=exc.type).model_dump()
    else:
        body = ErrorResponse(error=ErrorInfo(message=exc.message, type=exc.type, param=exc.param, code=exc.status))
        body = body.model_dump()
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


@app.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Still a bug to fix (it is logged with its traceback), but the client gets JSON, not a bare text page.
    logger.exception("Unhandled error on %s %s", request.method, request.url.path)
    return await _api_error(request, APIError(500, f"Internal error: {type(exc).__name__}", "InternalServerError"))


def _invalid(message: str, param: str | None, *, tei: bool = False) -> APIError:
    """A request that cannot be served as sent: vLLM answers 400, TEI 422 with its own error type."""
    if tei:
        return APIError(422, f"Input validation error: {message}", "Validation", param, tei=True)
    return APIError(400, message, "BadRequestError", param)


def _validation_error(errors: list[dict[str, Any]], *, tei: bool = False) -> APIError:
    # FastAPI's own answer would be 422 with a list of details; clients of vLLM and TEI expect their error shapes.
    first = errors[0] if errors else {}
    param = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
    message = str(first.get("msg", "invalid request"))
    return _invalid(f"{param}: {message}" if param else message, param, tei=tei)


@app.exception_handler(RequestValidationError)
async def _request_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return await _api_error(request, _validation_error(list(exc.errors())))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_ = {404: "NotFoundError", 405: "MethodNotAllowedError"}.get(exc.status_code, "Error")
    return await _api_error(request, APIError(exc.status_code, str(exc.detail), type_))


# --- Scoring shared by every format --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """Per-document scores of one request, in document order, and what was spent on them."""

    model_id: str
    scores: list[float]
    tokens: int


async def _score_documents(
    engine: ScoringEngine,
    *,
    model: str | None,
    queries: list[str],
    documents: list[str],
    raw: bool = False,
    max_length: int | None = None,
    truncation_side: str = "right",
    max_document_tokens: int | None = None,
    max_chunks: int | None = None,
    tei: bool = False,
) -> Scored:
    """Resolve and load the model, score each (queries[i], documents[i]) pair, keep each document's best window.

    With chunking, a document too long for the model is split into windows that each fit beside its query.
    """
    registry = engine.registry
    settings = registry.settings
    if not documents:
        raise _invalid("documents must not be empty", "documents", tei=tei)
    if len(documents) > settings.max_documents:
        message = f"{len(documents)} documents exceed the limit of {settings.max_documents} per request"
        raise _invalid(message, "documents", tei=tei)
    context = current_request()
    try:
        stored = registry.resolve(model)
        context.model = stored.model_id
        scorer = await anyio.to_thread.run_sync(registry.get, stored.model_id)
    except UnknownModelError as exc:
        raise APIError(404, str(exc), "NotFoundError", "model", tei=tei) from exc
    except ModelLoadError as exc:
        raise APIError(503, str(exc), "ServiceUnavailableError", "model", tei=tei) from exc
    if max_length is not None and max_length > stored.max_length:
        message = f"truncate_prompt_tokens ({max_length}) is larger than the model's max_length ({stored.max_length})"
        raise _invalid(message, "truncate_prompt_tokens")

    chunks = max_chunks if max_chunks is not None else settings.max_chunks_per_doc
    if chunks and chunks > 1:
        windows = await anyio.to_thread.run_sync(
            lambda: [scorer.windows(q, d, chunks) for q, d in zip(queries, documents, strict=True)]
        )
    else:
        windows = [[d] for d in documents]
    owners = [i for i, pieces in enumerate(windows) for _ in pieces]
    pairs = [
        ScorePair(
            model=stored.model_id, query=queries[i], document=piece, max_length=max_length,
            truncation_side=truncation_side, max_document_tokens=max_document_tokens,
        )
        for i, pieces in enumerate(windows)
        for piece in pieces
    ]  # fmt: skip
    context.pairs = len(pairs)
    scored = await _score_pairs(engine, pairs, tei=tei)
    failed = next((s.error for s in scored if s.error), None)
    if failed:
        raise APIError(503, failed, "ServiceUnavailableError", "model", tei=tei)
    best: list[float | None] = [None] * len(documents)
    for owner, result in zip(owners, scored, strict=True):
        value = result.logit if raw else result.score
        assert value is not None  # no error means a score
        best[owner] = value if best[owner] is None else max(best[owner], value)
    return Scored(stored.model_id, [b for b in best if b is not None], sum(s.tokens for s in scored))


async def _score_pairs(engine: ScoringEngine, pairs: list[ScorePair], *, tei: bool) -> list[PairScore]:
    """The engine's scores, its refusals turned into HTTP errors a client knows how to handle."""
    retry = {"Retry-After": "1"}
    try:
        return await engine.score(pairs)
    except QueueFullError as exc:
        type_ = "Overloaded" if tei else "TooManyRequestsError"
        raise APIError(429, f"Too many pairs are waiting, retry shortly: {exc}", type_, tei=tei, headers=retry) from exc
    except DeadlineExceededError as exc:
        raise APIError(504, str(exc), "Backend" if tei else "TimeoutError", tei=tei) from exc
    except BatcherClosedError as exc:
        type_ = "Unhealthy" if tei else "ServiceUnavailableError"
        raise APIError(503, str(exc), type_, tei=tei, headers={**retry, "Connection": "close"}) from exc
    except torch.OutOfMemoryError as exc:
        message = "The accelerator ran out of memory on this request; retry, or send fewer or shorter documents"
        raise APIError(503, message, "Backend" if tei else "ServiceUnavailableError", tei=tei, headers=retry) from exc


def _ranked(scores: list[float], top_n: int | None) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    return order[:top_n] if top_n else order


# --- Rerank: vLLM / Jina / Cohere ------------------------------------------------------------------------------------


async def _rerank(request: RerankRequest, engine: ScoringEngine) -> RerankResponse:
    texts = request.texts()
    max_length = request.truncate_prompt_tokens
    scored = await _score_documents(
        engine,
        model=request.model,
        queries=[request.query] * len(texts),
        documents=texts,
        raw=not request.use_activation,
        max_length=None if max_length in (None, -1) else max_length,
        max_document_tokens=request.max_tokens_per_doc,
        max_chunks=request.max_chunks_per_doc,
    )
    results = [
        RerankResult(
            index=i,
            relevance_score=scored.scores[i],
            document=RerankDocument(text=texts[i]) if request.return_documents else None,
        )
        for i in _ranked(scored.scores, request.top_n)
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
async def rerank_v1(request: RerankRequest, engine: Engine) -> RerankResponse:
    """Rank `documents` by relevance to `query`, best first (vLLM, Jina and Cohere v1 request and answer).

    `relevance_score` is the sigmoid of the cross-encoder's logit, as `sentence_transformers.CrossEncoder.predict`
    returns it (the raw logit with `use_activation: false`). `usage` counts the tokens the model saw, after each pair
    was truncated to the model's max_length.
    """
    return await _rerank(request, engine)


@app.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, responses=_RERANK_RESPONSES)
async def rerank_v2(request: RerankRequest, engine: Engine) -> RerankResponse:
    """Cohere v2 rerank (and vLLM's `/v2/rerank`): the same request and answer as `/v1/rerank`."""
    return await _rerank(request, engine)


async def _rerank_tei(request: TEIRerankRequest, engine: ScoringEngine) -> list[TEIRank]:
    side = request.truncation_direction.lower()
    if not request.truncate:
        stored = _resolve_for_tei(engine, request.model)
        scorer = await anyio.to_thread.run_sync(engine.registry.get, stored.model_id)
        lengths = await anyio.to_thread.run_sync(scorer.pair_lengths, request.query, request.texts)
        if max(lengths, default=0) > stored.max_length:
            raise APIError(
                413, f"Input validation error: `inputs` must have less than {stored.max_length} tokens. "
                f"Given: {max(lengths)}", "Validation", tei=True,
            )  # fmt: skip
    scored = await _score_documents(
        engine, model=request.model, queries=[request.query] * len(request.texts), documents=request.texts,
        raw=request.raw_scores,
        truncation_side=side, tei=True,
    )  # fmt: skip
    return [
        TEIRank(index=i, score=scored.scores[i], text=request.texts[i] if request.return_text else None)
        for i in _ranked(scored.scores, None)
    ]


def _resolve_for_tei(engine: ScoringEngine, model: str | None):
    try:
        return engine.registry.resolve(model)
    except UnknownModelError as exc:
        raise APIError(404, str(exc), "NotFoundError", tei=True) from exc


@app.post(
    "/rerank",
    response_model=RerankResponse | list[TEIRank],
    response_model_exclude_none=True,
    # A TEI body gets TEI's error shape, any other body vLLM's: both are documented for the codes they share.
    responses={
        **{code: {"model": ErrorResponse | TEIError} for code in _RERANK_RESPONSES},
        413: {"model": ErrorResponse | TEIError},
        422: {"model": TEIError},
    },
)
async def rerank(
    engine: Engine,
    body: Annotated[
        dict[str, Any],
        Body(description="A Jina / Cohere / vLLM rerank body, or TEI's `{query, texts, raw_scores, ...}`."),
    ],
) -> RerankResponse | list[TEIRank]:
    """Rerank in either format: a body with `texts` is a text-embeddings-inference request and gets TEI's answer (a
    bare list of `{index, score, text?}` sorted by score); a body with `documents` is handled as `/v1/rerank`."""
    if "texts" in body:
        try:
            tei_request = TEIRerankRequest.model_validate(body)
        except ValidationError as exc:
            raise _validation_error(list(exc.errors()), tei=True) from exc
        return await _rerank_tei(tei_request, engine)
    try:
        request = RerankRequest.model_validate(body)
    except ValidationError as exc:
        raise _validation_error(list(exc.errors())) from exc
    return await _rerank(request, engine)


# --- vLLM score -----------------------------------------------------------------------------------------------------


@app.post("/score", response_model=ScoreResponse, responses=_RERANK_RESPONSES)
@app.post("/v1/score", response_model=ScoreResponse, responses=_RERANK_RESPONSES, include_in_schema=False)
async def score(request: ScoreRequest, engine: Engine) -> ScoreResponse:
    """vLLM's score API: `text_1` against each `text_2` (or pairwise for two lists), scores in input order."""
    firsts = [request.text_1] if isinstance(request.text_1, str) else request.text_1
    seconds = [request.text_2] if isinstance(request.text_2, str) else request.text_2
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    if len(firsts) != len(seconds):
        message = f"text_1 has {len(firsts)} items and text_2 {len(seconds)}: give one text_1 or as many as text_2"
        raise _invalid(message, "text_1")
    max_length = request.truncate_prompt_tokens
    scored = await _score_documents(
        engine, model=request.model, queries=firsts, documents=seconds, raw=not request.use_activation,
        max_length=None if max_length in (None, -1) else max_length,
    )  # fmt: skip
    data = [ScoreData(index=i, score=s) for i, s in enumerate(scored.scores)]
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
