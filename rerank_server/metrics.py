"""The server's own Prometheus metrics (`rerank_*`), served on `/metrics` beside BentoML's `bentoml_*` ones.

Created on first use rather than at import: BentoML points prometheus_client at its multiprocess directory when a
worker starts, after `service.py` is imported, and metrics made before that would never reach `/metrics`.
"""

from __future__ import annotations

import os
from functools import lru_cache

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_PAIRS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class RerankMetrics:
    """Counters, histograms and gauges for requests, scoring, batching, models and the result cache."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "rerank_requests_total", "HTTP requests to the rerank routes.", ["route", "model", "status"]
        )
        self.request_duration = Histogram(
            "rerank_request_duration_seconds", "Time to answer a rerank route.", ["route"], buckets=_SECONDS
        )
        self.pairs = Counter("rerank_pairs_total", "(query, document) pairs scored by the model.", ["model"])
        self.tokens = Counter("rerank_tokens_total", "Tokens of the pairs scored by the model.", ["model"])
        self.batch_size = Histogram(
            "rerank_batch_size_pairs", "Pairs in one forward batch (requests merged).", ["model"], buckets=_PAIRS
        )
        self.batch_duration = Histogram(
            "rerank_batch_duration_seconds", "Model time of one merged batch.", ["model"], buckets=_SECONDS
        )
        self.queue_wait = Histogram(
            "rerank_queue_wait_seconds", "Time a request's pairs waited for the model.", ["model"], buckets=_SECONDS
        )
        self.queued_pairs = Gauge("rerank_queue_pairs", "Pairs waiting for the model.", multiprocess_mode="livesum")
        self.rejected = Counter(
            "rerank_rejected_total",
            "Requests refused before scoring: queue_full or image_memory (429), or timeout (504).",
            ["reason"],
        )
        self.model_load = Histogram(
            "rerank_model_load_seconds", "Time to load a model.", ["model"], buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120)
        )
        # Per worker (each holds its own copies); sum() over the label gives the copies in memory.
        self.models_loaded = Gauge(
            "rerank_models_loaded", "Models loaded in memory.", ["worker"], multiprocess_mode="livesum"
        )
        self.cache_hits = Counter("rerank_cache_hits_total", "Pair scores answered from the result cache.")
        self.cache_misses = Counter("rerank_cache_misses_total", "Pair scores looked up in the cache and not found.")
        self.embedding_cache_hits = Counter(
            "rerank_embedding_cache_hits_total", "Documents of late-interaction models whose embeddings were cached."
        )
        self.embedding_cache_misses = Counter(
            "rerank_embedding_cache_misses_total", "Documents of late-interaction models encoded (not in the cache)."
        )
        self.embedding_cache_bytes = Gauge(
            "rerank_embedding_cache_bytes", "Bytes of document embeddings held.", multiprocess_mode="livesum"
        )


def worker_label() -> str:
    """This worker's 1-based index under `bentoml serve`, "1" in a single process."""
    import bentoml

    return str(bentoml.server_context.worker_index or 1)


def forget_this_process() -> None:
    """Drop this process's gauge values from /metrics (a drained worker no longer queues or holds models).

    prometheus_client's `live*` gauge modes count a process until someone marks it dead, and neither BentoML nor its
    process manager does: without this, a stopped worker's last queue length would stay in the sum.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


@lru_cache(maxsize=1)
def get_metrics() -> RerankMetrics:
    """The process's metrics, created once."""
    return RerankMetrics()
