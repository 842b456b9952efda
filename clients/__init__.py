"""Python clients for the rerank server (`clients/rerank_client.py` also works copied on its own)."""

from clients.rerank_client import RerankClient, RerankError, RerankResult, SyncRerankClient

__all__ = ["RerankClient", "RerankError", "RerankResult", "SyncRerankClient"]
