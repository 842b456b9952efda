"""An ASGI middleware in front of every route, BentoML's included: API keys, the request body limit, JSON errors.

Hand-written because BentoML has no server-side authentication, and because the body limit must count the bytes that
actually arrive: a request may declare one length and send another (or declare both a length and chunked framing,
which h11 reads as chunked), so the guard reads each body itself, up to the limit, before any route sees it.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rerank_server.api.errors import ErrorFormat, HTTPError, looks_like_tei

# Probes and metrics stay open for orchestrators, for GET and HEAD only: any other method is refused before its body
# is read, so that a caller without a key cannot make the server buffer bodies on them.
PROBE_PATHS = frozenset({"/readyz", "/livez", "/healthz", "/health", "/metrics"})
# Documentation and pages for browsers hold no secrets (the playground asks for a key itself, and sends it with the
# API calls it makes). The status document at `/` lists the models, as `/v1/models` does, so it needs a key like
# `/v1/models` when keys are set; the page a browser gets at `/` does not.
OPEN_GET_PATHS = frozenset({"/docs", "/docs.json", "/openapi.json", "/schema.json", "/playground", "/bentoml"})
# What TEI's and Xinference's clients ask before they send a key (TEI's is as open as its /health; Xinference's says
# whether a key is needed at all).
OPEN_GET_PATHS |= {"/info", "/v1/cluster/auth"}
OPEN_GET_PREFIXES = ("/static_content/", "/assets/", "/docs-assets/", "/playground-assets/")
_READ_METHODS = frozenset({"GET", "HEAD"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# How much of a refused body is read to tell a TEI request from a vLLM one (a refusal answers in the client's format).
_SNIFF_BYTES = 65536
# A `\uXXXX` JSON escape of a UTF-16 surrogate (D800-DFFF).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def asks_for_html(accept: Iterable[str]) -> bool:
    """Whether a request's Accept headers — every one of them — ask for a page. The guard and the route at `/` decide
    with this alike, so that two Accept headers cannot pass the guard as a browser and reach the model list."""
    return any("text/html" in value for value in accept)


def _is_open(method: str, path: str, scope: Scope) -> bool:
    if method not in _READ_METHODS:
        return False
    if path in PROBE_PATHS or path in OPEN_GET_PATHS or path.startswith(OPEN_GET_PREFIXES):
        return True
    accept = (value.decode("latin-1") for name, value in scope["headers"] if name.lower() == b"accept")
    return path == "/" and asks_for_html(accept)


async def _reject(send: Send, error: HTTPError, error_format: ErrorFormat = "vllm") -> None:
    import json

    body = json.dumps(error.body(error_format)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _lone_surrogates_replaced(body: bytes) -> bytes:
    """JSON whose unpaired surrogate escapes (`"\\ud800"`: legal JSON, not Unicode) read as U+FFFD.

    BentoML parses `/score_pairs` bodies itself and refuses them; the rerank routes replace them (wire.py).
    """
    escapes = [m for m in _SURROGATE_ESCAPE.finditer(body) if _unescaped(body, m.start())]
    out, last, i = bytearray(), 0, 0
    while i < len(escapes):
        escape, following = escapes[i], escapes[i + 1] if i + 1 < len(escapes) else None
        is_high = escape.group()[3:4].lower() in b"89ab"
        if is_high and following and following.start() == escape.end() and following.group()[3:4].lower() in b"cdef":
            i += 2  # a high and a low surrogate: one proper character
            continue
        out += body[last : escape.start()] + b"\\ufffd"
        last, i = escape.end(), i + 1
    return bytes(out + body[last:])


def _unescaped(body: bytes, start: int) -> bool:
    """Whether the backslash at `start` begins an escape (an even number of backslashes stands before it)."""
    before = start
    while before > 0 and body[before - 1] == 0x5C:
        before -= 1
    return (start - before) % 2 == 0


def _json_not_found(scope: Scope, send: Send) -> Send:
    """`send`, except that BentoML's plain-text 404 for an unknown path becomes a JSON error like every other, and
    BentoML's 429 (from `/score_pairs`) tells when to retry, as the rerank routes' does."""
    replacing = False

    async def send_json(message: Message) -> None:
        nonlocal replacing
        if message["type"] == "http.response.start":
            headers = message.get("headers", [])
            if message["status"] == 404:
                replacing = dict(headers).get(b"content-type", b"").startswith(b"text/plain")
            if message["status"] == 429 and b"retry-after" not in dict(headers):
                message = {**message, "headers": [*headers, (b"retry-after", b"1")]}
        if not replacing:
            await send(message)
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            message = f"No route {scope['path']}: see /docs for the API"
            await _reject(send, HTTPError(404, message, "NotFoundError", "NotFound"))

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
        headers = dict(scope["headers"])
        path, method = scope["path"], scope["method"]
        if path in PROBE_PATHS and method not in _READ_METHODS:
            error = HTTPError(
                405, f"{path} answers GET and HEAD only", "MethodNotAllowedError", "MethodNotAllowed",
                headers={"Allow": "GET, HEAD", "Connection": "close"},
            )  # fmt: skip
            await _reject(send, error)  # at once, the body unread: the connection closes after the answer
            return
        if b"content-length" in headers and b"transfer-encoding" in headers:
            # Two framings for one body: proxies and servers may each read a different body (request smuggling).
            message = "The request declares both Content-Length and Transfer-Encoding; send one of them"
            await _reject(send, HTTPError(400, message, "BadRequestError", "Validation"), "vllm")
            return
        if self.api_keys and not _is_open(method, path, scope) and not self._authorized(headers):
            start, _ = await self._read(receive, _SNIFF_BYTES)
            error = HTTPError(
                401, "Missing or invalid API key: send `Authorization: Bearer <key>`", "AuthenticationError",
                "Unauthorized", headers={"WWW-Authenticate": 'Bearer realm="rerank"'},
            )  # fmt: skip
            await _reject(send, error, "tei" if looks_like_tei(path, start) else "vllm")
            return
        if method not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        too_large = declared.isdigit() and int(declared) > self.max_body_bytes
        body, more = (b"", True) if too_large else await self._read(receive, self.max_body_bytes)
        if too_large or more:
            start = body[:_SNIFF_BYTES] if body else (await self._read(receive, _SNIFF_BYTES))[0]
            error = HTTPError(
                413, f"Request body larger than {self.max_body_bytes} bytes (RERANK_MAX_BODY_BYTES)",
                "PayloadTooLargeError", "Validation", headers={"Connection": "close"},
            )  # fmt: skip
            await _reject(send, error, "tei" if looks_like_tei(path, start) else "vllm")
            return
        if path == "/score_pairs" and b"\\u" in body:
            body = _lone_surrogates_replaced(body)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect

        await self.app(scope, replay, send)

    @staticmethod
    async def _read(receive: Receive, limit: int) -> tuple[bytes, bool]:
        """Up to `limit` bytes of the body, counted as they arrive; whether more was sent beyond them."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), False
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > limit:
                return b"".join(chunks)[:limit], True
            if not message.get("more_body"):
                return b"".join(chunks), False

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        # Compare against every key so the time taken does not tell which key (or how much of one) matched.
        matches = [hmac.compare_digest(token.strip(), key) for key in self.api_keys]
        return any(matches)
