"""The user's own queries and documents as the fidelity gate's probe lists (`import_models.py --probe-data FILE`).

The file is evaluate.py's JSONL, read by its reader (rerank_server/evaluation/data.py), so one file serves both tools
and a bad line is reported the same way, naming file:line. The gate compares orders only, so labels are not used.
A bounded, deterministic part of the file is taken (its first samples, the first documents of each), so that an
import stays about as fast as with the generated probes and the same file always gates the same way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rerank_server.evaluation.data import read_jsonl
from rerank_server.evaluation.errors import EvaluationError
from rerank_server.importer.fidelity import ProbeList
from rerank_server.importer.folder import ModelImportError

# 16 × 32 = 512 pairs at most, scored by float32 and by each candidate: about four times the generated probes.
MAX_QUERIES = 16
MAX_DOCUMENTS = 32


@dataclass(frozen=True)
class ProbeData:
    """Probe lists read from a file; `source` names it in the import's report."""

    source: str
    lists: tuple[ProbeList, ...]

    @property
    def documents(self) -> int:
        return sum(len(probe.documents) for probe in self.lists)

    @property
    def digest(self) -> str:
        """A short hash of the lists: a model gated on other data is a new version, not "already stored"."""
        text = json.dumps([[probe.query, probe.documents] for probe in self.lists], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_probe_data(path: Path) -> ProbeData:
    """The first MAX_QUERIES samples of `path`, each cut to its first MAX_DOCUMENTS documents; a sample with a single
    document is skipped (one document has no order to keep). Any problem is one ModelImportError line."""
    try:
        data = read_jsonl(path, limit=MAX_QUERIES)
    except EvaluationError as exc:
        raise ModelImportError(f"--probe-data: {exc}") from None
    ordered = [query for query in data.queries if len(query.documents) > 1]
    lists = tuple(ProbeList(query.text, list(query.documents[:MAX_DOCUMENTS])) for query in ordered)
    if not lists:
        raise ModelImportError(
            f"--probe-data: {path}: no sample with two documents or more among its first {MAX_QUERIES}: the gate "
            "compares how each query's documents are ordered"
        )
    return ProbeData(path.name, lists)
