"""A loopback stand-in for a Hugging Face Hub mirror (HF_ENDPOINT), serving model folders from disk.

It answers the calls huggingface_hub makes for `model_info` and `snapshot_download`: repository info, the recursive
file tree, and HEAD/GET on `resolve` URLs, so the real download code of import_models.py runs offline.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from tests.conftest import free_port


def _commit(folder: Path) -> str:
    digest = hashlib.sha1()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + str(path.stat().st_size).encode())
    return digest.hexdigest()


def _etag(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_app(repos: dict[str, Path], requests: list[str]) -> Starlette:
    def folder(request: Request) -> Path:
        repo = f"{request.path_params['org']}/{request.path_params['name']}"
        if repo not in repos:
            raise LookupError(repo)
        return repos[repo]

    async def info(request: Request) -> Response:
        requests.append(request.url.path)
        try:
            root = folder(request)
        except LookupError:
            return JSONResponse({"error": "Repository not found"}, 404, headers={"X-Error-Code": "RepoNotFound"})
        files = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()]
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        return JSONResponse({"id": repo_id, "modelId": repo_id, "sha": _commit(root), "private": False,
                             "siblings": [{"rfilename": f} for f in files]})  # fmt: skip

    async def tree(request: Request) -> Response:
        root = folder(request)
        return JSONResponse(
            [
                {"type": "file", "path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "oid": _etag(p)}
                for p in sorted(root.rglob("*"))
                if p.is_file()
            ]
        )

    async def resolve(request: Request) -> Response:
        requests.append(request.url.path)
        root = folder(request)
        path = root / request.path_params["file"]
        headers = {"X-Repo-Commit": _commit(root), "ETag": f'"{_etag(path)}"'}
        if request.method == "HEAD":
            return Response(headers={**headers, "Content-Length": str(path.stat().st_size)})
        return FileResponse(path, headers=headers)

    return Starlette(
        routes=[
            Route("/api/models/{org}/{name}", info),
            Route("/api/models/{org}/{name}/revision/{revision}", info),
            Route("/api/models/{org}/{name}/tree/{revision}", tree),
            Route("/api/models/{org}/{name}/tree/{revision}/{path:path}", tree),
            Route("/{org}/{name}/resolve/{revision}/{file:path}", resolve, methods=["GET", "HEAD"]),
        ]
    )


@contextmanager
def fake_hub(repos: dict[str, Path]) -> Iterator[tuple[str, list[str]]]:
    """Serve `repos` ({"org/name": folder}) on a loopback port; yields (endpoint URL, request paths seen)."""
    requests: list[str] = []
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(repos, requests), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", requests
    finally:
        server.should_exit = True
        thread.join(timeout=10)
