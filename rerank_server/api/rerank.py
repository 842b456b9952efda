"""Rerank and score routes: vLLM / Jina / Cohere (`/v1/rerank`, `/v2/rerank`), TEI (`/rerank` with `texts`), the
path Ollama clients call (`/api/rerank`), and vLLM's `/score`. Each parses its format, asks the engine, and writes
its format's answer; a client that disconnects cancels its request's queued work."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, Body, Request
from pydantic import ValidationError

from rerank_server.api import multimodal
from rerank_server.api.dependencies import Engine
from rerank_server.api.errors import ErrorFormat, describe, from_failure, invalid
from rerank_server.api.multimodal import Parsed
from rerank_server.api.tracking import current_request
from rerank_server.api.wire import (
    SCORE_SIDES,
    ErrorResponse,
    RerankRequest,
    RerankResponse,
    RerankResult,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
    ScoreSide,
    TEIError,
    TEIRank,
    TEIRerankRequest,
    Usage,
)
from rerank_server.engine.engine import RerankEngine
from rerank_server.engine.scores import DocumentScores
from rerank_server.recipes import TextOptions

T = TypeVar("T")
# Status written to the access log for a request whose client left before the answer (nginx's convention).
CLIENT_CLOSED_REQUEST = 499

router = APIRouter()


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


def check_count(count: int, field: str, engine: RerankEngine, error_format: ErrorFormat = "vllm") -> None:
    """Refuse an empty list, or one longer than RERANK_MAX_DOCUMENTS, naming the field."""
    if not count:
        raise invalid(f"`{field}` must not be empty", field, error_format)
    limit = engine.max_documents
    if count > limit:
        raise invalid(f"`{field}` has {count} items, over the limit of {limit} per request", field, error_format)


async def _score(
    request: Request,
    engine: RerankEngine,
    model: str | None,
    queries: Sequence[Parsed],
    documents: Sequence[Parsed],
    options: TextOptions,
    *,
    max_chunks: int | None = None,
    error_format: ErrorFormat = "vllm",
    images_field: str = "documents",
) -> DocumentScores:
    """The engine's scores for each (query, document) pair, one query standing for every document; its failures as
    the format's HTTP errors. Image references are fetched or decoded only once the model is known to take images,
    and, with the scoring, cancelled when the client leaves."""
    context = current_request()
    context.pairs = len(documents)

    async def resolved_and_scored() -> DocumentScores:
        firsts, seconds = list(queries), list(documents)
        files = None
        try:
            if (field := multimodal.first_image([firsts, seconds])) is not None:
                # An unknown or text-only model is refused before any URL is fetched.
                await anyio.to_thread.run_sync(engine.check_takes_images, model, field)
                # The files are reserved before they are read (429 beyond RERANK_MAX_IMAGE_MEMORY_MB), and held
                # until the request ends: its items hold them.
                files = engine.image_memory.reserve(
                    multimodal.file_bytes([firsts, seconds], engine.settings.max_image_bytes)
                )
                firsts, seconds = await multimodal.resolve([firsts, seconds], engine.settings, images_field)
                files.shrink(multimodal.read_bytes([firsts, seconds]))
            if len(firsts) == 1:
                firsts = firsts * len(seconds)
            held = files.size if files else 0
            return await engine.score(
                model, firsts, seconds, options, max_chunks=max_chunks, images_held=held, documents_field=images_field
            )
        finally:
            if files is not None:
                files()

    try:
        scored = await _unless_client_leaves(request, resolved_and_scored())
    except ClientGone:
        raise
    except Exception as exc:
        error = from_failure(exc, error_format)
        if error is None:
            raise
        raise error from exc
    context.model = scored.model_id
    context.listwise_passes = scored.passes
    return scored


# --- Rerank: vLLM / Jina / Cohere ------------------------------------------------------------------------------------


async def _rerank(http: Request, request: RerankRequest, engine: RerankEngine) -> RerankResponse:
    parsed = multimodal.parse_many(request.documents, "documents")
    check_count(len(parsed), "documents", engine)
    query = multimodal.parse_one(request.query, "query")
    options = TextOptions(
        max_length=request.truncate_prompt_tokens, max_document_tokens=request.max_tokens_per_doc,
        instruction=request.instruction,
    )  # fmt: skip
    scored = await _score(http, engine, request.model, [query], parsed, options, max_chunks=request.max_chunks_per_doc)
    values = scored.scores if request.use_activation else scored.logits
    sent = multimodal.echoes(request.documents) if request.return_documents else None
    results = [
        RerankResult(index=i, relevance_score=values[i], document=sent[i] if sent else None)
        for i in scored.ranking(request.top_n)
    ]
    usage = Usage(prompt_tokens=scored.tokens, total_tokens=scored.tokens)
    return RerankResponse(id=current_request().request_id, model=scored.model_id, usage=usage, results=results)


RERANK_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse},
    401: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    429: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
    504: {"model": ErrorResponse},
}


@router.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True, responses=RERANK_RESPONSES)
async def rerank_v1(http: Request, request: RerankRequest, engine: Engine) -> RerankResponse:
    """Rank `documents` by relevance to `query`, best first (vLLM, Jina and Cohere v1 request and answer).

    `relevance_score` is the sigmoid of the model's logit, as `sentence_transformers.CrossEncoder.predict` returns it;
    for LLM rerankers their published probability of "yes"; for ColBERT MaxSim over the query length; for a model
    with a calibration the calibrated probability (`GET /v1/models` says which). `use_activation: false` returns the
    raw score, uncalibrated.
    `usage` counts the tokens the model saw, after truncation, prompt templates included.
    """
    return await _rerank(http, request, engine)


@router.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, responses=RERANK_RESPONSES)
async def rerank_v2(http: Request, request: RerankRequest, engine: Engine) -> RerankResponse:
    """Cohere v2 rerank (and vLLM's `/v2/rerank`): the same request and answer as `/v1/rerank`."""
    return await _rerank(http, request, engine)


@router.post("/api/rerank", response_model=RerankResponse, response_model_exclude_none=True, responses=RERANK_RESPONSES)
async def rerank_ollama(http: Request, request: RerankRequest, engine: Engine) -> RerankResponse:
    """The rerank path of Ollama clients (Dify's Ollama plugin, LangChain's `OllamaRerank`), which POST
    `{model, query, documents, top_n, return_documents}` there although Ollama itself never shipped it: the same
    request and answer as `/v1/rerank`, sorted best first (the Dify plugin keeps `results[:top_n]` as they come)."""
    return await _rerank(http, request, engine)


async def _rerank_tei(http: Request, request: TEIRerankRequest, engine: RerankEngine) -> list[TEIRank]:
    check_count(len(request.texts), "texts", engine, "tei")
    options = TextOptions(
        side="left" if request.truncation_direction.lower() == "left" else "right", instruction=request.instruction,
        truncate=request.truncate,
    )  # fmt: skip
    scored = await _score(
        http, engine, request.model, [request.query], request.texts, options, error_format="tei", images_field="texts"
    )
    values = scored.logits if request.raw_scores else scored.scores
    return [
        TEIRank(index=i, score=values[i], text=request.texts[i] if request.return_text else None)
        for i in scored.ranking()
    ]


@router.post(
    "/rerank",
    response_model=RerankResponse | list[TEIRank],
    response_model_exclude_none=True,
    # A TEI body gets TEI's error shape, any other body vLLM's: both are documented for the codes they share.
    responses={
        **{code: {"model": ErrorResponse | TEIError} for code in RERANK_RESPONSES},
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


SCORE_EXAMPLE = '{"queries": "...", "documents": ["...", "..."]}'


def _score_sides(request: ScoreRequest) -> tuple[tuple[str, ScoreSide], tuple[str, ScoreSide]]:
    """The request's two sides, or a 400 that says how `/score` names them (not the rerank body)."""
    sides = request.sides()
    if sides is not None:
        return sides
    names = "`queries` and `documents` (or `queries` and `items`, `data_1` and `data_2`, `text_1` and `text_2`)"
    given = next((pair for pair in SCORE_SIDES if any(getattr(request, name) is not None for name in pair)), None)
    if given is None:
        raise invalid(f"`/score` takes two sides, {names}; send {SCORE_EXAMPLE}", "queries")
    sent = [name for pair in SCORE_SIDES for name in pair if getattr(request, name) is not None]
    missing = next(name for name in given if getattr(request, name) is None)
    message = f"`{missing}` is required beside `{sent[0]}`: `/score` takes two sides, {names}; send {SCORE_EXAMPLE}"
    raise invalid(message, missing)


@router.post("/score", response_model=ScoreResponse, responses=RERANK_RESPONSES)
@router.post("/v1/score", response_model=ScoreResponse, responses=RERANK_RESPONSES, include_in_schema=False)
async def score(http: Request, request: ScoreRequest, engine: Engine) -> ScoreResponse:
    """vLLM's score API: the first side against each item of the second (or pairwise for two lists of the same
    length), scores in input order. The sides are `queries` + `documents`, `queries` + `items`, `data_1` + `data_2` or
    `text_1` + `text_2`, each a string, an item or a list. Either side may hold images for a multimodal reranker
    (`{text?, image?}` objects or vLLM's `{content: [parts]}`)."""
    (first_name, first), (second_name, second) = _score_sides(request)
    firsts = multimodal.parse_many(first, first_name)
    seconds = multimodal.parse_many(second, second_name)
    check_count(len(firsts), first_name, engine)
    check_count(len(seconds), second_name, engine)
    if len(firsts) != 1 and len(firsts) != len(seconds):
        message = (
            f"`{first_name}` has {len(firsts)} items and `{second_name}` {len(seconds)}: give one of `{first_name}` "
            f"(scored against each of `{second_name}`) or as many as `{second_name}` (scored pairwise)"
        )
        raise invalid(message, first_name)
    # One query against N documents is one list for a listwise model (as vLLM scores it); pairwise, each pair alone.
    options = TextOptions(
        max_length=request.truncate_prompt_tokens, instruction=request.instruction, one_list=len(firsts) == 1
    )
    scored = await _score(http, engine, request.model, firsts, seconds, options, images_field=second_name)
    values = scored.scores if request.use_activation else scored.logits
    data = [ScoreData(index=i, score=s) for i, s in enumerate(values)]
    usage = Usage(prompt_tokens=scored.tokens, total_tokens=scored.tokens)
    return ScoreResponse(id=current_request().request_id, model=scored.model_id, data=data, usage=usage)
