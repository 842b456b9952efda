"""Wire types of what the server holds: `GET /v1/models` and the status document at `/`, and the info routes other
servers' clients ask before they rerank (Xinference's, TEI's). Pydantic, a leaf like `wire.py`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# --- GET /v1/models and GET / ---------------------------------------------------------------------------------------


class CalibrationInfo(BaseModel):
    """The calibration attached to a model (`import_models.py NAME --calibration FILE`)."""

    method: str = Field(description="platt (fitted by evaluate.py --calibrate) or manual (--logit-scale/--logit-bias).")
    scale: float
    bias: float
    formula: str = Field(description="How a raw score becomes relevance_score: sigmoid(scale * (raw - bias)).")
    fitted_on: dict[str, Any] | None = Field(None, description="queries, pairs, relevant pairs, data_sha256.")
    heldout: dict[str, Any] | None = Field(
        None, description="Cross-validated by query, before and after: ECE, Brier score, log loss, precision at 0.5."
    )


class ScoreInfo(BaseModel):
    """What a model's scores mean."""

    kind: Literal["sigmoid", "p-yes", "mean-maxsim", "cosine", "calibrated"] = Field(
        description="What relevance_score is: the sigmoid of the raw score, p(yes) against no (yes/no LLM "
        "rerankers), MaxSim over the query length (ColBERT: a mean cosine, at most 1), the cosine in [-1, 1] "
        "(listwise jina-reranker-v3: it depends on the other documents of the request), or a calibrated "
        "probability of relevance (see `calibration`)."
    )
    raw: str = Field(description="What the raw score (`use_activation: false`, TEI's `raw_scores`) is.")
    calibration: CalibrationInfo | None = None


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
    recipe: str = Field(description="How pairs are scored: cross-encoder, qwen3, bge-gemma, ... (README, Models).")
    backend: str = Field(description="What runs the model: torch, openvino-int8, openvino, onnx-int8 or onnx.")
    remote_code: bool = Field(
        False, description="Whether the model runs its own modelling code (imported with --trust-remote-code)."
    )
    license: str = Field("", description="The model card's license (e.g. apache-2.0, cc-by-nc-4.0); empty if unknown.")
    non_commercial: bool = Field(False, description="Whether the license forbids commercial use (CC-BY-NC).")
    score: ScoreInfo
    status: Literal["loaded", "available", "failed"] = Field(
        description="loaded; available (loads on first use); failed (its last load was refused: see `error`)."
    )
    error: str | None = Field(None, description="Why the model is not served, when `status` is failed.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ServerStatus(BaseModel):
    """The status document of the original design, for curl and health checks."""

    status: Literal["running"] = "running"
    loaded_models: list[str]
    default_model: str
    supported_models: list[str]
    failed_models: dict[str, str] = Field(
        default_factory=dict, description="Models whose last load was refused, with the reason."
    )


# --- What other servers' clients ask before they rerank ------------------------------------------------------------


class ModelDescription(ModelCard):
    """One model at `GET /v1/models/{id}`: OpenAI's model object with our card, and the fields Xinference's clients
    read from its own model description (xinference-client's `get_model` picks its handle by `model_type`)."""

    model_type: Literal["rerank"] = "rerank"
    model_name: str = Field(description="Xinference: the short name (the id's last part).")
    model_uid: str = Field(description="Xinference: the uid to send as `model`, here the full id.")
    model_ability: list[str] = Field(default_factory=lambda: ["rerank"])


class ClusterAuth(BaseModel):
    """Xinference's `GET /v1/cluster/auth`: whether calls need a key (its clients ask this before any other call)."""

    auth: bool


class TEIReranker(BaseModel):
    id2label: dict[str, str]
    label2id: dict[str, int]


class TEIModelType(BaseModel):
    reranker: TEIReranker


class TEIInfo(BaseModel):
    """text-embeddings-inference's `GET /info`, as it answers for a reranker: the server's default model."""

    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_type: TEIModelType
    max_concurrent_requests: int = Field(description="Here: most pairs waiting (RERANK_MAX_QUEUE_PAIRS).")
    max_input_length: int = Field(description="Tokens per (query, text) pair; longer pairs are truncated.")
    max_batch_tokens: int | None = Field(description="Padded tokens per forward pass (RERANK_TOKEN_BUDGET).")
    max_batch_requests: int | None = None
    max_client_batch_size: int = Field(description="Most texts per request (RERANK_MAX_DOCUMENTS).")
    auto_truncate: bool = True
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None
