"""The original design's server, as the benchmark's baseline: FastAPI calling `CrossEncoder.predict` per request.

No cross-request batching, one model, no token accounting — what `rerank_server.py` of the original design did.
Run by the benchmark as `uvicorn benchmarks.baseline_server:app` with BASELINE_MODEL_DIR set.
"""

from __future__ import annotations

import os

import anyio
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import CrossEncoder

app = FastAPI()
model = CrossEncoder(os.environ["BASELINE_MODEL_DIR"], device=os.environ.get("BASELINE_DEVICE"))


class Request(BaseModel):
    query: str
    documents: list[str]
    top_n: int | None = None


@app.post("/v1/rerank")
async def rerank(request: Request) -> dict:
    pairs = [(request.query, doc) for doc in request.documents]
    scores = await anyio.to_thread.run_sync(model.predict, pairs)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: request.top_n or None]
    return {"results": [{"index": i, "relevance_score": float(scores[i])} for i in order]}
