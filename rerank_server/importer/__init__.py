"""Putting rerankers into the BentoML model store: folder inspection (`folder`), the test run (`check`), storing with
conversion (`commit`) and the sources a model comes from (`sources`: a folder, the Hub, ModelScope).

Used by `import_models.py` (and tests and benchmarks), never by the server, which only reads the store
(`rerank_server.models.store`).
"""
