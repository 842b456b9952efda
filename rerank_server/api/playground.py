"""The pages a browser gets: the playground at `/playground`, the landing page at `/`, and BentoML's own UI, moved to
`/bentoml` so that `/` can link to all three.

Every asset of our pages ships in this package (hosts are often air-gapped, and a query typed into the page must reach
no third party). A Content-Security-Policy lets them load and call nothing but this server, run no inline script and
turn no string into markup (Trusted Types), so that even a mistake in the page cannot run a document as code.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from rerank_server.api.errors import HTTPError

STATIC = Path(__file__).parent / "static"
# Scripts, styles and the icon; the pages stay outside it, so that each is served at one address, with its headers.
ASSETS = STATIC / "playground"
ASSETS_PATH = "/playground-assets"

PAGE_CSP = "; ".join(
    [
        "default-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        # The form is sent by script only: without it, pressing Enter must not put the query into a URL.
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
# Old browsers know X-Frame-Options only: no page of ours may be framed by another site (clickjacking).
NO_FRAMING = {"X-Frame-Options": "DENY"}
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    **NO_FRAMING,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on each load (a 304 when unchanged), so a server upgrade never meets a stale script.
    "Cache-Control": "no-cache",
}
# BentoML's page carries a Google Tag Manager snippet (an inline script that loads a third-party one) and Swagger UI
# may ask an outside validator for a badge: both are refused, its own scripts and styles from this server still run.
BENTOML_UI_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "object-src 'none'",
        "frame-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
# Swagger UI at /docs runs an inline script, which a full policy would refuse: it is kept from being framed only.
DOCS_HEADERS = {"Content-Security-Policy": "frame-ancestors 'none'", **NO_FRAMING}

router = APIRouter(include_in_schema=False)


class _Assets(StaticFiles):
    """The playground's scripts, styles and icon, with the pages' security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


def assets() -> StaticFiles:
    """The app to mount at ASSETS_PATH."""
    return _Assets(directory=ASSETS)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/playground")
async def playground() -> FileResponse:
    """Try rerankers in the browser: a query, documents, one or two models side by side, with their rankings."""
    return _page("playground.html")


def home_page() -> FileResponse:
    """What a browser gets at `/`: links to the playground, the API docs and BentoML's UI."""
    page = _page("home.html")
    page.headers["Vary"] = "Accept"  # `/` answers JSON to programs: a cache must keep the two apart
    return page


def _bentoml_index_page() -> Path | None:
    # BentoML's UI page, from its package: our status route at `/` takes the path from BentoML's own index, so the
    # page is served here instead (a private module: the page has no public accessor). Its assets are addressed as
    # `./static_content/…`, which resolves to BentoML's mount from a path one segment deep.
    import _bentoml_impl.server as bentoml_server

    page = Path(bentoml_server.__file__).parent / "main-openapi.html"
    return page if page.is_file() else None


@router.get("/bentoml", response_model=None)
async def bentoml_ui() -> Response:
    """BentoML's own UI (its batchable `/score_pairs` API), with third-party loads refused."""
    page = _bentoml_index_page()
    if page is None:
        raise HTTPError(404, "BentoML's UI page is not in this BentoML version", "NotFoundError", "NotFound")
    headers = {"Content-Security-Policy": BENTOML_UI_CSP, **NO_FRAMING}
    return FileResponse(page, media_type="text/html; charset=utf-8", headers=headers)
