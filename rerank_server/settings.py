"""Server configuration, read from ``RERANK_*`` environment variables (see the README's configuration table)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rerank_server.catalog import DEFAULT_MODEL_ID

DeviceChoice = Literal["auto", "cpu", "cuda", "mps"]
DtypeChoice = Literal["auto", "float32", "float16", "bfloat16"]


class Settings(BaseSettings):
    """Everything an operator can set without touching code."""

    model_config = SettingsConfigDict(env_prefix="RERANK_", extra="ignore")

    default_model: str = Field(DEFAULT_MODEL_ID, description="Model used when a request names none.")
    preload: str = Field("", description="Comma-separated model ids loaded at start-up, besides the default.")
    device: DeviceChoice = Field("auto", description="auto: CUDA when available, else CPU.")
    dtype: DtypeChoice = Field(
        "auto",
        description="auto: on CUDA bfloat16 for checkpoints that ship in it, else float16; on a CPU the precision the "
        "model was imported for (import_models.py --backend auto / --precision), bfloat16 only where the CPU has it.",
    )
    workers: int = Field(
        0,
        ge=0,
        description="Worker processes, each with its own model copies and queue, spread over the GPUs. 0: one per "
        "visible GPU (one on a CPU host).",
    )
    max_batch_pairs: int = Field(
        256, ge=1, description="Most (query, document) pairs merged into one model call (requests queued together)."
    )
    api_max_batch_pairs: int = Field(
        1024,
        ge=2,
        description="BentoML's batchable `/score_pairs`: most pairs its dispatcher merges from concurrent calls into "
        "one hand-over to the continuous batcher.",
    )
    api_max_latency_ms: int = Field(
        60_000,
        ge=1,
        description="BentoML's batchable `/score_pairs`: the dispatcher's latency bound; calls it predicts would miss "
        "it are refused with 503.",
    )
    api_max_wait_ms: float = Field(
        10.0,
        ge=0,
        description="BentoML's batchable `/score_pairs`: the most its dispatcher holds a call back for partners (it "
        "learns a wait from recent traffic, which after a burst costs lone calls about a batch's time).",
    )
    max_queue_pairs: int = Field(
        8192, ge=1, description="Most pairs waiting for the model; beyond it requests get 429 and Retry-After at once."
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="Time a request may take, queueing included; past it the answer is 504."
    )
    stall_timeout_s: float = Field(
        300.0,
        gt=0,
        description="A forward pass running longer than this makes /livez and /health answer 503: a hung model thread "
        "(a stuck kernel) that only a restart clears.",
    )
    token_budget: int | None = Field(
        None,
        ge=512,
        description="Most padded tokens in one forward pass; larger batches are split. Unset: 16384 on CUDA, 2048 on "
        "the CPU, where smaller passes measured faster (docs/benchmarks.md).",
    )
    tokenizers: int = Field(
        0,
        ge=0,
        description="Tokenizer copies per model, so that several requests tokenize in parallel. 0: on a GPU one per "
        "usable CPU, at most 4; on a CPU one.",
    )
    cache_size: int = Field(0, ge=0, description="Pair scores kept in the in-memory LRU result cache (0: off).")
    embedding_cache_mb: int = Field(
        256,
        ge=0,
        description="MiB of document token embeddings kept for late-interaction (ColBERT) models, least recently used "
        "out (0: off).",
    )

    max_loaded_models: int = Field(0, ge=0, description="Most models loaded at once (0: no limit); LRU unloads.")
    max_model_memory_mb: int = Field(0, ge=0, description="Most MiB of loaded weights (0: no limit); LRU unloads.")
    allow_remote_code: bool = Field(
        True,
        description="Serve models that run their own modelling code (imported with --trust-remote-code). false: "
        "such models are refused (503) on this host.",
    )
    api_key: str = Field("", description="One key or several, comma-separated; set, every API call needs one.")
    max_documents: int = Field(1000, ge=1, description="Most documents in one request.")
    max_list_documents: int = Field(
        250,
        ge=1,
        description="Most documents in one request to a listwise model (jina-reranker-v3), which reads them in one "
        "context: passes of at most 125, fused; 250 is two passes by count.",
    )
    max_list_pass_tokens: int | None = Field(
        None,
        ge=1024,
        description="Most tokens of one forward pass of a listwise model (jina-reranker-v3), counted as twice the "
        "query, the instruction and the documents (the prompt's template adds about 130 a pass and 10 a document). "
        "Below the tokenizer's model_max_length (131072) it replaces the published split rule, which would close a "
        "pass after every document once the bound is near the document cap (v3.5: 8192): a list is split by its "
        "documents' real lengths, each joining the current pass while it fits in what is left (at most 125 a pass), "
        "and a longer list is read in more passes and fused. A document longer than what a pass holds beside the "
        "query and instruction is cut to that room (refused with TEI's 413 under `truncate: false`); only a query "
        "and instruction that leave no room are refused (400). A pass's memory grows with its length, and with its "
        "square where v3.5's sliding-window layers build a mask: at 32768 about 2 GB of float32 activations for the "
        "0.6B model on a CPU (estimated; v3.5's mask measured 5 GB more), well within a 24 GB GPU in float16; at "
        "131072 four times the activations and 16 times the mask (80 GB), an out-of-memory on either. Unset: 32768 "
        "on a GPU, 8192 on a CPU, where one 32768-token pass of the 0.6B model takes minutes on a few cores. Each "
        "pass counts as progress for RERANK_STALL_TIMEOUT_S (/livez): a list of many passes is never a stall while "
        "each of its passes ends within it.",
    )
    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="Largest request body accepted.")
    max_chunks_per_doc: int = Field(0, ge=0, description="Default chunking of long documents (0: off).")

    # Images (multimodal rerankers such as Qwen3-VL-Reranker).
    max_images_per_request: int = Field(32, ge=1, description="Most images in one request, query and documents.")
    max_image_bytes: int = Field(
        10 * 2**20, ge=1024, description="Largest image file (decoded from base64, or fetched from a URL)."
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Largest image in pixels, read from its header before any pixel is decoded (a decompression bomb "
        "is refused without being opened).",
    )
    max_image_memory_mb: int = Field(
        2048,
        ge=1,
        description="Most MiB of image files and prepared pixels held by requests waiting for the model, per worker; "
        "beyond it a request with images gets 429 at once (a request alone is taken when nothing else holds any).",
    )
    image_urls: bool = Field(False, description="Fetch images given as http(s) URLs (off: such images get a 400).")
    image_urls_allow_private: str = Field(
        "",
        description="Comma-separated networks (CIDR) that image URLs may reach although they are private, loopback or "
        "link-local, e.g. 10.1.0.0/16; empty: only public addresses.",
    )
    image_url_timeout_s: float = Field(
        10.0, gt=0, description="Time one image URL may take to answer, redirects included."
    )

    @field_validator("image_urls_allow_private")
    @classmethod
    def _networks(cls, value: str) -> str:
        import ipaddress

        for part in value.split(","):
            if part.strip():
                try:
                    ipaddress.ip_network(part.strip(), strict=False)
                except ValueError as exc:
                    raise ValueError(f"{part.strip()!r} is not a network such as 10.0.0.0/8 ({exc})") from None
        return value

    @property
    def api_keys(self) -> list[str]:
        return [key.strip() for key in self.api_key.split(",") if key.strip()]

    @property
    def preload_names(self) -> list[str]:
        """RERANK_PRELOAD's names as written (the store resolves them, as it does a request's `model`)."""
        return [name.strip() for name in self.preload.split(",") if name.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
