"""Building blocks of the rerank server; `service.py` at the repository root wires them into a BentoML service."""
