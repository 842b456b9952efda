"""What other servers' clients ask before they rerank: text-embeddings-inference's `GET /info` (Dify's TEI plugin
reads the model type from it before it saves a model), and Xinference's `GET /v1/models/{uid}` and
`GET /v1/cluster/auth` (xinference-client's `get_model`, MaxKB's and Dify's Xinference providers).

`GET /v1/models/{id}` is OpenAI's "retrieve model" too: the same card as in `/v1/models`, with Xinference's fields.
"""

from __future__ import annotations

import anyio
import bentoml
from fastapi import APIRouter

from rerank_server.api.dependencies import Engine
from rerank_server.api.errors import from_failure
from rerank_server.api.info import _card as card  # the same card as in /v1/models
from rerank_server.api.wire import ErrorResponse, TEIError
from rerank_server.api.wire_info import ClusterAuth, ModelDescription, TEIInfo, TEIModelType, TEIReranker
from rerank_server.engine.scores import ServedModel
from rerank_server.errors import UnknownModelError

router = APIRouter()


async def _served(engine: Engine, name: str | None) -> ServedModel:
    try:
        return await anyio.to_thread.run_sync(engine.served_model, name)
    except UnknownModelError as exc:
        error = from_failure(exc, "vllm")
        assert error is not None
        raise error from exc


@router.get(
    "/v1/models/{model:path}",
    response_model=ModelDescription,
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
async def describe_model(model: str, engine: Engine) -> ModelDescription:
    """One stored reranker, by any name a request's `model` takes (full id, short name, alias): OpenAI's model
    object with `max_length`, `loaded`, `recipe` and `backend`, and Xinference's `model_type: "rerank"`."""
    served = await _served(engine, model)
    model_id = served.stored.model_id
    return ModelDescription(**card(served).model_dump(), model_name=model_id.rsplit("/", 1)[-1], model_uid=model_id)


@router.get("/v1/cluster/auth", response_model=ClusterAuth)
async def cluster_auth(engine: Engine) -> ClusterAuth:
    """Whether calls need a key, as Xinference answers it: open, since its clients ask before they send one (they
    read a 404 as "no keys" but fail on a 401)."""
    return ClusterAuth(auth=bool(engine.settings.api_keys))


@router.get("/info", response_model=TEIInfo, responses={503: {"model": TEIError}})
async def tei_info(engine: Engine) -> TEIInfo:
    """text-embeddings-inference's server information, as it answers for a reranker: the default model, its token
    limit, and the server's batch limits. Open without a key, like `/health` (TEI clients probe it before use)."""
    stored = (await _served(engine, None)).stored
    labels = [f"LABEL_{i}" for i in range(max(stored.num_labels, 1))]
    settings = engine.settings
    return TEIInfo(
        model_id=stored.model_id,
        model_sha=stored.revision,
        model_dtype=stored.checkpoint_dtype or "float32",
        model_type=TEIModelType(
            reranker=TEIReranker(
                id2label={str(i): label for i, label in enumerate(labels)},
                label2id={label: i for i, label in enumerate(labels)},
            )
        ),
        max_concurrent_requests=settings.max_queue_pairs,
        max_input_length=stored.max_length,
        max_batch_tokens=engine.batcher.token_budget,
        max_client_batch_size=settings.max_documents,
        tokenization_workers=settings.tokenizers or 1,
        version=f"rerank-server (BentoML {bentoml.__version__})",
    )
