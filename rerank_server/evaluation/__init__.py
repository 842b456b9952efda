"""Choosing a reranker on one's own labelled data: loading the data (`data`), scoring it through any compatible
`POST /v1/rerank` (`client`), ranking quality and paired tests (`metrics`), the score threshold (`threshold`), the
findings put together (`summary`, into the shapes of `results`), and the terminal table and JSON (`report`) and the
HTML page (`page`).

Used by `evaluate.py`, never by the server.
"""
