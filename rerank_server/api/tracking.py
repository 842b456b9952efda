"""Request ids, access log lines and per-route request metrics, for every API call (BentoML's own routes included).

An ASGI middleware rather than a FastAPI one so that it also sees BentoML's `/score_pairs` and the 401 / 413 answers
of the request guard, which it wraps.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rerank_server.api.guard import PROBE_PATHS
from rerank_server.metrics import get_metrics, worker_label

logger = logging.getLogger("bentoml")

# Routes counted under their own name; anything else is "other", so that label values stay bounded.
TRACKED_ROUTES = frozenset(
    {"/v1/rerank", "/v2/rerank", "/rerank", "/score", "/v1/score", "/score_pairs", "/v1/models", "/"}
)
# Probes and scrapes would drown the access log and the request metrics (other methods on them are refused, and
# tracked like any refusal).
UNTRACKED_PATHS = PROBE_PATHS
# An incoming id is reused only when it is short and plain, so it cannot forge log lines or bloat labels.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# Characters that would let a client-controlled string (a path, a model name) start a new log line or hide text:
# C0/C1 controls, DEL, and Unicode's line and paragraph separators.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str, limit: int = 512) -> str:
    """`text` safe for one log line: control characters escaped (`\\n`, `\\x1b`), at most `limit` characters."""
    escaped = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


@dataclass
class RequestContext:
    """What a route tells the middleware about the request it served."""

    request_id: str
    model: str = ""
    pairs: int = field(default=0)
    # A listwise model's passes over the request's list, sent as X-Rerank-Listwise-Passes (more than 1: fused).
    listwise_passes: int | None = None
    # Run once the answer is sent (or the request failed): releases what the request held while it was served.
    cleanups: list[Callable[[], None]] = field(default_factory=list)


_current: ContextVar[RequestContext | None] = ContextVar("rerank_request", default=None)


def _new_id(path: str) -> str:
    # vLLM's ids: "score-…" for its score API, "rerank-…" for rerank.
    return f"{'score' if path.endswith('score') else 'rerank'}-{uuid.uuid4().hex}"


def current_request() -> RequestContext:
    """The context of the request being served (a fresh one when called outside the middleware)."""
    context = _current.get()
    if context is None:
        context = RequestContext(_new_id(""))
        _current.set(context)
    return context


class RequestTracking:
    """Gives each request an id (reusing a client's `X-Request-ID`), returns it as `X-Request-ID`, writes one access
    log line per request, and counts requests by route, model and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or (path in UNTRACKED_PATHS and scope["method"] in ("GET", "HEAD")):
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1").strip()
        context = RequestContext(incoming if _CLIENT_ID.fullmatch(incoming) else _new_id(path))
        token = _current.set(context)
        status = 500  # what the client sees if the app fails before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", context.request_id.encode()))
                if context.listwise_passes is not None:
                    headers.append((b"x-rerank-listwise-passes", str(context.listwise_passes).encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)
            for cleanup in context.cleanups:
                cleanup()
            elapsed = time.perf_counter() - started
            route = path if path in TRACKED_ROUTES else "other"
            metrics = get_metrics()
            metrics.requests.labels(route, context.model, str(status)).inc()
            metrics.request_duration.labels(route).observe(elapsed)
            # Only what identifies the request: never headers, so API keys stay out of the log.
            logger.info(
                "request_id=%s %s %s status=%d model=%s pairs=%d %.1fms worker=%s",
                context.request_id, printable(scope["method"], 16), printable(path), status,
                printable(context.model or "-", 200), context.pairs, elapsed * 1e3, worker_label(),
            )  # fmt: skip
