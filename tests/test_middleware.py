"""API keys and the body limit, on a bare app behind RequestGuard (the same middleware the service installs)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rerank_server.api.guard import RequestGuard


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


inner = Starlette(
    routes=[
        Route(path, echo, methods=["GET", "POST"])
        for path in ("/v1/rerank", "/score_pairs", "/readyz", "/metrics", "/")
    ]
)


def guarded(keys: tuple[str, ...] = ("key-one", "key-two"), limit: int = 1000) -> TestClient:
    return TestClient(RequestGuard(inner, api_keys=keys, max_body_bytes=limit))


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", "Bearer", "Bearer ", "Basic a2V5LW9uZQ==", "key-one", "Bearer key-one-x", "Bearer KEY-ONE"],
)
def test_requests_without_a_valid_key_are_401(header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for path in ("/v1/rerank", "/score_pairs"):
        response = guarded().post(path, json={}, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["type"] == "AuthenticationError"


@pytest.mark.parametrize("header", ["Bearer key-one", "Bearer key-two", "bearer key-two"])
def test_any_configured_key_is_accepted(header: str) -> None:
    assert guarded().post("/v1/rerank", json={}, headers={"Authorization": header}).status_code == 200


def test_probes_metrics_and_status_stay_open() -> None:
    client = guarded()
    for path in ("/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path
    assert client.get("/", headers={"accept": "text/html"}).status_code == 200  # the page a browser gets
    assert client.post("/", json={}).status_code == 401  # only reading the status page is open
    # The status document lists the models, as /v1/models does: it needs the key too (#23.14).
    assert client.get("/").status_code == 401
    assert client.get("/", headers={"authorization": "Bearer key-one"}).status_code == 200


def test_without_keys_everything_is_open() -> None:
    assert guarded(keys=()).post("/v1/rerank", json={}).status_code == 200


def test_bodies_over_the_limit_are_413_declared_or_chunked() -> None:
    client = guarded(keys=(), limit=1000)
    assert client.post("/v1/rerank", content=b"x" * 1000).json() == {"bytes": 1000}
    declared = client.post("/v1/rerank", content=b"x" * 1001)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == 413

    def chunks(total: int):
        for _ in range(total // 100):
            yield b"y" * 100

    assert client.post("/v1/rerank", content=chunks(1000)).json() == {"bytes": 1000}
    assert client.post("/v1/rerank", content=chunks(5000)).status_code == 413


async def _call_guard(scope_headers: list[tuple[bytes, bytes]], chunks: list[bytes], limit: int = 1000):
    """The guard in front of the echo app, fed `chunks` as the ASGI server would: the status and body it answers."""
    scope = {"type": "http", "method": "POST", "path": "/v1/rerank", "headers": scope_headers, "query_string": b""}
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await RequestGuard(inner, max_body_bytes=limit)(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_the_limit_counts_the_bytes_that_arrive_not_the_declared_length() -> None:
    import asyncio

    # A body that declares 5 bytes and sends 3,000 (as h11 delivers a chunked body whatever Content-Length says).
    status, body = asyncio.run(_call_guard([(b"content-length", b"5")], [b"x" * 500] * 6))
    assert status == 413 and b"larger than 1000 bytes" in body
    status, body = asyncio.run(_call_guard([(b"content-length", b"5")], [b"x" * 5]))
    assert (status, body) == (200, b'{"bytes":5}')


def test_a_body_with_two_framings_is_refused() -> None:
    import asyncio

    headers = [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")]
    status, body = asyncio.run(_call_guard(headers, [b"x" * 50]))
    assert status == 400 and b"both Content-Length and Transfer-Encoding" in body
