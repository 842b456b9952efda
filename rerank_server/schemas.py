"""Every request and response body the server speaks, in one module (as Infinity keeps its schemas).

The HTTP shapes follow vLLM's `/v1/rerank` (which Jina and Cohere clients also read); the batch shapes are what
BentoML's adaptive batcher merges across requests.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# --- The batchable BentoML API: one item per (query, document) pair -------------------------------------------------


class ScorePair(BaseModel):
    """One (query, document) pair to score with one model; the unit BentoML's batcher counts and merges."""

    model: str = Field(description="Public model id, e.g. BAAI/bge-reranker-base.")
    query: str
    document: str


class PairScore(BaseModel):
    """The score of one pair, or why it could not be scored (so one bad pair never fails its batch neighbours)."""

    score: float | None = Field(None, description="Sigmoid of the logit: the relevance score, 0..1.")
    logit: float | None = Field(None, description="The model's raw output.")
    tokens: int = Field(0, description="Tokens the model saw for this pair, after truncation.")
    error: str | None = None


# --- POST /v1/rerank ------------------------------------------------------------------------------------------------


class RerankRequest(BaseModel):
    """A rerank request as vLLM, Jina and Cohere clients send it; keys we do not use are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Model id or alias; the server's default model when absent.")
    query: str
    documents: list[str] = Field(description="Texts to rank against the query.")
    top_n: int | None = Field(None, ge=0, description="Return only the best n; absent, null or 0 returns all.")
    return_documents: bool = Field(True, description="Echo each document's text in the results.")


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float
    document: RerankDocument | None = None


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    """vLLM's rerank answer; results are sorted by relevance_score, best first."""

    id: str = Field(default_factory=lambda: f"rerank-{uuid.uuid4().hex}")
    model: str
    usage: Usage
    results: list[RerankResult]


# --- GET /v1/models and GET / ---------------------------------------------------------------------------------------


class ModelCard(BaseModel):
    """One stored reranker, OpenAI-style, with what a rerank client needs to know about it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    max_length: int = Field(description="Tokens per (query, document) pair; longer pairs are truncated.")
    loaded: bool
    default: bool = False
    tag: str = Field(description="The BentoML model store tag it is served from.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ServerStatus(BaseModel):
    """The status document of the original design, for curl and health checks."""

    status: Literal["running"] = "running"
    loaded_models: list[str]
    default_model: str
    supported_models: list[str]


# --- Errors ---------------------------------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """vLLM's (and OpenAI's) error body."""

    error: ErrorInfo


def unix_time(seconds: float | None = None) -> int:
    return int(time.time() if seconds is None else seconds)
