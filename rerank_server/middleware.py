"""An ASGI middleware in front of every route, BentoML's included: API keys, the request body limit, JSON 404s.

Hand-written because BentoML has no server-side authentication.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Probes and metrics stay open for orchestrators; documentation and the status page hold no secrets.
OPEN_PATHS = frozenset({"/readyz", "/livez", "/healthz", "/metrics"})
OPEN_GET_PATHS = frozenset({"/", "/docs", "/docs.json", "/openapi.json", "/schema.json"})
OPEN_GET_PREFIXES = ("/static_content/", "/assets/")


def _is_open(method: str, path: str) -> bool:
    if path in OPEN_PATHS:
        return True
    return method in ("GET", "HEAD") and (path in OPEN_GET_PATHS or path.startswith(OPEN_GET_PREFIXES))


async def _reject(send: Send, status: int, message: str, error_type: str, headers: Sequence[tuple[bytes, bytes]] = ()):
    body = json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": status}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _json_not_found(scope: Scope, send: Send) -> Send:
    """`send`, except that BentoML's plain-text 404 for an unknown path becomes a JSON error like every other."""
    replacing = False

    async def send_json(message: Message) -> None:
        nonlocal replacing
        if message["type"] == "http.response.start" and message["status"] == 404:
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            replacing = content_type.startswith(b"text/plain")
        if not replacing:
            await send(message)
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            await _reject(send, 404, f"No route {scope['path']}: see /docs for the API", "NotFoundError")

    return send_json


class RequestGuard:
    """Requires `Authorization: Bearer <key>` when keys are configured, and refuses bodies over `max_body_bytes`."""

    def __init__(self, app: ASGIApp, api_keys: Sequence[str] = (), max_body_bytes: int = 32 * 2**20) -> None:
        self.app = app
        self.api_keys = [key.encode() for key in api_keys]
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self._guard(scope, receive, _json_not_found(scope, send))

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_keys and not _is_open(scope["method"], scope["path"]) and not self._authorized(scope):
            await _reject(
                send, 401, "Missing or invalid API key: send `Authorization: Bearer <key>`", "AuthenticationError",
                [(b"www-authenticate", b'Bearer realm="rerank"')],
            )  # fmt: skip
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _reject(send, 413, f"Request body larger than {self.max_body_bytes} bytes", "PayloadTooLargeError")
            return
        if declared is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # A chunked body has no declared size: read it up to the limit, then hand it on.
            messages: list[Message] = []
            size = 0
            while True:
                message = await receive()
                messages.append(message)
                size += len(message.get("body", b""))
                if size > self.max_body_bytes:
                    await _reject(
                        send, 413, f"Request body larger than {self.max_body_bytes} bytes", "PayloadTooLargeError"
                    )
                    return
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            replay = iter(messages)

            async def replayed() -> Message:
                return next(replay, None) or await receive()

            await self.app(scope, replayed, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        # Compare against every key so the time taken does not tell which key (or how much of one) matched.
        matches = [hmac.compare_digest(token.strip(), key) for key in self.api_keys]
        return any(matches)
