"""The HTTP face of the server: one FastAPI app, mounted by `service.py`, with its routes (`rerank.py`, `info.py`),
the browser pages (`playground.py`), Swagger UI served from local files, and every failure answered in the client's
error format.

The routes know nothing of BentoML or of models: they parse a format, call the engine (the service's in production,
one of their own in unit tests), and write the format's answer. Statuses come from `api/errors.py`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rerank_server.api import info, playground, rerank, vendor_info
from rerank_server.api.errors import ErrorFormat, HTTPError, describe, looks_like_tei
from rerank_server.api.rerank import CLIENT_CLOSED_REQUEST, ClientGone
from rerank_server.api.tracking import current_request, printable

logger = logging.getLogger("bentoml")


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
app.mount(playground.ASSETS_PATH, playground.assets(), name="playground-assets")
app.include_router(rerank.router)
app.include_router(info.router)
app.include_router(vendor_info.router)
app.include_router(playground.router)


@app.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    """Swagger UI of the rerank routes, with every asset served by this server."""
    page = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - docs",
        swagger_js_url="/docs-assets/swagger-ui-bundle.js", swagger_css_url="/docs-assets/swagger-ui.css",
        swagger_favicon_url="/docs-assets/favicon.png",
    )  # fmt: skip
    page.headers.update(playground.DOCS_HEADERS)
    return page


def _error_format(request: Request) -> ErrorFormat:
    return getattr(request.state, "error_format", "vllm")


@app.exception_handler(HTTPError)
async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
    return JSONResponse(exc.body(_error_format(request)), status_code=exc.status, headers=exc.headers)


class _UnexpectedErrors:
    """An exception no handler knows (a bug, a failing device) answered with our 500 body, and ended here.

    Starlette's handler for `Exception` answers, then raises the exception again to the server: uvicorn logs it
    twice more ("Exception in ASGI application") and closes the client's keep-alive connection, so that the client's
    next pooled request fails with "connection reset". Here it is logged once, with the request id, and kept.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started:
                raise  # part of an answer is out: only the server can end it
            request = Request(scope, receive)
            logger.error(
                "Internal error on %s %s, request_id=%s: %s: %s", printable(request.method, 16),
                printable(request.url.path), current_request().request_id, type(exc).__name__, printable(str(exc)),
            )  # fmt: skip
            logger.debug("The internal error's traceback", exc_info=exc)
            error = HTTPError(500, f"Internal error: {type(exc).__name__}", "InternalServerError", "Backend")
            response = await _http_error(request, error)
            await response(scope, receive, send)


app.add_middleware(_UnexpectedErrors)


@app.exception_handler(RequestValidationError)
async def _request_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own answer would be 422 with a list of details; clients of vLLM and TEI expect their error shapes.
    # A body that is not even JSON reaches no route: on `/rerank` its text tells which format it was meant to be.
    if isinstance(exc.body, str | bytes) and looks_like_tei(request.url.path, exc.body):
        request.state.error_format = "tei"
    # A score body is shown as one: a vLLM score client shown the rerank body would not know what to change.
    example = rerank.SCORE_EXAMPLE if request.url.path in ("/score", "/v1/score") else None
    return await _http_error(request, describe(list(exc.errors()), _error_format(request), example))


@app.exception_handler(StarletteHTTPException)
async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_ = {404: "NotFoundError", 405: "MethodNotAllowedError"}.get(exc.status_code, "Error")
    return await _http_error(request, HTTPError(exc.status_code, str(exc.detail), type_, type_))


@app.exception_handler(ClientGone)
async def _client_gone(request: Request, exc: ClientGone) -> Response:
    logger.info("The client of %s left before the answer; its queued work was dropped", request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)
