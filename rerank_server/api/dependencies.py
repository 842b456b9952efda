"""What the routes are served by: the running BentoML service's engine, and whether the service is healthy (unit
tests override `current_engine` and `current_health`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends

from rerank_server.engine.engine import RerankEngine


def current_engine() -> RerankEngine:
    """The running BentoML service's engine (overridden in unit tests)."""
    import bentoml

    return bentoml.get_current_service().engine


Engine = Annotated[RerankEngine, Depends(current_engine)]


def current_health() -> Callable[[], bool]:
    """Whether the running service can serve: every worker ready (`/readyz`) and the model thread alive (`/livez`).
    Blocking: readiness reads the workers' marks."""
    import bentoml

    service = bentoml.get_current_service()
    return lambda: service.__is_ready__() and service.__is_alive__()


Health = Annotated[Callable[[], bool], Depends(current_health)]
