"""What the routes are served by: the running BentoML service's engine (unit tests override `current_engine`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from rerank_server.engine.engine import RerankEngine


def current_engine() -> RerankEngine:
    """The running BentoML service's engine (overridden in unit tests)."""
    import bentoml

    return bentoml.get_current_service().engine


Engine = Annotated[RerankEngine, Depends(current_engine)]
